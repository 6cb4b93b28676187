// Status and StatusOr: errors that cross a boundary (files, configs, user input).
//
// Inside the library an impossible state is a bug and throws grove::Error via GROVE_CHECK.
// At a boundary (a config file, a checkpoint, a corpus on disk) the caller gets a Status whose
// message names the field or file and says how to fix it; nothing is half-done on failure.
#pragma once

#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace grove {

class Status {
 public:
  Status() = default;  // OK
  static Status Ok() { return Status(); }
  static Status Error(std::string message) { return Status(std::move(message)); }

  bool ok() const { return !message_.has_value(); }
  const std::string& message() const {
    static const std::string kOk = "OK";
    return message_ ? *message_ : kOk;
  }

 private:
  explicit Status(std::string message) : message_(std::move(message)) {}
  std::optional<std::string> message_;
};

// Holds either a value or a non-OK Status.
template <typename T>
class StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  StatusOr(Status status) : status_(std::move(status)) {
    if (status_.ok()) throw std::logic_error("StatusOr constructed from an OK Status");
  }
  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

// An internal invariant was broken (a bug, or an API misuse that cannot be reported as Status).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
// Collects a streamed message and throws when destroyed; used by GROVE_CHECK.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* cond) {
    os_ << file << ":" << line << ": check failed: " << cond << " ";
  }
  [[noreturn]] ~CheckFailure() noexcept(false) { throw Error(os_.str()); }
  template <typename V>
  CheckFailure& operator<<(const V& v) {
    os_ << v;
    return *this;
  }

 private:
  std::ostringstream os_;
};
}  // namespace detail

}  // namespace grove

// GROVE_CHECK(cond) << "context"; throws grove::Error naming file, line and condition.
#define GROVE_CHECK(cond) \
  if (cond) {             \
  } else                  \
    ::grove::detail::CheckFailure(__FILE__, __LINE__, #cond)

// Returns early from a Status-returning function when `expr` is not OK.
#define GROVE_RETURN_IF_ERROR(expr) \
  do {                              \
    ::grove::Status _st = (expr);   \
    if (!_st.ok()) return _st;      \
  } while (0)
