// cuBLAS and cuBLASLt on the CPU for the CUDA emulator: exactly the calls kernels/cuda
// (blas_handle.cc, gemm.cu) make, in place of libcublas / libcublasLt (the emulated binaries do
// not link them). One plain column-major GEMM does the arithmetic for all of them:
//   D = alpha op(A) op(B) + beta C (+ bias[i] per row of D),
// with the library's op / ld conventions, operands read as fp32 (bf16 through __bfloat162float),
// products summed in double, and one rounding to D's type at the end (through fp32, the type the
// device accumulates in). C is not read when beta == 0, as in cuBLAS (it may hold NaN).
// Every operand range must lie in device memory (emu::is_device_range), so a host pointer or a
// too-small buffer is reported instead of read.
//
// cuBLASLt's heuristic is modelled conservatively: it offers an algorithm only when the requested
// minimum alignments are >= 16 bytes and every leading dimension is a multiple of 16 bytes, and
// cublasLtMatmul checks that the pointers it gets are as aligned as the algorithm was chosen for.
// So both of gemm.cu's paths (Lt with the bias epilogue, and the cublasGemmEx fallback) run.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "tests/cuda_emu/emu.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};
struct cublasLtContext {
  int unused = 0;
};

namespace {

struct Desc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
};
struct Layout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};
struct Pref {
  uint64_t max_workspace = 0;
  uint32_t min_align[4] = {256, 256, 256, 256};  // A, B, C, D
};

Desc* desc(cublasLtMatmulDesc_t d) {
  return reinterpret_cast<Desc*>(d);
}
Layout* layout(cublasLtMatrixLayout_t l) {
  return reinterpret_cast<Layout*>(l);
}
Pref* pref(cublasLtMatmulPreference_t p) {
  return reinterpret_cast<Pref*>(p);
}

size_t type_bytes(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_32F:
      return 4;
    case CUDA_R_16BF:
      return 2;
    default:
      return 0;  // not emulated
  }
}
double load(const void* p, cudaDataType_t t, int64_t i) {
  if (t == CUDA_R_32F) return static_cast<const float*>(p)[i];
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
void store(void* p, cudaDataType_t t, int64_t i, double v) {
  const float f = static_cast<float>(v);
  if (t == CUDA_R_32F)
    static_cast<float*>(p)[i] = f;
  else
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(f);
}

struct Matrix {
  const void* p;
  cudaDataType_t type;
  int64_t ld;
};

// A rows x cols column-major matrix with leading dimension ld, all inside device memory.
bool valid(const char* call, const char* name, const void* p, cudaDataType_t t, int64_t rows,
           int64_t cols, int64_t ld) {
  if (type_bytes(t) == 0 || ld < std::max<int64_t>(1, rows)) {
    std::fprintf(stderr, "emu: %s: %s: unsupported type or ld %lld < rows %lld\n", call, name,
                 static_cast<long long>(ld), static_cast<long long>(rows));
    return false;
  }
  if (rows == 0 || cols == 0) return true;
  const size_t bytes = ((cols - 1) * ld + rows) * type_bytes(t);
  if (!emu::is_device_range(p, bytes)) {
    std::fprintf(stderr, "emu: %s: %s (%p, %zu bytes) is not inside device memory\n", call, name, p,
                 bytes);
    return false;
  }
  return true;
}

// Sums a[l] * b_c[l] over l = 0..k-1, in that order, for the four columns b_0..b_3 (b_c = b +
// c * k): four independent chains, so the CPU overlaps them. Reads only the gemm's own buffers,
// whose bounds hold by construction; unchecked, as it is the emulator's hot loop.
__attribute__((no_sanitize("address", "undefined"))) void dot4(const double* a, const double* b,
                                                               int64_t k, double acc[4]) {
  const double *b0 = b, *b1 = b + k, *b2 = b + 2 * k, *b3 = b + 3 * k;
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int64_t l = 0; l < k; ++l) {
    s0 += a[l] * b0[l];
    s1 += a[l] * b1[l];
    s2 += a[l] * b2[l];
    s3 += a[l] * b3[l];
  }
  acc[0] = s0, acc[1] = s1, acc[2] = s2, acc[3] = s3;
}

// D[m, n] = alpha op(A) op(B) + beta C (+ bias[i]); op(A) is m x k, op(B) is k x n. The rows of
// op(A) and the columns of op(B) are first read (through the checked device pointers) into
// contiguous doubles; each element of D is then the sum over l = 0..k-1 in order, exactly the plain
// triple loop's sum. C is read just before D is written at the same index (D may be C).
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, Matrix A, Matrix B,
          double beta, Matrix C, void* D, cudaDataType_t d_type, int64_t ldd, const void* bias) {
  std::vector<double> a(m * k), b(((n + 3) / 4 * 4) * k, 0.0);  // b: columns padded to 4
  for (int64_t l = 0; l < k; ++l)
    for (int64_t i = 0; i < m; ++i)
      a[i * k + l] = load(A.p, A.type, ta ? l + i * A.ld : i + l * A.ld);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t l = 0; l < k; ++l)
      b[j * k + l] = load(B.p, B.type, tb ? j + l * B.ld : l + j * B.ld);
  for (int64_t j0 = 0; j0 < n; j0 += 4)
    for (int64_t i = 0; i < m; ++i) {
      double acc[4];
      dot4(a.data() + i * k, b.data() + j0 * k, k, acc);
      for (int64_t j = j0; j < std::min(n, j0 + 4); ++j) {
        double v = alpha * acc[j - j0];
        if (beta != 0) v += beta * load(C.p, C.type, i + j * C.ld);
        if (bias != nullptr) v += load(bias, d_type, i);
        store(D, d_type, i + j * ldd, v);
      }
    }
}

// The classic API's checks and call, for cublasSgemm and cublasGemmEx.
cublasStatus_t classic_gemm(const char* call, cublasHandle_t h, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, float alpha,
                            const void* A, cudaDataType_t at, int lda, const void* B,
                            cudaDataType_t bt, int ldb, float beta, void* C, cudaDataType_t ct,
                            int ldc) {
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  if (m < 0 || n < 0 || k < 0 || (transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) ||
      (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (!valid(call, "A", A, at, ta ? k : m, ta ? m : k, lda) ||
      !valid(call, "B", B, bt, tb ? n : k, tb ? k : n, ldb) || !valid(call, "C", C, ct, m, n, ldc))
    return CUBLAS_STATUS_INVALID_VALUE;
  gemm(ta, tb, m, n, k, alpha, {A, at, lda}, {B, bt, ldb}, beta, {C, ct, ldc}, C, ct, ldc, nullptr);
  return CUBLAS_STATUS_SUCCESS;
}

int alignment(const void* p) {
  int a = 256;
  while (a > 1 && reinterpret_cast<uintptr_t>(p) % a != 0) a >>= 1;
  return a;
}

}  // namespace

// ---- cuBLAS -----------------------------------------------------------------------------------

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS (emulated)";
  }
}
const char* cublasGetStatusString(cublasStatus_t status) {
  return cublasGetStatusName(status);
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                              cublasOperation_t transb, int m, int n, int k, const float* alpha,
                              const float* A, int lda, const float* B, int ldb, const float* beta,
                              float* C, int ldc) {
  return classic_gemm("cublasSgemm", handle, transa, transb, m, n, k, *alpha, A, CUDA_R_32F, lda, B,
                      CUDA_R_32F, ldb, *beta, C, CUDA_R_32F, ldc);
}

// Inputs fp32 or bf16 (both alike), output fp32 or bf16, fp32 compute and scale types.
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t) {
  if (computeType != CUBLAS_COMPUTE_32F || Atype != Btype) return CUBLAS_STATUS_NOT_SUPPORTED;
  return classic_gemm("cublasGemmEx", handle, transa, transb, m, n, k,
                      *static_cast<const float*>(alpha), A, Atype, lda, B, Btype, ldb,
                      *static_cast<const float*>(beta), C, Ctype, ldc);
}

// ---- cuBLASLt ---------------------------------------------------------------------------------

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  *d = reinterpret_cast<cublasLtMatmulDesc_t>(new Desc{compute, scale});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete desc(d);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t bytes) {
  auto set = [&](auto& field) {
    if (buf == nullptr || bytes != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, buf, bytes);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      return set(desc(d)->trans_a);
    case CUBLASLT_MATMUL_DESC_TRANSB:
      return set(desc(d)->trans_b);
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      return set(desc(d)->epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return set(desc(d)->bias);
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;  // not emulated
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  *l = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete layout(l);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = reinterpret_cast<cublasLtMatmulPreference_t>(new Pref);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete pref(p);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t bytes) {
  auto set = [&](auto& field) {
    if (buf == nullptr || bytes != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, buf, bytes);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      return set(pref(p)->max_workspace);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
      return set(pref(p)->min_align[0]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
      return set(pref(p)->min_align[1]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
      return set(pref(p)->min_align[2]);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      return set(pref(p)->min_align[3]);
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

// The algorithm records the alignment it was chosen for (data[0]); see the top of the file.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t d,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl,
                                              cublasLtMatmulPreference_t p, int requested,
                                              cublasLtMatmulHeuristicResult_t results[],
                                              int* found) {
  *found = 0;
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  const uint32_t align = *std::min_element(pref(p)->min_align, pref(p)->min_align + 4);
  for (cublasLtMatrixLayout_t l : {a, b, c, dl})
    if (layout(l)->ld * static_cast<int64_t>(type_bytes(layout(l)->type)) % 16 != 0)
      return CUBLAS_STATUS_NOT_SUPPORTED;
  if (align < 16 || desc(d)->compute != CUBLAS_COMPUTE_32F || desc(d)->scale != CUDA_R_32F)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  results[0].algo.data[0] = align;
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.f;
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t dsc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t la, const void* B,
                              cublasLtMatrixLayout_t lb, const void* beta, const void* C,
                              cublasLtMatrixLayout_t lc, void* D, cublasLtMatrixLayout_t ld,
                              const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspace_bytes, cudaStream_t) {
  constexpr const char* kCall = "cublasLtMatmul";
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const Desc& op = *desc(dsc);
  const Layout &a = *layout(la), &b = *layout(lb), &c = *layout(lc), &d = *layout(ld);
  if (op.compute != CUBLAS_COMPUTE_32F || op.scale != CUDA_R_32F || algo == nullptr ||
      (op.epilogue != CUBLASLT_EPILOGUE_DEFAULT && op.epilogue != CUBLASLT_EPILOGUE_BIAS))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool ta = op.trans_a != CUBLAS_OP_N, tb = op.trans_b != CUBLAS_OP_N;
  const int64_t m = d.rows, n = d.cols, k = ta ? a.rows : a.cols;
  // Shapes: op(A) m x k, op(B) k x n, C like D.
  if ((ta ? a.cols : a.rows) != static_cast<uint64_t>(m) ||
      (tb ? b.cols : b.rows) != static_cast<uint64_t>(k) ||
      (tb ? b.rows : b.cols) != static_cast<uint64_t>(n) || c.rows != d.rows || c.cols != d.cols ||
      c.type != d.type || a.type != b.type) {
    std::fprintf(stderr, "emu: cublasLtMatmul: inconsistent layouts\n");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const float fb = *static_cast<const float*>(beta);
  const bool bias = op.epilogue == CUBLASLT_EPILOGUE_BIAS;
  if (!valid(kCall, "A", A, a.type, a.rows, a.cols, a.ld) ||
      !valid(kCall, "B", B, b.type, b.rows, b.cols, b.ld) ||
      (fb != 0 && !valid(kCall, "C", C, c.type, c.rows, c.cols, c.ld)) ||
      !valid(kCall, "D", D, d.type, d.rows, d.cols, d.ld) ||
      (bias && !valid(kCall, "bias", op.bias, d.type, m, 1, std::max<int64_t>(m, 1))) ||
      (workspace_bytes > 0 && !emu::is_device_range(workspace, workspace_bytes)))
    return CUBLAS_STATUS_INVALID_VALUE;
  const int need = static_cast<int>(algo->data[0]);
  for (const void* p : {A, B, C, static_cast<const void*>(D), bias ? op.bias : nullptr})
    if (p != nullptr && alignment(p) < need) {
      std::fprintf(stderr,
                   "emu: cublasLtMatmul: %p is less aligned than the %d bytes the "
                   "algorithm was chosen for\n",
                   p, need);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha), {A, a.type, a.ld}, {B, b.type, b.ld}, fb,
       {C, c.type, c.ld}, D, d.type, d.ld, bias ? op.bias : nullptr);
  return CUBLAS_STATUS_SUCCESS;
}
