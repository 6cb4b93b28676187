// The BLAS kernel selection (kernels/blas/blas_kernel.h): the decision table (CPU features x the
// library's answer x the environment -> action), and the re-exec path with the real OpenBLAS,
// through blas_kernel_probe (a program that calls SelectBlasKernel and runs sgemm).
#include "kernels/blas/blas_kernel.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace grove::blas {
namespace {

CpuFeatures Cpu(Tier t) {
  CpuFeatures f;
  f.vendor = "GenuineIntel";
  if (t >= Tier::kAvx) f.avx = true;
  if (t >= Tier::kAvx2) f.avx2 = f.fma = true;
  if (t >= Tier::kAvx512) f.avx512f = f.avx512dq = f.avx512cd = f.avx512bw = f.avx512vl = true;
  if (t >= Tier::kAvx512Bf16) f.avx512_bf16 = true;
  if (t >= Tier::kAmx) f.amx_tile = f.amx_bf16 = true;
  return f;
}

BlasLibrary Lib(const std::string& core, int version = 321, bool dynamic = true) {
  BlasLibrary l;
  l.corename = core;
  l.version = version;
  l.dynamic_arch = dynamic;
  l.config = "OpenBLAS 0.3.21 " + std::string(dynamic ? "DYNAMIC_ARCH " : "") + core;
  return l;
}

TEST(BlasKernel, CpuTierNeedsEveryFeatureOfTheTier) {
  EXPECT_EQ(CpuTier(Cpu(Tier::kGeneric)), Tier::kGeneric);
  EXPECT_EQ(CpuTier(Cpu(Tier::kAvx2)), Tier::kAvx2);
  EXPECT_EQ(CpuTier(Cpu(Tier::kAmx)), Tier::kAmx);
  CpuFeatures no_vl = Cpu(Tier::kAvx512Bf16);
  no_vl.avx512vl = false;  // AVX-512 without VL (Knights Landing): SkylakeX kernels need VL
  EXPECT_EQ(CpuTier(no_vl), Tier::kAvx2);
  CpuFeatures amx_no_bf16 = Cpu(Tier::kAmx);
  amx_no_bf16.avx512_bf16 = false;
  EXPECT_EQ(CpuTier(amx_no_bf16), Tier::kAvx512);
  CpuFeatures avx2_no_fma = Cpu(Tier::kAvx2);
  avx2_no_fma.fma = false;
  EXPECT_EQ(CpuTier(avx2_no_fma), Tier::kAvx);
}

TEST(BlasKernel, VersionAndCoreNames) {
  EXPECT_EQ(ParseOpenBlasVersion("OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH Haswell"), 321);
  EXPECT_EQ(ParseOpenBlasVersion("OpenBLAS 0.3.9"), 309);
  EXPECT_EQ(ParseOpenBlasVersion("something else"), 0);
  EXPECT_EQ(CoreTier("skylakex"), Tier::kAvx512);
  EXPECT_EQ(CoreTier("Prescott"), Tier::kGeneric);
  EXPECT_FALSE(CoreTier("Zen5").has_value());
  EXPECT_EQ(BestCore(Tier::kAmx, 321), "Cooperlake") << "0.3.21 has no SapphireRapids";
  EXPECT_EQ(BestCore(Tier::kAmx, 326), "SapphireRapids");
  EXPECT_EQ(BestCore(Tier::kAvx512Bf16, 305), "SkylakeX") << "Cooperlake came in 0.3.11";
  EXPECT_EQ(BestCore(Tier::kAvx2, 321), "Haswell");
  EXPECT_EQ(BestCore(Tier::kGeneric, 321), "");
}

// The decision table: one row per (CPU, library answer, environment).
struct Row {
  const char* what;
  Tier cpu;
  std::string lib_core;
  int version;
  bool dynamic;
  std::optional<std::string> coretype;
  bool reexecuted;
  bool test_marker;
  BlasAction action;
  std::string target;  // kReexec / kSwitched
  bool warning;
};

TEST(BlasKernel, DecisionTable) {
  using A = BlasAction;
  const std::vector<Row> rows = {
      // The case: a current Xeon, 0.3.21 falls back to Prescott.
      {"xeon amx, prescott",
       Tier::kAmx,
       "Prescott",
       321,
       true,
       {},
       false,
       false,
       A::kReexec,
       "Cooperlake",
       false},
      {"xeon amx, newer lib",
       Tier::kAmx,
       "Prescott",
       326,
       true,
       {},
       false,
       false,
       A::kReexec,
       "SapphireRapids",
       false},
      // This machine: an AVX-512 + BF16 Zen 5, 0.3.21 picks Haswell.
      {"zen5, haswell",
       Tier::kAvx512Bf16,
       "Haswell",
       321,
       true,
       {},
       false,
       false,
       A::kReexec,
       "Cooperlake",
       false},
      {"skylake-sp, skylakex",
       Tier::kAvx512,
       "SkylakeX",
       321,
       true,
       {},
       false,
       false,
       A::kKeep,
       "",
       false},
      {"skylake-sp, haswell",
       Tier::kAvx512,
       "Haswell",
       321,
       true,
       {},
       false,
       false,
       A::kReexec,
       "SkylakeX",
       false},
      {"avx2 epyc, zen", Tier::kAvx2, "Zen", 321, true, {}, false, false, A::kKeep, "", false},
      {"avx2 epyc, haswell",
       Tier::kAvx2,
       "Haswell",
       321,
       true,
       {},
       false,
       false,
       A::kKeep,
       "",
       false},
      {"avx2 epyc, prescott",
       Tier::kAvx2,
       "Prescott",
       321,
       true,
       {},
       false,
       false,
       A::kReexec,
       "Haswell",
       false},
      {"sse-only cpu, prescott",
       Tier::kGeneric,
       "Prescott",
       321,
       true,
       {},
       false,
       false,
       A::kKeep,
       "",
       false},
      {"unknown newer core", Tier::kAmx, "Zen5", 330, true, {}, false, false, A::kKeep, "", false},
      {"library above the table's best",
       Tier::kAvx512Bf16,
       "SapphireRapids",
       321,
       true,
       {},
       false,
       false,
       A::kKeep,
       "",
       false},
      {"no dynamic arch",
       Tier::kAvx512,
       "Prescott",
       321,
       false,
       {},
       false,
       false,
       A::kCannotSwitch,
       "",
       true},
      // The user's OPENBLAS_CORETYPE is respected, with a warning when it is below the CPU.
      {"user haswell on avx512", Tier::kAvx512, "Haswell", 321, true, "Haswell", false, false,
       A::kUserChoice, "", true},
      {"user skylakex", Tier::kAvx512, "SkylakeX", 321, true, "skylakex", false, false,
       A::kUserChoice, "", false},
      {"user name the library ignores", Tier::kAvx512Bf16, "Cooperlake", 321, true, "Nonsense",
       false, false, A::kUserChoice, "", true},
      // After the re-exec: never again, only a check.
      {"re-executed, taken", Tier::kAvx512Bf16, "Cooperlake", 321, true, "Cooperlake", true, false,
       A::kSwitched, "Cooperlake", false},
      {"re-executed, not taken", Tier::kAmx, "Prescott", 321, true, "Cooperlake", true, false,
       A::kSwitched, "Cooperlake", true},
      // Tests declare OPENBLAS_CORETYPE the library's own choice.
      {"test marker", Tier::kAvx2, "Prescott", 321, true, "Prescott", false, true, A::kReexec,
       "Haswell", false},
  };
  for (const Row& r : rows) {
    BlasEnv env;
    env.coretype = r.coretype;
    env.reexecuted = r.reexecuted;
    env.chosen_before = r.reexecuted ? "Prescott" : "";
    env.coretype_is_library_choice = r.test_marker;
    const BlasDecision d = DecideBlasKernel(Cpu(r.cpu), Lib(r.lib_core, r.version, r.dynamic), env);
    EXPECT_EQ(d.action, r.action) << r.what << ": " << BlasActionName(d.action) << " / "
                                  << d.message;
    EXPECT_EQ(d.target, r.target) << r.what;
    EXPECT_EQ(d.warning, r.warning) << r.what << ": " << d.message;
    // Every action other than a silent keep says something, and a switch names both cores.
    if (r.action != A::kKeep) {
      EXPECT_FALSE(d.message.empty()) << r.what;
    }
    if (r.action == A::kReexec) {
      EXPECT_NE(d.message.find(r.lib_core), std::string::npos) << d.message;
      EXPECT_NE(d.message.find("OPENBLAS_CORETYPE=" + r.target), std::string::npos) << d.message;
    }
  }
}

// ---- The real library, through the probe ------------------------------------------------------

struct ProbeRun {
  int starts = 0;          // "start pid=" lines: 2 when the program re-executed itself
  std::vector<long> pids;  // the pid printed by each start
  nlohmann::json report;   // the probe's last line
  std::string output;
};

ProbeRun RunProbe(const std::string& env) {
  const std::string cmd =
      "env -u OPENBLAS_CORETYPE -u GROVE_BLAS_REEXEC -u GROVE_BLAS_CORETYPE_IS_LIBRARY_CHOICE "
      "-u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u GROVE_OMP_WAIT_SET OMP_NUM_THREADS=2 " +
      env + " " + GROVE_BLAS_PROBE + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), &pclose);
  ProbeRun run;
  char buf[4096];
  std::string last;
  while (p && fgets(buf, sizeof buf, p.get())) {
    const std::string line = buf;
    run.output += line;
    long pid = 0;
    if (std::sscanf(line.c_str(), "start pid=%ld", &pid) == 1) {
      ++run.starts;
      run.pids.push_back(pid);
    }
    if (!line.empty() && line[0] == '{') last = line;
  }
  run.report = nlohmann::json::parse(last, nullptr, false);
  return run;
}

std::string Best() {
  return BestCore(CpuTier(DetectCpuFeatures()), QueryBlasLibrary().version);
}

TEST(BlasKernelProbe, ForcedFallbackIsCorrectedByOneReexec) {
  const std::string best = Best();
  if (best.empty() || *CoreTier(best) <= Tier::kGeneric)
    GTEST_SKIP() << "this CPU has no core above the generic ones";
  // The real library loads Prescott, as if it had chosen it on this CPU.
  const ProbeRun run =
      RunProbe("OPENBLAS_CORETYPE=Prescott GROVE_BLAS_CORETYPE_IS_LIBRARY_CHOICE=1");
  ASSERT_FALSE(run.report.is_discarded()) << run.output;
  EXPECT_EQ(run.starts, 2) << "exactly one re-exec\n" << run.output;
  ASSERT_EQ(run.pids.size(), 2u) << run.output;
  EXPECT_EQ(run.pids[0], run.pids[1]) << "execv keeps the pid";
  EXPECT_EQ(run.report["core"], best) << run.output;
  EXPECT_EQ(run.report["library_core"], best) << "what openblas_get_corename() says now";
  EXPECT_EQ(run.report["source"], "grove");
  EXPECT_EQ(run.report["chosen_by_library"], "Prescott");
  EXPECT_EQ(run.report["warning"], false);
  EXPECT_EQ(run.report["marker_left"], false) << "the marker does not reach children";
  EXPECT_EQ(run.report["omp_wait"], "passive (set by Grove)") << "one restart sets both";
  // The first lines say what happened, before any output of the program itself.
  EXPECT_NE(run.output.find("chose its Prescott kernels"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("OPENBLAS_CORETYPE=" + best), std::string::npos) << run.output;
  std::printf("forced fallback: %s\n", run.report.dump().c_str());
}

TEST(BlasKernelProbe, UserChoiceIsRespectedAndReported) {
  const ProbeRun run = RunProbe("OPENBLAS_CORETYPE=Prescott OMP_WAIT_POLICY=passive");
  ASSERT_FALSE(run.report.is_discarded()) << run.output;
  EXPECT_EQ(run.starts, 1) << run.output;
  EXPECT_EQ(run.report["core"], "Prescott");
  EXPECT_EQ(run.report["source"], "environment");
  const std::string best = Best();
  const bool below = !best.empty() && *CoreTier(best) > Tier::kGeneric;
  EXPECT_EQ(run.report["warning"], below) << run.output;
  if (below) {
    EXPECT_NE(run.output.find("warning"), std::string::npos) << run.output;
  }
  std::printf("user choice: %s\n", run.report.dump().c_str());
}

TEST(BlasKernelProbe, DefaultEnvironmentEndsOnTheBestCore) {
  const ProbeRun run = RunProbe("OMP_WAIT_POLICY=passive");
  ASSERT_FALSE(run.report.is_discarded()) << run.output;
  const std::string core = run.report["core"];
  const std::string best = Best();
  ASSERT_TRUE(CoreTier(core).has_value()) << core;
  if (!best.empty()) {
    EXPECT_GE(*CoreTier(core), *CoreTier(best)) << run.output;
  }
  EXPECT_LE(run.starts, 2) << run.output;
  EXPECT_EQ(run.report["source"], run.starts == 2 ? "grove" : "library") << run.output;
  std::printf("default environment (%d start(s)): %s\n", run.starts, run.report.dump().c_str());
}

TEST(BlasKernelProbe, AnotherProcesssMarkerIsNotThisOnes) {
  // A parent Grove program's marker (another pid) and its OPENBLAS_CORETYPE: inherited, so the
  // environment's choice; no re-exec.
  const ProbeRun run =
      RunProbe("GROVE_BLAS_REEXEC=1:Prescott OPENBLAS_CORETYPE=Haswell OMP_WAIT_POLICY=passive");
  ASSERT_FALSE(run.report.is_discarded()) << run.output;
  EXPECT_EQ(run.starts, 1) << run.output;
  EXPECT_EQ(run.report["core"], "Haswell");
  EXPECT_EQ(run.report["source"], "environment");
}

// ---- The OpenMP wait policy, through the probe ------------------------------------------------

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(OmpWaitProbe, UnsetPolicyBecomesPassiveByOneSilentReexec) {
  // The BLAS core is the user's, so the wait policy alone restarts the program.
  const ProbeRun run = RunProbe("OPENBLAS_CORETYPE=Haswell");
  ASSERT_FALSE(run.report.is_discarded()) << run.output;
  EXPECT_EQ(run.starts, 2) << "exactly one re-exec\n" << run.output;
  ASSERT_EQ(run.pids.size(), 2u) << run.output;
  EXPECT_EQ(run.pids[0], run.pids[1]) << "execv keeps the pid";
  EXPECT_EQ(run.report["omp_wait"], "passive (set by Grove)") << run.output;
  EXPECT_EQ(run.report["omp_wait_policy_env"], "passive");
  EXPECT_EQ(run.report["marker_left"], false) << "the marker does not reach children";
  EXPECT_EQ(run.report["core"], "Haswell");
  EXPECT_EQ(run.report["source"], "environment");
  // The BLAS line is said once, by the image that runs.
  EXPECT_EQ(Count(run.output, "OPENBLAS_CORETYPE=Haswell from the environment"), 1u) << run.output;
  EXPECT_NE(run.report["describe"].get<std::string>().find("OpenMP wait passive (set by Grove)"),
            std::string::npos);
  std::printf("wait policy set: %s\n", run.report.dump().c_str());
}

TEST(OmpWaitProbe, UserPolicyOrSpinCountIsRespected) {
  for (const char* policy : {"active", "passive"}) {
    const ProbeRun run =
        RunProbe(std::string("OPENBLAS_CORETYPE=Haswell OMP_WAIT_POLICY=") + policy);
    ASSERT_FALSE(run.report.is_discarded()) << run.output;
    EXPECT_EQ(run.starts, 1) << run.output;
    EXPECT_EQ(run.report["omp_wait"],
              std::string(policy) + " (OMP_WAIT_POLICY from the environment)");
  }
  const ProbeRun spin = RunProbe("OPENBLAS_CORETYPE=Haswell GOMP_SPINCOUNT=1000");
  ASSERT_FALSE(spin.report.is_discarded()) << spin.output;
  EXPECT_EQ(spin.starts, 1) << spin.output;
  EXPECT_EQ(spin.report["omp_wait"], "GOMP_SPINCOUNT=1000 from the environment");
  EXPECT_EQ(spin.report["omp_wait_policy_env"], "");
  // A parent Grove program's marker (another pid) with the policy it set: inherited, so the
  // environment's.
  const ProbeRun child =
      RunProbe("OPENBLAS_CORETYPE=Haswell GROVE_OMP_WAIT_SET=1 OMP_WAIT_POLICY=passive");
  ASSERT_FALSE(child.report.is_discarded()) << child.output;
  EXPECT_EQ(child.starts, 1) << child.output;
  EXPECT_EQ(child.report["omp_wait"], "passive (OMP_WAIT_POLICY from the environment)");
  // One thread: no worker ever waits, no restart.
  const ProbeRun one = RunProbe("OPENBLAS_CORETYPE=Haswell OMP_NUM_THREADS=1");
  ASSERT_FALSE(one.report.is_discarded()) << one.output;
  EXPECT_EQ(one.starts, 1) << one.output;
  EXPECT_EQ(one.report["omp_wait"], "");
  EXPECT_EQ(one.report["omp_threads"], 1);
}

TEST(OmpWaitProbe, IdleWorkersSleepUnderThePolicyGroveSets) {
  // The policy takes effect in the OpenMP runtime: while the main thread sleeps 200 ms after a
  // parallel region, a spinning worker burns CPU time and a passive one does not.
  const ProbeRun set = RunProbe("OPENBLAS_CORETYPE=Haswell");
  const ProbeRun active = RunProbe("OPENBLAS_CORETYPE=Haswell OMP_WAIT_POLICY=active");
  ASSERT_FALSE(set.report.is_discarded()) << set.output;
  ASSERT_FALSE(active.report.is_discarded()) << active.output;
  ASSERT_EQ(set.report["omp_threads"], 2);
  const double idle_set = set.report["idle_cpu_ms"], idle_active = active.report["idle_cpu_ms"];
  std::printf("idle CPU over 200 ms: passive (set by Grove) %.1f ms, active %.1f ms\n", idle_set,
              idle_active);
  EXPECT_LT(idle_set, 1.5);  // measured 0.1-0.2 ms; the default spin alone burned 3-8 ms
  EXPECT_GT(idle_active, idle_set + 20.0);
}

}  // namespace
}  // namespace grove::blas
