// The emulated cuBLAS / cuBLASLt (emu_blas.cc) against a naive row-by-row product written from
// the BLAS definition: every transpose combination, padded leading dimensions, alpha / beta, fp32
// and bf16 operands, fp32 and bf16 outputs, the bias epilogue, and the argument checks.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "tests/cuda_emu/emu.h"

namespace {

using bf16 = __nv_bfloat16;

// A device copy of host values of type T.
template <typename T>
struct Dev {
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Dev() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
  size_t n;
  T* p = nullptr;
};

double value(float x) {
  return x;
}
double value(bf16 x) {
  return __bfloat162float(x);
}

// Column-major, ld-strided storage of a rows x cols matrix with random entries; padding is NaN,
// so reading it would show.
template <typename T>
std::vector<T> random_matrix(int rows, int cols, int ld, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<T> m(size_t(ld) * cols, T(NAN));
  for (int c = 0; c < cols; ++c)
    for (int r = 0; r < rows; ++r) m[size_t(c) * ld + r] = T(u(rng));
  return m;
}

// want[i, j] = alpha sum_l op(A)[i, l] op(B)[l, j] + beta C[i, j] (+ bias[i]), from the definition:
// op(X)[r, c] = X[r, c] (N) or X[c, r] (T), X[r, c] stored at r + c ld.
template <typename TA, typename TC>
std::vector<double> naive(bool ta, bool tb, int m, int n, int k, double alpha,
                          const std::vector<TA>& A, int lda, const std::vector<TA>& B, int ldb,
                          double beta, const std::vector<TC>& C, int ldc,
                          const std::vector<TC>* bias) {
  auto a = [&](int r, int c) {
    return value(ta ? A[size_t(r) * lda + c] : A[size_t(c) * lda + r]);
  };
  auto b = [&](int r, int c) {
    return value(tb ? B[size_t(r) * ldb + c] : B[size_t(c) * ldb + r]);
  };
  std::vector<double> want(size_t(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int l = 0; l < k; ++l) s += a(i, l) * b(l, j);
      s = alpha * s;
      if (beta != 0) s += beta * value(C[size_t(j) * ldc + i]);
      if (bias) s += value((*bias)[i]);
      want[size_t(i) * n + j] = s;
    }
  return want;
}

// got (column-major, ldc) against want: within the output type's rounding (the sum is exact to
// ~1e-15 in double, then rounded once through fp32).
template <typename TC>
void expect_close(const std::vector<TC>& got, int ldc, const std::vector<double>& want, int m,
                  int n, const char* what) {
  const double rel = std::is_same_v<TC, bf16> ? 1.0 / 256 : 1e-6;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      const double w = want[size_t(i) * n + j];
      ASSERT_NEAR(value(got[size_t(j) * ldc + i]), w, rel * std::abs(w) + 1e-30)
          << what << " at (" << i << ", " << j << ")";
    }
}

struct Shape {
  int m, n, k, pad;  // leading dimensions are the stored rows + pad
};
const Shape kShapes[] = {{5, 7, 3, 0}, {16, 8, 24, 8}, {9, 13, 17, 3}, {1, 1, 1, 0}};

TEST(CudaEmuBlas, SgemmEveryTransposeAndLeadingDimension) {
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  std::mt19937 rng(1);
  for (const Shape& s : kShapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const int lda = (ta ? s.k : s.m) + s.pad, ldb = (tb ? s.n : s.k) + s.pad, ldc = s.m + s.pad;
        auto A = random_matrix<float>(ta ? s.k : s.m, ta ? s.m : s.k, lda, rng);
        auto B = random_matrix<float>(tb ? s.n : s.k, tb ? s.k : s.n, ldb, rng);
        auto C = random_matrix<float>(s.m, s.n, ldc, rng);
        for (float beta : {0.f, 0.5f}) {
          Dev<float> a(A), b(B), c(beta == 0 ? std::vector<float>(C.size(), NAN) : C);
          const float alpha = 1.5f;
          ASSERT_EQ(cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                s.m, s.n, s.k, &alpha, a.p, lda, b.p, ldb, &beta, c.p, ldc),
                    CUBLAS_STATUS_SUCCESS);
          expect_close(c.get(), ldc,
                       naive(ta, tb, s.m, s.n, s.k, alpha, A, lda, B, ldb, beta, C, ldc,
                             static_cast<const std::vector<float>*>(nullptr)),
                       s.m, s.n, "sgemm");
        }
      }
  cublasDestroy(h);
}

template <typename TC>
void check_gemm_ex_and_lt(cudaDataType_t c_type) {
  cublasHandle_t h;
  cublasLtHandle_t lt;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
  std::mt19937 rng(2);
  for (const Shape& s : kShapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const int lda = (ta ? s.k : s.m) + s.pad, ldb = (tb ? s.n : s.k) + s.pad, ldc = s.m + s.pad;
        auto A = random_matrix<bf16>(ta ? s.k : s.m, ta ? s.m : s.k, lda, rng);
        auto B = random_matrix<bf16>(tb ? s.n : s.k, tb ? s.k : s.n, ldb, rng);
        auto C = random_matrix<TC>(s.m, s.n, ldc, rng);
        auto bias = random_matrix<TC>(s.m, 1, s.m, rng);
        const float alpha = 0.75f, beta = 0.5f;
        const auto op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        {  // classic
          Dev<bf16> a(A), b(B);
          Dev<TC> c(C);
          ASSERT_EQ(cublasGemmEx(h, op_a, op_b, s.m, s.n, s.k, &alpha, a.p, CUDA_R_16BF, lda, b.p,
                                 CUDA_R_16BF, ldb, &beta, c.p, c_type, ldc, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT),
                    CUBLAS_STATUS_SUCCESS);
          expect_close(c.get(), ldc,
                       naive(ta, tb, s.m, s.n, s.k, alpha, A, lda, B, ldb, beta, C, ldc,
                             static_cast<const std::vector<TC>*>(nullptr)),
                       s.m, s.n, "gemm_ex");
        }
        for (bool with_bias : {false, true}) {  // Lt, with alignment 16 so that it offers one
          Dev<bf16> a(A), b(B);
          Dev<TC> c(C), d_bias(bias);
          cublasLtMatmulDesc_t desc;
          ASSERT_EQ(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                    CUBLAS_STATUS_SUCCESS);
          cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a));
          cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b));
          if (with_bias) {
            cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
            const void* bp = d_bias.p;
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp,
                                           sizeof(bp));
          }
          cublasLtMatrixLayout_t la, lb, lc;
          cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta ? s.k : s.m, ta ? s.m : s.k, lda);
          cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb ? s.n : s.k, tb ? s.k : s.n, ldb);
          cublasLtMatrixLayoutCreate(&lc, c_type, s.m, s.n, ldc);
          cublasLtMatmulPreference_t pref;
          cublasLtMatmulPreferenceCreate(&pref);
          cublasLtMatmulHeuristicResult_t result{};
          int found = 0;
          const cublasStatus_t st =
              cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &result, &found);
          // Offered exactly when every leading dimension is a multiple of 16 bytes.
          const bool aligned = lda * 2 % 16 == 0 && ldb * 2 % 16 == 0 && ldc * sizeof(TC) % 16 == 0;
          ASSERT_EQ(st == CUBLAS_STATUS_SUCCESS && found == 1, aligned);
          if (aligned) {
            ASSERT_EQ(cublasLtMatmul(lt, desc, &alpha, a.p, la, b.p, lb, &beta, c.p, lc, c.p, lc,
                                     &result.algo, nullptr, 0, nullptr),
                      CUBLAS_STATUS_SUCCESS);
            expect_close(c.get(), ldc,
                         naive(ta, tb, s.m, s.n, s.k, alpha, A, lda, B, ldb, beta, C, ldc,
                               with_bias ? &bias : nullptr),
                         s.m, s.n, with_bias ? "lt + bias" : "lt");
          }
          cublasLtMatmulPreferenceDestroy(pref);
          cublasLtMatrixLayoutDestroy(la);
          cublasLtMatrixLayoutDestroy(lb);
          cublasLtMatrixLayoutDestroy(lc);
          cublasLtMatmulDescDestroy(desc);
        }
      }
  cublasLtDestroy(lt);
  cublasDestroy(h);
}

TEST(CudaEmuBlas, GemmExAndLtFp32Output) {
  check_gemm_ex_and_lt<float>(CUDA_R_32F);
}
TEST(CudaEmuBlas, GemmExAndLtBf16Output) {
  check_gemm_ex_and_lt<bf16>(CUDA_R_16BF);
}

TEST(CudaEmuBlas, RejectsHostPointersAndShortBuffers) {
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  std::vector<float> host(16, 1.f);
  Dev<float> dev(host), short_buf(std::vector<float>(15, 1.f));
  const float one = 1.f, zero = 0.f;
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, host.data(), 4, dev.p, 4, &zero,
                        dev.p, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, dev.p, 4, short_buf.p, 4, &zero,
                        dev.p, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(
      cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, dev.p, 3, dev.p, 4, &zero, dev.p, 4),
      CUBLAS_STATUS_INVALID_VALUE);  // lda < m
  cublasDestroy(h);
}

}  // namespace
