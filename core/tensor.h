// Tensor: a shape, a dtype, a device and owning storage. Nothing more.
//
// Grove has no autograd: layers keep named Tensors for parameters, gradients and activations and
// call kernels on raw pointers with explicit sizes. Tensor only owns memory (RAII) and knows its
// size, so that memory use is countable (see model/activation stash).
//
// Invariants: storage is contiguous, row-major; numel() * dtype_size(dtype) == bytes(); a
// default-constructed Tensor is empty (numel 0, no storage). Copying a Tensor shares storage;
// use clone() for a deep copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace grove {

enum class DType : uint8_t { kF32, kF64, kBF16, kI32, kI64, kU8 };
enum class Device : uint8_t { kCPU, kCUDA };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);
// True when this build was compiled with CUDA support and a CUDA device is present.
bool cuda_device_available();

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kF32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::kF64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kI32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::kI64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::kU8;
}

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised memory of the given shape. Host memory is 64-byte aligned.
  static Tensor empty(Shape shape, DType dtype = DType::kF32, Device device = Device::kCPU);
  static Tensor zeros(Shape shape, DType dtype = DType::kF32, Device device = Device::kCPU);

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return storage_ ? shape_numel(shape_) : 0; }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool defined() const { return storage_ != nullptr; }

  void* raw() { return storage_ ? static_cast<char*>(storage_->ptr) + offset_ : nullptr; }
  const void* raw() const {
    return storage_ ? static_cast<const char*>(storage_->ptr) + offset_ : nullptr;
  }
  template <typename T>
  T* data() {
    check_type(dtype_of<T>());
    return static_cast<T*>(raw());
  }
  template <typename T>
  const T* data() const {
    check_type(dtype_of<T>());
    return static_cast<const T*>(raw());
  }

  // Sets every byte to zero (works on host and device).
  void zero();
  // Deep copy, optionally to another device.
  Tensor clone() const;
  Tensor to(Device device) const;
  // Same storage, new shape with the same numel.
  Tensor reshape(Shape shape) const;
  // A view of `shape` starting `offset` elements into this tensor's storage (same dtype, same
  // device); it keeps the storage alive. The view must lie inside this tensor.
  Tensor view(int64_t offset, Shape shape) const;
  // Copies src's bytes into this tensor (same dtype and numel; any two devices).
  void copy_from(const Tensor& src);

 private:
  struct Storage {
    void* ptr = nullptr;
    size_t bytes = 0;
    Device device = Device::kCPU;
    ~Storage();
  };
  void check_type(DType want) const;

  Shape shape_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes into storage_ (views)
};

}  // namespace grove
