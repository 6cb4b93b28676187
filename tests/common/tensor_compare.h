// Tensor comparison for tests, with the tolerance rule of docs/testing.md#tolerances:
//   err = max_i |a_i - b_i| / max(max_i |b_i|, tiny)   must be <= rel_tol,
// where b is the reference. On failure the message names the tensor, the worst index, both
// values there, the error, the first values of each side, and any NaN/Inf mismatch.
// A NaN in either tensor fails unless both hold NaN at the same index (never expected in
// practice; it makes a NaN impossible to hide). Same for +-Inf: must match exactly.
//
// Usage: EXPECT_TRUE(grove::testing::compare("dq", got, want, n, 1e-5));
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace grove::testing {

struct CompareStats {
  double max_abs_diff = 0;          // max |a - b| over finite pairs
  double max_abs_ref = 0;           // max |b| over finite b
  int64_t worst = -1;               // index of max |a - b|
  int64_t nonfinite_mismatch = -1;  // first index where a and b disagree on NaN/Inf
  double rel() const { return max_abs_diff / std::max(max_abs_ref, 1e-30); }
};

template <typename A, typename B>
CompareStats compare_stats(const A* a, const B* b, int64_t n) {
  CompareStats st;
  for (int64_t i = 0; i < n; ++i) {
    const double x = static_cast<double>(a[i]), y = static_cast<double>(b[i]);
    if (!std::isfinite(x) || !std::isfinite(y)) {
      const bool same = (std::isnan(x) && std::isnan(y)) || x == y;
      if (!same && st.nonfinite_mismatch < 0) st.nonfinite_mismatch = i;
      continue;
    }
    st.max_abs_ref = std::max(st.max_abs_ref, std::fabs(y));
    const double d = std::fabs(x - y);
    if (d > st.max_abs_diff || st.worst < 0) {
      st.max_abs_diff = d;
      st.worst = i;
    }
  }
  return st;
}

// a: the tensor under test, b: the reference. rel_tol per docs/testing.md#tolerances.
template <typename A, typename B>
::testing::AssertionResult compare(const std::string& name, const A* a, const B* b, int64_t n,
                                   double rel_tol) {
  const CompareStats st = compare_stats(a, b, n);
  auto head = [&](std::ostringstream& os) {
    os << "\n  first values (got | want):";
    for (int64_t i = 0; i < std::min<int64_t>(n, 5); ++i)
      os << " " << static_cast<double>(a[i]) << "|" << static_cast<double>(b[i]);
  };
  if (st.nonfinite_mismatch >= 0) {
    const int64_t i = st.nonfinite_mismatch;
    std::ostringstream os;
    os.precision(9);
    os << name << ": non-finite mismatch at index " << i << ": got " << static_cast<double>(a[i])
       << ", want " << static_cast<double>(b[i]) << " (n=" << n << ")";
    head(os);
    return ::testing::AssertionFailure() << os.str();
  }
  if (st.rel() <= rel_tol) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os.precision(9);
  const int64_t i = st.worst;
  os << name << ": rel error " << st.rel() << " > tol " << rel_tol << " (max|diff| "
     << st.max_abs_diff << ", max|want| " << st.max_abs_ref << ", n=" << n << "); worst index " << i
     << ": got " << static_cast<double>(a[i]) << ", want " << static_cast<double>(b[i]);
  head(os);
  return ::testing::AssertionFailure() << os.str();
}

template <typename A, typename B>
::testing::AssertionResult compare(const std::string& name, const std::vector<A>& a,
                                   const std::vector<B>& b, double rel_tol) {
  if (a.size() != b.size()) {
    return ::testing::AssertionFailure()
           << name << ": size mismatch: got " << a.size() << ", want " << b.size();
  }
  return compare(name, a.data(), b.data(), static_cast<int64_t>(a.size()), rel_tol);
}

// ||a - b|| / ||b|| over n elements: a norm-wise error for bf16, where single elements near zero
// carry large relative errors that mean nothing.
inline double norm_rel(const float* a, const double* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

}  // namespace grove::testing
