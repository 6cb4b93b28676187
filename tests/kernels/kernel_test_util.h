// Shared pieces of the kernel tests: seeded random tensors and central finite differences.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace grove::testing {

template <typename T>
std::vector<T> random_vector(size_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(dist(rng));
  return v;
}

template <typename T>
double dot(const std::vector<T>& a, const std::vector<T>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// d loss / d x by central differences, perturbing x in place (restored afterwards).
// loss() must read x's current values.
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& loss,
                                        double eps = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + eps;
    const double lp = loss();
    x[i] = x0 - eps;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (2 * eps);
  }
  return g;
}

// a - c elementwise (to strip the constant a gradient buffer was pre-filled with, which checks
// that backward kernels accumulate with += instead of overwriting).
inline std::vector<double> minus(const std::vector<double>& a, double c) {
  std::vector<double> r(a);
  for (double& x : r) x -= c;
  return r;
}

}  // namespace grove::testing
