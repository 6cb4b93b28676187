// GEMM (cuBLAS fp32, cuBLASLt bf16 with fp32 accumulation) and the linear layer built on it.
// Row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T.
#include <cublasLt.h>

#include <cstdint>
#include <numeric>
#include <optional>
#include <type_traits>

#include "kernels/cuda/blas_handle.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace grove::cuda {
namespace {

using detail::to_f32;

// Largest power of two <= 256 dividing the address (cuBLASLt assumes 256 unless told).
int pointer_alignment(const void* p) {
  auto addr = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 1 && addr % align != 0) align >>= 1;
  return align;
}

// RAII wrappers so that an exception between create and destroy leaks nothing.
struct LtDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~LtDesc() {
    if (d) cublasLtMatmulDescDestroy(d);
  }
};
struct LtLayout {
  cublasLtMatrixLayout_t l = nullptr;
  ~LtLayout() {
    if (l) cublasLtMatrixLayoutDestroy(l);
  }
};
struct LtPref {
  cublasLtMatmulPreference_t p = nullptr;
  ~LtPref() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
};

// out[n, oc] = bias[oc]
template <typename T>
__global__ void broadcast_bias_kernel(T* out, const T* bias, int64_t N, int OC) {
  int64_t total = N * OC;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x)
    out[i] = bias[i % OC];
}

// Row-major C[M,N] = alpha op(A) op(B) + beta C (+ bias[N] broadcast over rows) with A, B bf16
// and C of type c_type (bf16 / fp32). A bias (bf16 C only) goes through the cuBLASLt
// CUBLASLT_EPILOGUE_BIAS epilogue, added in fp32 before the single rounding of C; its type is then
// the output type (bf16, cuBLASLt's default). Where cuBLASLt has no algorithm, C is first filled
// with the bias and the classic GEMM accumulates onto it (beta must then be 0).
void lt_matmul(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A, int lda,
               const bf16* B, int ldb, float beta, void* C, cudaDataType_t c_type, int ldc,
               cudaStream_t stream, const bf16* bias = nullptr) {
  if (M == 0 || N == 0) return;
  GROVE_CHECK(K > 0) << "bf16 gemm needs K > 0 (got " << K << ")";
  GROVE_CHECK(bias == nullptr || (c_type == CUDA_R_16BF && ldc == N))
      << "bf16 gemm: a bias needs a packed bf16 C";
  BlasHandle& h = default_blas_handle();
  // Column-major problem: m = N, n = M; "A" is row-major B, "B" is row-major A.
  cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  LtDesc desc;
  GROVE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  GROVE_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  GROVE_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  if (bias != nullptr) {  // column-major D has N rows: one bias value per row
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    GROVE_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    GROVE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &bias, sizeof(bias)));
  }
  LtLayout la, lb, lc;
  // Stored (column-major) shapes before op: rows x cols.
  GROVE_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&la.l, CUDA_R_16BF, trans_b ? K : N, trans_b ? N : K, ldb));
  GROVE_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&lb.l, CUDA_R_16BF, trans_a ? M : K, trans_a ? K : M, lda));
  GROVE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc.l, c_type, N, M, ldc));

  int align = std::min({pointer_alignment(A), pointer_alignment(B), pointer_alignment(C)});
  // The heuristic also depends on the bias pointer's alignment: fold it into the key's.
  if (bias != nullptr) align = std::min(align, pointer_alignment(bias));
  const int epilogue = bias != nullptr ? 1 : 0;
  const BlasHandle::AlgoKey key(trans_a, trans_b, M, N, K, lda, ldb, ldc, static_cast<int>(c_type),
                                align, epilogue);
  auto& cache = h.algo_cache();
  auto it = cache.find(key);
  if (it == cache.end()) {
    LtPref pref;
    GROVE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.p));
    size_t ws = h.workspace_bytes();
    GROVE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    uint32_t a32 = static_cast<uint32_t>(align);
    for (auto attr :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      GROVE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, attr, &a32, sizeof(a32)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h.lt(), desc.d, la.l, lb.l, lc.l, lc.l,
                                                       pref.p, 1, &result, &found);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) GROVE_CUBLAS_CHECK(st);
    std::optional<cublasLtMatmulAlgo_t> algo;
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) algo = result.algo;
    it = cache.emplace(key, algo).first;
  }
  if (it->second) {
    GROVE_CUBLAS_CHECK(cublasLtMatmul(h.lt(), desc.d, &alpha, B, la.l, A, lb.l, &beta, C, lc.l, C,
                                      lc.l, &*it->second, h.workspace(stream), h.workspace_bytes(),
                                      stream));
  } else {  // no Lt algorithm for this layout: the classic API, same types and fp32 accumulation
    if (bias != nullptr) {
      GROVE_CHECK(beta == 0.f) << "bf16 gemm: a bias with beta != 0 needs cuBLASLt";
      broadcast_bias_kernel<bf16><<<detail::grid_for(int64_t{M} * N, 256), 256, 0, stream>>>(
          static_cast<bf16*>(C), bias, M, N);
      GROVE_CUDA_CHECK_LAUNCH();
      beta = 1.f;
    }
    GROVE_CUBLAS_CHECK(cublasGemmEx(h.cublas(stream), op_a, op_b, N, M, K, &alpha, B, CUDA_R_16BF,
                                    ldb, A, CUDA_R_16BF, lda, &beta, C, c_type, ldc,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

// dbias[oc] += sum_n dout[n, oc]. Block (32, 8): 32 columns, 8 row strides; deterministic.
template <typename T>
__global__ void bias_grad_kernel(float* dbias, const T* dout, int N, int OC) {
  __shared__ float partial[8][33];
  int oc = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.f;
  if (oc < OC)
    for (int n = threadIdx.y; n < N; n += 8) acc += to_f32(dout[int64_t{n} * OC + oc]);
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && oc < OC) {
    float s = 0.f;
    for (int r = 0; r < 8; ++r) s += partial[r][threadIdx.x];
    dbias[oc] += s;
  }
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc,
                 cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  cublasHandle_t h = default_blas_handle().cublas(stream);
  GROVE_CUBLAS_CHECK(cublasSgemm(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A,
                                 lda, &beta, C, ldc));
}

template <>
void gemm<bf16>(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A,
                int lda, const bf16* B, int ldb, float beta, bf16* C, int ldc,
                cudaStream_t stream) {
  lt_matmul(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, CUDA_R_16BF, ldc, stream);
}

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A, int lda,
          const bf16* B, int ldb, float beta, float* C, int ldc, cudaStream_t stream) {
  lt_matmul(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, CUDA_R_32F, ldc, stream);
}

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC,
                    cudaStream_t stream) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (bias != nullptr) {  // fused: cuBLASLt's bias epilogue, one pass over out
      lt_matmul(false, true, N, OC, C, 1.f, inp, C, weight, C, 0.f, out, CUDA_R_16BF, OC, stream,
                bias);
      return;
    }
  }
  // fp32 (and bf16 without a bias): with a bias, out is first filled with it and the GEMM
  // accumulates onto it (beta = 1), so the bias is added in fp32 before out is rounded.
  float beta = 0.f;
  if (bias != nullptr && N > 0 && OC > 0) {
    broadcast_bias_kernel<T>
        <<<detail::grid_for(int64_t{N} * OC, 256), 256, 0, stream>>>(out, bias, N, OC);
    GROVE_CUDA_CHECK_LAUNCH();
    beta = 1.f;
  }
  gemm<T>(false, true, N, OC, C, 1.f, inp, C, weight, C, beta, out, OC, stream);
}

template <typename T>
void linear_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp,
                     const T* weight, int N, int C, int OC, cudaStream_t stream) {
  if (dinp != nullptr)
    gemm<T>(false, false, N, C, OC, 1.f, dout, OC, weight, C, 1.f, dinp, C, stream);
  if (N > 0) gemm(true, false, OC, C, N, 1.f, dout, OC, inp, C, 1.f, dweight, C, stream);
  if (dbias != nullptr && OC > 0) {
    bias_grad_kernel<T><<<(OC + 31) / 32, dim3(32, 8), 0, stream>>>(dbias, dout, N, OC);
    GROVE_CUDA_CHECK_LAUNCH();
  }
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int, int, int,
                                    cudaStream_t);
template void linear_forward<bf16>(bf16*, const bf16*, const bf16*, const bf16*, int, int, int,
                                   cudaStream_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, int, int, int, cudaStream_t);
template void linear_backward<bf16>(bf16*, float*, float*, const bf16*, const bf16*, const bf16*,
                                    int, int, int, cudaStream_t);

}  // namespace grove::cuda
