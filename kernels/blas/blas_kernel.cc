#include "kernels/blas/blas_kernel.h"

#include <cblas.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace grove::blas {

namespace {

constexpr const char* kMarker = "GROVE_BLAS_REEXEC";
constexpr const char* kTestMarker = "GROVE_BLAS_CORETYPE_IS_LIBRARY_CHOICE";
constexpr const char* kWaitMarker = "GROVE_OMP_WAIT_SET";

std::string Pid() {
  return std::to_string(static_cast<long>(getpid()));
}

// The OpenMP wait policy as the environment leaves it (libgomp read it when it was loaded).
std::string OmpWaitFromEnvironment() {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  const char* marker = std::getenv(kWaitMarker);
  if (policy != nullptr && marker != nullptr && Pid() == marker)
    return std::string(policy) + " (set by Grove)";
  if (policy != nullptr) return std::string(policy) + " (OMP_WAIT_POLICY from the environment)";
  if (spin != nullptr) return "GOMP_SPINCOUNT=" + std::string(spin) + " from the environment";
  return "";
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool SameCore(const std::string& a, const std::string& b) {
  return Lower(a) == Lower(b);
}

// OpenBLAS's x86-64 core names (driver/others/dynamic.c) by the ISA their kernels need. A name
// not listed here (a newer library's core) is never overridden.
struct CoreEntry {
  const char* name;
  Tier tier;
};
constexpr CoreEntry kCores[] = {
    {"Unknown", Tier::kGeneric},    {"Katmai", Tier::kGeneric},
    {"Coppermine", Tier::kGeneric}, {"Northwood", Tier::kGeneric},
    {"Prescott", Tier::kGeneric},   {"Banias", Tier::kGeneric},
    {"Atom", Tier::kGeneric},       {"Core2", Tier::kGeneric},
    {"Penryn", Tier::kGeneric},     {"Dunnington", Tier::kGeneric},
    {"Nehalem", Tier::kGeneric},    {"Athlon", Tier::kGeneric},
    {"Opteron", Tier::kGeneric},    {"Opteron_SSE3", Tier::kGeneric},
    {"Barcelona", Tier::kGeneric},  {"Nano", Tier::kGeneric},
    {"Bobcat", Tier::kGeneric},     {"Sandybridge", Tier::kAvx},
    {"Bulldozer", Tier::kAvx},      {"Piledriver", Tier::kAvx},
    {"Steamroller", Tier::kAvx},    {"Excavator", Tier::kAvx2},
    {"Haswell", Tier::kAvx2},       {"Zen", Tier::kAvx2},
    {"SkylakeX", Tier::kAvx512},    {"Cooperlake", Tier::kAvx512Bf16},
    {"SapphireRapids", Tier::kAmx},
};

// The core to ask for per tier, best first, with the first OpenBLAS version whose DYNAMIC_ARCH
// build accepts the name in OPENBLAS_CORETYPE. An entry older than the library is skipped for
// the next lower one; SelectBlasKernel checks after the switch that the library took it.
struct Candidate {
  Tier tier;
  const char* name;
  int since;  // 10000 * major + 100 * minor + patch
};
constexpr Candidate kCandidates[] = {
    {Tier::kAmx, "SapphireRapids", 322}, {Tier::kAvx512Bf16, "Cooperlake", 311},
    {Tier::kAvx512, "SkylakeX", 303},    {Tier::kAvx2, "Haswell", 208},
    {Tier::kAvx, "Sandybridge", 206},
};

bool UnderLauncherNotRankZero() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    const char* v = std::getenv(var);
    if (v != nullptr && *v != '\0') return std::strcmp(v, "0") != 0;
  }
  return false;
}

// Notices (a switch, the user's choice) go to stdout with the banner; stderr is kept for the
// cases the process cannot correct, so a program's error output stays one line.
void Say(const std::string& line, bool to_stderr) {
  if (line.empty() || UnderLauncherNotRankZero()) return;
  FILE* out = to_stderr ? stderr : stdout;
  std::fprintf(out, "grove: %s\n", line.c_str());
  std::fflush(out);
}

#if defined(__x86_64__) || defined(__i386__)
uint64_t Xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

std::string LibraryName(const BlasLibrary& lib) {
  if (lib.version <= 0) return "OpenBLAS";
  return "OpenBLAS " + std::to_string(lib.version / 10000) + "." +
         std::to_string(lib.version / 100 % 100) + "." + std::to_string(lib.version % 100);
}

BlasKernel MakeReport(const CpuFeatures& cpu, const BlasLibrary& lib, const BlasEnv& env,
                      const BlasDecision& d) {
  BlasKernel k;
  k.library = LibraryName(lib);
  k.core = lib.corename;
  k.source = d.action == BlasAction::kUserChoice ? "environment"
             : d.action == BlasAction::kSwitched ? "grove"
                                                 : "library";
  if (d.action == BlasAction::kSwitched) k.chosen_by_library = env.chosen_before;
  k.cpu = (cpu.model_name.empty() ? cpu.vendor : cpu.model_name) + " (family " +
          std::to_string(cpu.family) + " model " + std::to_string(cpu.model) +
          "): " + FeatureSummary(cpu);
  k.warning = d.warning;
  return k;
}

std::mutex g_mu;
bool g_selected = false;
BlasKernel g_kernel;

}  // namespace

const char* TierName(Tier t) {
  switch (t) {
    case Tier::kGeneric:
      return "generic (SSE)";
    case Tier::kAvx:
      return "AVX";
    case Tier::kAvx2:
      return "AVX2";
    case Tier::kAvx512:
      return "AVX-512";
    case Tier::kAvx512Bf16:
      return "AVX-512 + BF16";
    case Tier::kAmx:
      return "AMX";
  }
  return "?";
}

const char* BlasActionName(BlasAction a) {
  switch (a) {
    case BlasAction::kKeep:
      return "keep";
    case BlasAction::kUserChoice:
      return "user-choice";
    case BlasAction::kReexec:
      return "reexec";
    case BlasAction::kSwitched:
      return "switched";
    case BlasAction::kCannotSwitch:
      return "cannot-switch";
  }
  return "?";
}

CpuFeatures DetectCpuFeatures() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  f.vendor = vendor;
  __get_cpuid(1, &a, &b, &c, &d);
  const unsigned base_family = (a >> 8) & 0xf, base_model = (a >> 4) & 0xf;
  f.family = int(base_family == 0xf ? base_family + ((a >> 20) & 0xff) : base_family);
  f.model = int(base_family == 0x6 || base_family == 0xf ? base_model | (((a >> 16) & 0xf) << 4)
                                                         : base_model);
  const bool osxsave = (c >> 27) & 1;
  const uint64_t xcr0 = osxsave ? Xcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;                 // XMM, YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;         // XTILECFG, XTILEDATA
  f.avx = os_avx && ((c >> 28) & 1);
  f.fma = os_avx && ((c >> 12) & 1);
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned leaf7_max = a;
    f.avx2 = os_avx && ((b >> 5) & 1);
    f.avx512f = os_avx512 && ((b >> 16) & 1);
    f.avx512dq = os_avx512 && ((b >> 17) & 1);
    f.avx512cd = os_avx512 && ((b >> 28) & 1);
    f.avx512bw = os_avx512 && ((b >> 30) & 1);
    f.avx512vl = os_avx512 && ((b >> 31) & 1);
    f.amx_bf16 = os_amx && ((d >> 22) & 1);
    f.amx_tile = os_amx && ((d >> 24) & 1);
    if (leaf7_max >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      f.avx512_bf16 = os_avx512 && ((a >> 5) & 1);
    }
  }
  if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002 + i, &a, &b, &c, &d);
      std::memcpy(brand + 16 * i, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
    std::string s = brand;
    s.erase(0, s.find_first_not_of(' '));
    s.erase(s.find_last_not_of(' ') + 1);
    f.model_name = s;
  }
#endif
  return f;
}

Tier CpuTier(const CpuFeatures& f) {
  const bool avx512 = f.avx512f && f.avx512dq && f.avx512cd && f.avx512bw && f.avx512vl;
  if (avx512 && f.avx512_bf16 && f.amx_tile && f.amx_bf16) return Tier::kAmx;
  if (avx512 && f.avx512_bf16) return Tier::kAvx512Bf16;
  if (avx512 && f.avx2 && f.fma) return Tier::kAvx512;
  if (f.avx2 && f.fma) return Tier::kAvx2;
  if (f.avx) return Tier::kAvx;
  return Tier::kGeneric;
}

std::string FeatureSummary(const CpuFeatures& f) {
  std::string s;
  auto add = [&s](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(f.avx && !f.avx2, "AVX");
  add(f.avx2, "AVX2");
  add(f.fma, "FMA");
  if (f.avx512f) {
    std::string sub = "F";
    if (f.avx512dq) sub += ",DQ";
    if (f.avx512cd) sub += ",CD";
    if (f.avx512bw) sub += ",BW";
    if (f.avx512vl) sub += ",VL";
    add(true, ("AVX-512(" + sub + ")").c_str());
  }
  add(f.avx512_bf16, "AVX512_BF16");
  add(f.amx_tile, "AMX-TILE");
  add(f.amx_bf16, "AMX-BF16");
  return s.empty() ? "no AVX" : s;
}

int ParseOpenBlasVersion(const std::string& config) {
  const size_t at = config.find("OpenBLAS ");
  if (at == std::string::npos) return 0;
  int major = 0, minor = 0, patch = 0;
  if (std::sscanf(config.c_str() + at + 9, "%d.%d.%d", &major, &minor, &patch) != 3) return 0;
  return major * 10000 + minor * 100 + patch;
}

BlasLibrary QueryBlasLibrary() {
  BlasLibrary lib;
  if (const char* name = openblas_get_corename()) lib.corename = name;
  if (const char* config = openblas_get_config()) lib.config = config;
  lib.version = ParseOpenBlasVersion(lib.config);
  lib.dynamic_arch = lib.config.find("DYNAMIC_ARCH") != std::string::npos;
  // Trailing spaces in some builds' names.
  lib.corename.erase(lib.corename.find_last_not_of(' ') + 1);
  return lib;
}

std::optional<Tier> CoreTier(const std::string& corename) {
  for (const CoreEntry& e : kCores)
    if (SameCore(corename, e.name)) return e.tier;
  return std::nullopt;
}

std::string BestCore(Tier tier, int version) {
  for (const Candidate& c : kCandidates)
    if (c.tier <= tier && version >= c.since) return c.name;
  return "";
}

BlasDecision DecideBlasKernel(const CpuFeatures& cpu, const BlasLibrary& lib, const BlasEnv& env) {
  BlasDecision d;
  const Tier cpu_tier = CpuTier(cpu);
  const std::string best = BestCore(cpu_tier, lib.version);
  const std::optional<Tier> lib_tier = CoreTier(lib.corename);
  const std::optional<Tier> best_tier = best.empty() ? std::nullopt : CoreTier(best);
  const bool below = lib_tier && best_tier && *lib_tier < *best_tier;
  const std::string cpu_says = "the CPU has " + std::string(TierName(cpu_tier));

  if (env.reexecuted) {
    d.action = BlasAction::kSwitched;
    d.target = env.coretype.value_or("");
    if (SameCore(lib.corename, d.target)) {
      d.message = "OpenBLAS runs its " + lib.corename +
                  " kernels (selected by Grove: the library " + "chose " + env.chosen_before +
                  " on this CPU, " + cpu_says + "; set OPENBLAS_CORETYPE to choose yourself)";
    } else {
      d.warning = true;
      d.message = "warning: OpenBLAS did not take OPENBLAS_CORETYPE=" + d.target + " and runs " +
                  lib.corename + " (" + cpu_says + "); GEMMs may be slower than this CPU allows";
    }
    return d;
  }
  if (env.coretype && !env.coretype_is_library_choice) {
    d.action = BlasAction::kUserChoice;
    d.message = "OpenBLAS runs its " + lib.corename +
                " kernels (OPENBLAS_CORETYPE=" + *env.coretype + " from the environment)";
    if (!SameCore(lib.corename, *env.coretype)) {
      d.warning = true;
      d.message += "; warning: the library does not know the name " + *env.coretype;
    }
    if (below) {
      d.warning = true;
      d.message += "; warning: " + cpu_says + ", unset OPENBLAS_CORETYPE or set it to " + best +
                   " for faster GEMMs";
    }
    return d;
  }
  if (!below) return d;  // kKeep: the right core, or one this table does not know
  if (!lib.dynamic_arch) {
    d.action = BlasAction::kCannotSwitch;
    d.warning = true;
    d.message = "warning: OpenBLAS runs its " + lib.corename + " kernels but " + cpu_says +
                "; this build of the library has no DYNAMIC_ARCH, so it cannot switch to " + best +
                ": GEMMs run slower than this CPU allows (install a DYNAMIC_ARCH OpenBLAS, "
                "e.g. Debian's libopenblas0-openmp)";
    return d;
  }
  d.action = BlasAction::kReexec;
  d.target = best;
  d.message = LibraryName(lib) + " chose its " + lib.corename + " kernels but " + cpu_says +
              ": restarting with OPENBLAS_CORETYPE=" + best;
  return d;
}

std::string BlasKernel::Describe() const {
  std::string s = library + " " + core;
  if (source == "grove")
    s += " (selected by Grove; the library chose " + chosen_by_library + ")";
  else if (source == "environment")
    s += " (OPENBLAS_CORETYPE from the environment)";
  if (warning) s += " [below what the CPU allows]";
  if (!omp_wait.empty()) s += "; OpenMP wait " + omp_wait;
  return s;
}

const BlasKernel& SelectBlasKernel(char** argv) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_selected) return g_kernel;
  const CpuFeatures cpu = DetectCpuFeatures();
  const BlasLibrary lib = QueryBlasLibrary();
  BlasEnv env;
  if (const char* v = std::getenv("OPENBLAS_CORETYPE"); v != nullptr && *v != '\0')
    env.coretype = v;
  if (const char* v = std::getenv(kMarker); v != nullptr) {
    const std::string marker = v;
    const size_t colon = marker.find(':');
    if (colon != std::string::npos &&
        marker.substr(0, colon) == std::to_string(static_cast<long>(getpid()))) {
      env.reexecuted = true;
      env.chosen_before = marker.substr(colon + 1);
    }
    unsetenv(kMarker);  // children start afresh (with OPENBLAS_CORETYPE inherited)
  }
  if (const char* v = std::getenv(kTestMarker); v != nullptr && std::strcmp(v, "1") == 0)
    env.coretype_is_library_choice = true;

  BlasDecision d = DecideBlasKernel(cpu, lib, env);
  // The OpenMP wait policy rides on the same restart: passive unless the user chose a policy or
  // a spin count, or runs one thread (OMP_NUM_THREADS=1: nobody waits). libgomp reads it only
  // when it is loaded, hence the re-exec when nothing else
  // needs one; the marker (this pid) stops a second one and tells the new image who set it.
  const char* wait_marker = std::getenv(kWaitMarker);
  const bool wait_reexecuted = wait_marker != nullptr && Pid() == wait_marker;
  const char* omp_threads = std::getenv("OMP_NUM_THREADS");
  const bool one_thread = omp_threads != nullptr && std::strcmp(omp_threads, "1") == 0;
  const bool set_wait = std::getenv("OMP_WAIT_POLICY") == nullptr &&
                        std::getenv("GOMP_SPINCOUNT") == nullptr && !wait_reexecuted && !one_thread;
  const bool can_exec = argv != nullptr && argv[0] != nullptr;
  if (set_wait && can_exec) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    setenv(kWaitMarker, Pid().c_str(), 1);
  }
  if (d.action == BlasAction::kReexec && can_exec) {
    Say(d.message, false);
    setenv("OPENBLAS_CORETYPE", d.target.c_str(), 1);
    setenv(kMarker, (Pid() + ":" + lib.corename).c_str(), 1);
    unsetenv(kTestMarker);
    execv("/proc/self/exe", argv);
    // Still here: the switch failed; go on with the library's core, saying so.
    const int err = errno;
    unsetenv(kMarker);
    if (env.coretype) {
      setenv("OPENBLAS_CORETYPE", env.coretype->c_str(), 1);
    } else {
      unsetenv("OPENBLAS_CORETYPE");
    }
    d.action = BlasAction::kCannotSwitch;
    d.warning = true;
    d.message = "warning: could not restart with OPENBLAS_CORETYPE=" + d.target +
                " (execv: " + std::strerror(err) + "); GEMMs run on " + lib.corename +
                ", slower than this CPU allows; set OPENBLAS_CORETYPE=" + d.target + " yourself";
  } else if (set_wait && can_exec) {
    // Only the wait policy changes: the same environment otherwise, so the new image reaches the
    // same BLAS decision (and says it).
    execv("/proc/self/exe", argv);
    const int err = errno;
    Say("warning: could not restart with OMP_WAIT_POLICY=passive (execv: " +
            std::string(std::strerror(err)) +
            "); idle OpenMP threads spin, which slows a loaded machine; set OMP_WAIT_POLICY "
            "yourself",
        true);
  }
  if (set_wait && can_exec) {  // no restart happened: the policy is not in effect
    unsetenv("OMP_WAIT_POLICY");
    unsetenv(kWaitMarker);
  }
  Say(d.message,
      d.action == BlasAction::kCannotSwitch || (d.action == BlasAction::kSwitched && d.warning));
  g_kernel = MakeReport(cpu, lib, env, d);
  g_kernel.omp_wait = OmpWaitFromEnvironment();
  if (wait_reexecuted) unsetenv(kWaitMarker);  // children start afresh (the policy inherited)
  g_selected = true;
  return g_kernel;
}

const BlasKernel& CurrentBlasKernel() {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_selected) return g_kernel;
  }
  // Not selected: report what the library runs, without acting on it.
  const CpuFeatures cpu = DetectCpuFeatures();
  const BlasLibrary lib = QueryBlasLibrary();
  BlasEnv env;
  if (const char* v = std::getenv("OPENBLAS_CORETYPE"); v != nullptr && *v != '\0')
    env.coretype = v;
  const BlasDecision d = DecideBlasKernel(cpu, lib, env);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_selected) {
    g_kernel = MakeReport(cpu, lib, env, d);
    g_kernel.omp_wait = OmpWaitFromEnvironment();
    if (d.action == BlasAction::kReexec || d.action == BlasAction::kCannotSwitch)
      g_kernel.warning = true;
    g_selected = true;
  }
  return g_kernel;
}

}  // namespace grove::blas
