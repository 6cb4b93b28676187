#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#ifdef GROVE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace grove {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF64:
      return 8;
    case DType::kBF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
    case DType::kU8:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF64:
      return "f64";
    case DType::kBF16:
      return "bf16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
    case DType::kU8:
      return "u8";
  }
  return "?";
}

const char* device_name(Device device) {
  return device == Device::kCPU ? "cpu" : "cuda";
}

bool cuda_device_available() {
#ifdef GROVE_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
#else
  return false;
#endif
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

Tensor::Storage::~Storage() {
  if (!ptr) return;
  if (device == Device::kCPU) {
    std::free(ptr);
  } else {
#ifdef GROVE_HAVE_CUDA
    cudaFree(ptr);
#endif
  }
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  for (int64_t d : shape) GROVE_CHECK(d >= 0) << "negative dimension in shape " << shape_str(shape);
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->device = device;
  size_t bytes = t.bytes();
  t.storage_->bytes = bytes;
  if (bytes == 0) return t;
  if (device == Device::kCPU) {
    size_t rounded = (bytes + 63) / 64 * 64;
    t.storage_->ptr = std::aligned_alloc(64, rounded);
    GROVE_CHECK(t.storage_->ptr) << "out of host memory allocating " << bytes << " bytes";
  } else {
#ifdef GROVE_HAVE_CUDA
    cudaError_t err = cudaMalloc(&t.storage_->ptr, bytes);
    GROVE_CHECK(err == cudaSuccess)
        << "cudaMalloc of " << bytes << " bytes: " << cudaGetErrorString(err);
#else
    GROVE_CHECK(false) << "this build has no CUDA support (configure with GROVE_CUDA=ON)";
#endif
  }
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero();
  return t;
}

void Tensor::zero() {
  if (!storage_ || bytes() == 0) return;
  if (device_ == Device::kCPU) {
    std::memset(raw(), 0, bytes());
  } else {
#ifdef GROVE_HAVE_CUDA
    cudaError_t err = cudaMemset(raw(), 0, bytes());
    GROVE_CHECK(err == cudaSuccess) << "cudaMemset: " << cudaGetErrorString(err);
#endif
  }
}

Tensor Tensor::clone() const {
  return to(device_);
}

Tensor Tensor::to(Device device) const {
  Tensor out = empty(shape_, dtype_, device);
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  GROVE_CHECK(src.dtype_ == dtype_ && src.numel() == numel())
      << "copy_from: " << dtype_name(src.dtype_) << " " << shape_str(src.shape_) << " into "
      << dtype_name(dtype_) << " " << shape_str(shape_);
  if (bytes() == 0) return;
  if (src.device_ == Device::kCPU && device_ == Device::kCPU) {
    std::memcpy(raw(), src.raw(), bytes());
    return;
  }
#ifdef GROVE_HAVE_CUDA
  cudaMemcpyKind kind = src.device_ == Device::kCPU ? cudaMemcpyHostToDevice
                        : device_ == Device::kCPU   ? cudaMemcpyDeviceToHost
                                                    : cudaMemcpyDeviceToDevice;
  cudaError_t err = cudaMemcpy(raw(), src.raw(), bytes(), kind);
  GROVE_CHECK(err == cudaSuccess) << "cudaMemcpy: " << cudaGetErrorString(err);
#else
  GROVE_CHECK(false) << "this build has no CUDA support (configure with GROVE_CUDA=ON)";
#endif
}

Tensor Tensor::view(int64_t offset, Shape shape) const {
  GROVE_CHECK(storage_ != nullptr) << "view of an undefined tensor";
  const size_t es = dtype_size(dtype_);
  const int64_t n = shape_numel(shape);
  GROVE_CHECK(offset >= 0 && n >= 0 && offset + n <= numel())
      << "view of " << n << " elements at " << offset << " outside " << shape_str(shape_);
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.offset_ = offset_ + size_t(offset) * es;
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  GROVE_CHECK(shape_numel(shape) == numel())
      << "reshape " << shape_str(shape_) << " -> " << shape_str(shape) << " changes numel";
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

void Tensor::check_type(DType want) const {
  GROVE_CHECK(want == dtype_) << "tensor holds " << dtype_name(dtype_) << ", accessed as "
                              << dtype_name(want);
}

}  // namespace grove
