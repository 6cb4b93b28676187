// Which OpenBLAS kernel ("core") this process runs its GEMMs on, and choosing the right one
// before the first BLAS call (docs/architecture.md#the-blas-kernel).
//
// OpenBLAS built with DYNAMIC_ARCH (Debian's) picks its core once, when the library is loaded,
// from cpuid. A version older than the CPU falls back to an older core: 0.3.21 runs "Prescott"
// (SSE3) on a current Xeon and "Haswell" (AVX2) on an AVX-512 Zen 5, for 1.5-8x less sgemm. The
// library reads OPENBLAS_CORETYPE only at load time, so a correction means setting it and
// executing the program again.
//
// Contract: every Grove program that runs GEMMs calls SelectBlasKernel(argv) as the first
// statement of main, before MPI_Init, threads or any BLAS call. It
//   - keeps the library's core when no core the library version knows suits the CPU better, or
//     when it does not know the core's name (a newer library than this table);
//   - respects OPENBLAS_CORETYPE set by the user (or by a parent process): nothing changes, the
//     report says so, and warns when the library did not take the name or the CPU could do more;
//   - otherwise sets OPENBLAS_CORETYPE to the best core and execv()s /proc/self/exe with the same
//     argv, once: the marker GROVE_BLAS_REEXEC=<pid>:<core the library chose> tells the new image
//     (same pid) that it is the re-executed one; it only checks that the library took the core;
//   - says so in one line (rank 0 only under mpirun/srun): on stdout when it switches or the user
//     chose, on stderr when the process stays below what the CPU allows and cannot correct it.
// If the library cannot switch (a build without DYNAMIC_ARCH) or execv fails, the program goes on
// with the library's core after a warning.
//
// The OpenMP wait policy is chosen at the same point, for the same reason (libgomp reads it only
// when it is loaded). Idle OpenMP threads spin by default; OpenBLAS's OpenMP build and Grove's
// kernels open and close a parallel region per GEMM or element-wise pass, so on a machine shared
// with other processes the spinning threads take the cores the working ones need (the training
// step of bench_train_step ran about 1.5x slower, docs/kernels.md#threads). Unless the user set
// OMP_WAIT_POLICY or GOMP_SPINCOUNT (or OMP_NUM_THREADS=1: no thread ever waits),
// SelectBlasKernel sets OMP_WAIT_POLICY=passive: with the
// BLAS switch when there is one, else by a re-exec of its own (marker GROVE_OMP_WAIT_SET=<pid>),
// silently. Child processes inherit the policy.
//
// GROVE_BLAS_CORETYPE_IS_LIBRARY_CHOICE=1 (tests): treat OPENBLAS_CORETYPE as if the library had
// chosen that core itself, so a test can make the real library fall back (e.g. to Prescott) and
// watch the program correct it.
#pragma once

#include <optional>
#include <string>

namespace grove::blas {

// What the CPU (and the OS, through XCR0) lets a kernel use, from cpuid.
struct CpuFeatures {
  std::string vendor;      // "GenuineIntel", "AuthenticAMD", ...
  std::string model_name;  // the brand string, e.g. "AMD EPYC 9B45"
  int family = 0, model = 0;
  bool avx = false, fma = false, avx2 = false;
  bool avx512f = false, avx512dq = false, avx512cd = false, avx512bw = false, avx512vl = false;
  bool avx512_bf16 = false, amx_tile = false, amx_bf16 = false;
};

// ISA tiers of OpenBLAS's x86-64 cores, lowest first.
enum class Tier { kGeneric, kAvx, kAvx2, kAvx512, kAvx512Bf16, kAmx };
const char* TierName(Tier t);

CpuFeatures DetectCpuFeatures();
// The highest tier every feature of which the CPU has.
Tier CpuTier(const CpuFeatures& cpu);
// e.g. "AVX2 FMA AVX-512(F,DQ,CD,BW,VL) AVX512_BF16".
std::string FeatureSummary(const CpuFeatures& cpu);

// The loaded library as it reports itself.
struct BlasLibrary {
  std::string corename;  // openblas_get_corename(), e.g. "Haswell"
  std::string config;    // openblas_get_config(), e.g. "OpenBLAS 0.3.21 ... DYNAMIC_ARCH ..."
  int version = 0;       // 10000 * major + 100 * minor + patch (0.3.21 -> 321); 0 unknown
  bool dynamic_arch = false;
};
BlasLibrary QueryBlasLibrary();
// "OpenBLAS 0.3.21 ..." -> 321; 0 when the text has no version.
int ParseOpenBlasVersion(const std::string& config);
// The tier of an OpenBLAS core name (case-insensitive); nullopt for a name not in the table.
std::optional<Tier> CoreTier(const std::string& corename);
// The best core of at most `tier` that OpenBLAS `version` accepts in OPENBLAS_CORETYPE; empty
// when none is above the generic cores.
std::string BestCore(Tier tier, int version);

// The environment as the decision sees it.
struct BlasEnv {
  std::optional<std::string> coretype;      // OPENBLAS_CORETYPE
  bool reexecuted = false;                  // GROVE_BLAS_REEXEC names this process's pid
  std::string chosen_before;                // the core the library chose before the re-exec
  bool coretype_is_library_choice = false;  // GROVE_BLAS_CORETYPE_IS_LIBRARY_CHOICE=1
};

enum class BlasAction {
  kKeep,          // the library's core is the right one (or one this table does not know)
  kUserChoice,    // OPENBLAS_CORETYPE came from the environment: respected
  kReexec,        // set OPENBLAS_CORETYPE=target and execute the program again
  kSwitched,      // this is the re-executed image: check that the library took `target`
  kCannotSwitch,  // the library fell back and cannot be told otherwise (no DYNAMIC_ARCH)
};
const char* BlasActionName(BlasAction a);

struct BlasDecision {
  BlasAction action = BlasAction::kKeep;
  std::string target;    // kReexec / kSwitched: the core asked for
  std::string message;   // one line for stderr; empty when there is nothing to say
  bool warning = false;  // the process runs below what the CPU could
};

// The decision table (pure; unit-tested): CPU × library × environment -> action.
BlasDecision DecideBlasKernel(const CpuFeatures& cpu, const BlasLibrary& lib, const BlasEnv& env);

// What a program reports about its BLAS (banner, metrics, dashboard).
struct BlasKernel {
  std::string library;  // "OpenBLAS 0.3.21"
  std::string core;     // the core in use now
  std::string source;   // "library" (its own pick), "grove" (selected here), "environment"
  std::string chosen_by_library;  // source "grove": what the library had chosen
  std::string cpu;                // "AMD EPYC (family 26 model 2): AVX2 FMA AVX-512(...) ..."
  bool warning = false;           // running below what the CPU could
  // The OpenMP wait policy: "passive (set by Grove)", "<policy> (OMP_WAIT_POLICY from the
  // environment)", "GOMP_SPINCOUNT=<n> from the environment"; empty: the runtime's default.
  std::string omp_wait;
  // "OpenBLAS 0.3.21 Cooperlake (selected by Grove; the library chose Haswell); OpenMP wait
  // passive (set by Grove)"
  std::string Describe() const;
};

// See the contract at the top. `argv` is main's argv, untouched (it is passed to execv).
// Returns (and keeps) the report of the core this process runs on.
const BlasKernel& SelectBlasKernel(char** argv);
// The report for this process: the one SelectBlasKernel made, or (when it was not called) the
// library's core as it stands.
const BlasKernel& CurrentBlasKernel();

}  // namespace grove::blas
