// Helpers for the CUDA kernel tests: device buffers, host-side bf16 rounding, random data and the
// tolerance check of docs/testing.md (max|a - b| / max(max|b|, tiny), with the worst index on
// failure).
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/tensor.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"

namespace grove::cuda::testing {

using Vec = std::vector<double>;

// One line, printed by every GPU test when there is no device.
inline const char* kNoDevice = "no CUDA device found: skipping GPU kernel tests";

// Why no device is usable (no GPU, or a driver older than this CUDA runtime), for the
// GROVE_REQUIRE_GPU=1 mode, in which a machine that should have a GPU fails instead of skipping.
inline std::string no_device_reason() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  cudaGetLastError();
  if (err != cudaSuccess) return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
  return "cudaGetDeviceCount reports " + std::to_string(n) + " devices";
}
inline bool gpu_required() {
  const char* v = std::getenv("GROVE_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

// The base of every GPU test fixture: skips with kNoDevice when there is no usable device, and
// fails instead under GROVE_REQUIRE_GPU=1 (a GPU machine whose GPU cannot be used).
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_available()) return;
    if (gpu_required()) FAIL() << "GROVE_REQUIRE_GPU=1: " << no_device_reason();
    GTEST_SKIP() << kNoDevice;
  }
};

// Typed tests over both compute types, named f32 / bf16.
using ComputeTypes = ::testing::Types<float, bf16>;
class ComputeTypeNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "f32" : "bf16";
  }
};

// Host bf16 <-> float, round to nearest even (same as __float2bfloat16_rn for finite values).
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_value(uint16_t b) {
  uint32_t u = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The value x takes when stored as T (what the kernel actually sees).
template <typename T>
double stored(double x) {
  if constexpr (std::is_same_v<T, bf16>) return bf16_value(bf16_bits(static_cast<float>(x)));
  return static_cast<float>(x);
}
template <typename T>
Vec stored(const Vec& x) {
  Vec out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = stored<T>(x[i]);
  return out;
}

// Owning device array of T (float, bf16, int32_t, double) filled from / read back as doubles.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ > 0) GROVE_CUDA_CHECK(cudaMalloc(&ptr_, n_ * sizeof(T)));
  }
  explicit DeviceBuffer(const Vec& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() { return static_cast<T*>(ptr_); }
  size_t size() const { return n_; }

  // Host staging type: bf16 travels as its 16 raw bits.
  using Host = std::conditional_t<std::is_same_v<T, bf16>, uint16_t, T>;

  void upload(const Vec& host) {
    EXPECT_EQ(host.size(), n_);
    std::vector<Host> tmp(n_);
    for (size_t i = 0; i < n_; ++i) {
      if constexpr (std::is_same_v<T, bf16>)
        tmp[i] = bf16_bits(static_cast<float>(host[i]));
      else
        tmp[i] = static_cast<T>(host[i]);
    }
    if (n_ > 0)
      GROVE_CUDA_CHECK(cudaMemcpy(ptr_, tmp.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  Vec download() const {
    std::vector<Host> tmp(n_);
    GROVE_CUDA_CHECK(cudaDeviceSynchronize());
    if (n_ > 0)
      GROVE_CUDA_CHECK(cudaMemcpy(tmp.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    Vec out(n_);
    for (size_t i = 0; i < n_; ++i) {
      if constexpr (std::is_same_v<T, bf16>)
        out[i] = bf16_value(tmp[i]);
      else
        out[i] = static_cast<double>(tmp[i]);
    }
    return out;
  }

 private:
  static_assert(sizeof(Host) == sizeof(T));
  void* ptr_ = nullptr;
  size_t n_;
};

inline Vec random_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// max|got - want| / max(max|want|, tiny) <= eps. Equal infinities (lse = -inf) count as equal;
// a NaN, or an infinity on one side only, fails.
inline ::testing::AssertionResult close(const std::string& name, const Vec& got, const Vec& want,
                                        double eps) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure()
           << name << ": size " << got.size() << " != expected " << want.size();
  double max_ref = 1e-30, worst = 0;
  size_t worst_i = 0;
  for (double w : want)
    if (std::isfinite(w)) max_ref = std::max(max_ref, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    double diff = got[i] == want[i] ? 0.0 : std::abs(got[i] - want[i]);
    if (std::isnan(diff) || std::isnan(got[i])) diff = INFINITY;
    if (diff > worst) worst = diff, worst_i = i;
  }
  double rel = worst / max_ref;
  if (rel <= eps) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << name << ": max rel diff " << rel << " > " << eps << " at index " << worst_i << " (got "
     << got[worst_i] << ", want " << want[worst_i] << ", max|want| " << max_ref
     << "); first values got/want:";
  for (size_t i = 0; i < std::min<size_t>(4, got.size()); ++i)
    os << " " << got[i] << "/" << want[i];
  return ::testing::AssertionFailure() << os.str();
}

}  // namespace grove::cuda::testing
