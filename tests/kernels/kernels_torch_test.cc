// CPU kernels vs PyTorch: torch_oracle.py writes inputs, output gradients R,
// outputs and every input gradient (float64 autograd) to a versioned binary file; each op is run
// here in double and in float and compared tensor by tensor.
//
// Tolerances (docs/testing.md#tolerances):
//  - double: 1e-10. Same math in float64 on both sides, only the summation order differs
//    (~1e-15 relative; rmsnorm ~1e-13 because eps reaches the kernel as a float); any formula
//    difference (mask, scale, convention) is >= 1e-4.
//  - float: 1e-5. Inputs are exactly representable in float; the kernels round every
//    intermediate (dot products of length <= 32, softmax, exp with < 1 ulp error), which gives
//    ~1e-6 relative vs exact; cross-entropy gradients subtract 1 from a probability, losing up to
//    ~1 digit. 1e-5 leaves headroom (measured worst: 2.6e-7) over that and is far below any real
//    bug's error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "tests/common/tensor_compare.h"

namespace grove::cpu {
namespace {

using grove::testing::compare;

struct RefTensor {
  std::vector<int64_t> dims;
  std::vector<double> data;
};
using RefFile = std::map<std::string, RefTensor>;

constexpr uint32_t kOracleVersion = 1;

// Reads the oracle file; on a format problem returns an empty map and sets error.
RefFile read_ref_file(const std::string& path, std::string* error) {
  RefFile file;
  std::ifstream in(path, std::ios::binary);
  char magic[8];
  uint32_t version = 0, count = 0;
  if (!in.read(magic, 8) || std::string(magic, 8) != "GROVEREF") {
    *error = path + ": bad magic";
    return {};
  }
  in.read(reinterpret_cast<char*>(&version), 4);
  in.read(reinterpret_cast<char*>(&count), 4);
  if (version != kOracleVersion) {
    *error = path + ": version " + std::to_string(version) + ", expected " +
             std::to_string(kOracleVersion);
    return {};
  }
  for (uint32_t t = 0; t < count && in; ++t) {
    uint32_t len = 0, ndim = 0;
    in.read(reinterpret_cast<char*>(&len), 4);
    std::string name(len, '\0');
    in.read(name.data(), len);
    in.read(reinterpret_cast<char*>(&ndim), 4);
    RefTensor rt;
    rt.dims.resize(ndim);
    in.read(reinterpret_cast<char*>(rt.dims.data()), 8 * ndim);
    int64_t n = 1;
    for (int64_t d : rt.dims) n *= d;
    rt.data.resize(n);
    in.read(reinterpret_cast<char*>(rt.data.data()), 8 * n);
    file[name] = std::move(rt);
  }
  if (!in) {
    *error = path + ": truncated";
    return {};
  }
  return file;
}

class TorchOracle : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* py = std::getenv("GROVE_TORCH_PYTHON");
    const std::string python = py && *py ? py : "/usr/bin/python3";
    const std::string path = (std::filesystem::temp_directory_path() /
                              ("grove_kernels_oracle_" + std::to_string(getpid()) + ".bin"))
                                 .string();
    const std::string cmd = python + " " + GROVE_KERNELS_TEST_DIR + "/torch_oracle.py " + path;
    const int rc = std::system(cmd.c_str());
    const int status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (status == 77) {
      skip_reason_ = "torch cannot be imported by " + python;
      return;
    }
    if (status != 0) {
      error_ = "oracle script failed (exit " + std::to_string(status) + "): " + cmd;
      return;
    }
    file_ = read_ref_file(path, &error_);
    std::filesystem::remove(path);
  }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(error_.empty()) << error_;
  }

  // Tensor `name` converted to T.
  template <typename T>
  static std::vector<T> get(const std::string& name) {
    auto it = file_.find(name);
    if (it == file_.end()) {
      ADD_FAILURE() << "oracle file has no tensor " << name;
      return {};
    }
    return std::vector<T>(it->second.data.begin(), it->second.data.end());
  }
  static const std::vector<double>& want(const std::string& name) {
    static const std::vector<double> empty;
    auto it = file_.find(name);
    if (it == file_.end()) {
      ADD_FAILURE() << "oracle file has no tensor " << name;
      return empty;
    }
    return it->second.data;
  }
  static const std::vector<int64_t>& dims(const std::string& name) { return file_[name].dims; }

  template <typename T>
  void check_rmsnorm(double tol) {
    const auto x = get<T>("rmsnorm.x"), w = get<T>("rmsnorm.w"), R = get<T>("rmsnorm.R");
    const int N = static_cast<int>(dims("rmsnorm.x")[0]),
              C = static_cast<int>(dims("rmsnorm.x")[1]);
    std::vector<T> out(N * C), rstd(N), dx(N * C, T(0)), dw(C, T(0));
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
    EXPECT_TRUE(compare("rmsnorm.out", out, want("rmsnorm.out"), tol));
    EXPECT_TRUE(compare("rmsnorm.dx", dx, want("rmsnorm.dx"), tol));
    EXPECT_TRUE(compare("rmsnorm.dw", dw, want("rmsnorm.dw"), tol));
  }

  template <typename T>
  void check_rope(double tol) {
    const auto& d = dims("rope.x");
    const int S = d[0], B = d[1], NH = d[2], HD = d[3], pos0 = 4;
    const int max_pos = static_cast<int>(dims("rope.cos")[0]);
    std::vector<float> cosT(max_pos * HD / 2), sinT(max_pos * HD / 2);
    rope_table(cosT.data(), sinT.data(), max_pos, HD, 10000.0f);
    // Tables: torch's pow and std::pow may differ in the last double bit, which can flip the
    // float rounding by one ulp (<= 1.2e-7 for values <= 1).
    EXPECT_TRUE(compare("rope.cos", cosT, want("rope.cos"), 2e-7));
    EXPECT_TRUE(compare("rope.sin", sinT, want("rope.sin"), 2e-7));
    // Run with the oracle's tables so the double comparison isolates the rotation itself.
    const auto c = get<float>("rope.cos"), s = get<float>("rope.sin");
    auto x = get<T>("rope.x"), dx = get<T>("rope.R");
    rope_forward(x.data(), c.data(), s.data(), S, B, NH, HD, pos0);
    rope_backward(dx.data(), c.data(), s.data(), S, B, NH, HD, pos0);
    EXPECT_TRUE(compare("rope.out", x, want("rope.out"), tol));
    EXPECT_TRUE(compare("rope.dx", dx, want("rope.dx"), tol));
  }

  template <typename T>
  void check_attention(const std::string& tag, double tol) {
    const auto sh = get<double>(tag + ".shape");
    AttentionShape s{static_cast<int>(sh[0]),
                     static_cast<int>(sh[1]),
                     static_cast<int>(sh[2]),
                     static_cast<int>(sh[3]),
                     static_cast<int>(sh[4]),
                     static_cast<int>(sh[5]),
                     sh[6] != 0,
                     static_cast<int>(sh[7]),
                     static_cast<int>(sh[8])};
    const auto q = get<T>(tag + ".q"), k = get<T>(tag + ".k"), v = get<T>(tag + ".v"),
               R = get<T>(tag + ".R");
    for (bool keep : {false, true}) {
      SCOPED_TRACE(keep ? "probs kept" : "probs recomputed");
      std::vector<T> out(q.size()), lse(static_cast<size_t>(s.B) * s.NH * s.SQ),
          probs(keep ? lse.size() * s.SK : 0), dq(q.size(), T(0)), dk(k.size(), T(0)),
          dv(v.size(), T(0));
      attention_forward(out.data(), lse.data(), keep ? probs.data() : nullptr, q.data(), k.data(),
                        v.data(), s);
      attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(),
                         out.data(), lse.data(), keep ? probs.data() : nullptr, s);
      EXPECT_TRUE(compare(tag + ".out", out, want(tag + ".out"), tol));
      EXPECT_TRUE(compare(tag + ".lse", lse, want(tag + ".lse"), tol));
      EXPECT_TRUE(compare(tag + ".dq", dq, want(tag + ".dq"), tol));
      EXPECT_TRUE(compare(tag + ".dk", dk, want(tag + ".dk"), tol));
      EXPECT_TRUE(compare(tag + ".dv", dv, want(tag + ".dv"), tol));
    }
  }

  template <typename T>
  void check_cross_entropy(double tol) {
    const auto logits = get<T>("ce.logits"), R = get<T>("ce.R");
    const auto td = get<double>("ce.targets");
    std::vector<int32_t> targets(td.begin(), td.end());
    const int N = static_cast<int>(dims("ce.logits")[0]),
              V = static_cast<int>(dims("ce.logits")[1]);
    std::vector<T> losses(N), lse(N), dlogits(logits);
    cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
    cross_entropy_backward(dlogits.data(), dlogits.data(), lse.data(), targets.data(), R.data(), N,
                           V);  // in place
    EXPECT_TRUE(compare("ce.losses", losses, want("ce.losses"), tol));
    EXPECT_TRUE(compare("ce.dlogits", dlogits, want("ce.dlogits"), tol));
  }

  template <typename T>
  void check_mlp(double tol) {
    const auto x = get<T>("mlp.x"), wg = get<T>("mlp.wg"), wu = get<T>("mlp.wu"),
               bg = get<T>("mlp.bg"), R = get<T>("mlp.R");
    const int N = dims("mlp.x")[0], C = dims("mlp.x")[1], OC = dims("mlp.wg")[0];
    std::vector<T> gate(N * OC), up(N * OC), out(N * OC), dgate(N * OC, T(0)), dup(N * OC, T(0)),
        dx(N * C, T(0)), dwg(OC * C, T(0)), dwu(OC * C, T(0)), dbg(OC, T(0));
    linear_forward(gate.data(), x.data(), wg.data(), bg.data(), N, C, OC);
    linear_forward(up.data(), x.data(), wu.data(), static_cast<const T*>(nullptr), N, C, OC);
    swiglu_forward(out.data(), gate.data(), up.data(), N * OC);
    swiglu_backward(dgate.data(), dup.data(), R.data(), gate.data(), up.data(), N * OC);
    linear_backward(dx.data(), dwg.data(), dbg.data(), dgate.data(), x.data(), wg.data(), N, C, OC);
    linear_backward(dx.data(), dwu.data(), static_cast<T*>(nullptr), dup.data(), x.data(),
                    wu.data(), N, C, OC);  // x used twice: its gradient accumulates
    EXPECT_TRUE(compare("mlp.out", out, want("mlp.out"), tol));
    EXPECT_TRUE(compare("mlp.dx", dx, want("mlp.dx"), tol));
    EXPECT_TRUE(compare("mlp.dwg", dwg, want("mlp.dwg"), tol));
    EXPECT_TRUE(compare("mlp.dbg", dbg, want("mlp.dbg"), tol));
    EXPECT_TRUE(compare("mlp.dwu", dwu, want("mlp.dwu"), tol));
  }

  static inline RefFile file_;
  static inline std::string error_, skip_reason_;
};

constexpr double kDoubleTol = 1e-10;
constexpr double kFloatTol = 1e-5;

TEST_F(TorchOracle, RMSNorm) {
  check_rmsnorm<double>(kDoubleTol);
  check_rmsnorm<float>(kFloatTol);
}

TEST_F(TorchOracle, RoPE) {
  check_rope<double>(kDoubleTol);
  check_rope<float>(kFloatTol);
}

TEST_F(TorchOracle, AttentionCausalShardGQA) {
  check_attention<double>("attn_causal", kDoubleTol);
  check_attention<float>("attn_causal", kFloatTol);
}

TEST_F(TorchOracle, AttentionNonCausalMQA) {
  check_attention<double>("attn_full", kDoubleTol);
  check_attention<float>("attn_full", kFloatTol);
}

TEST_F(TorchOracle, CrossEntropy) {
  check_cross_entropy<double>(kDoubleTol);
  check_cross_entropy<float>(kFloatTol);
}

TEST_F(TorchOracle, SwiGLUMLP) {
  check_mlp<double>(kDoubleTol);
  check_mlp<float>(kFloatTol);
}

}  // namespace
}  // namespace grove::cpu
