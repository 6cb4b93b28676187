#include "parallel/moe_exchange.h"

#include <chrono>
#include <cstring>

#include "core/status.h"

namespace grove::parallel {
namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

ExpertExchange::ExpertExchange(int num_experts, int h, comm::Communicator* ep_group)
    : ep_(ep_group != nullptr && ep_group->size() > 1 ? ep_group : nullptr),
      ep_size_(ep_ ? ep_->size() : 1),
      ep_rank_(ep_ ? ep_->rank() : 0),
      E_l_(num_experts / ep_size_),
      h_(h),
      recv_count_(num_experts),
      rows_to_(ep_size_),
      rows_from_(ep_size_),
      recv_off_(num_experts),
      expert_off_(num_experts),
      offset_(E_l_ + 1) {
  GROVE_CHECK(num_experts % ep_size_ == 0)
      << "num_experts=" << num_experts << " is not divisible by ep=" << ep_size_;
}

int64_t ExpertExchange::exchange_counts(const int64_t* out, int64_t* in, int per_expert,
                                        double* ms) {
  const int64_t n = int64_t(E_l_) * per_expert;
  if (!ep_) {
    std::memcpy(in, out, sizeof(int64_t) * n);
    return 0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  ep_->all_to_all(out, in, n, DType::kI64);
  *ms += ms_since(t0);
  return int64_t(sizeof(int64_t)) * n * (ep_size_ - 1);
}

void ExpertExchange::set_layout(const int64_t* send_rows, const int64_t* recv_rows) {
  R_ = 0;
  for (int s = 0; s < ep_size_; ++s) {
    rows_to_[s] = rows_from_[s] = 0;
    for (int l = 0; l < E_l_; ++l) {
      const int b = s * E_l_ + l;
      recv_count_[b] = recv_rows[b];
      rows_to_[s] += send_rows[b];
      recv_off_[b] = R_;
      R_ += recv_rows[b];
      rows_from_[s] += recv_rows[b];
    }
  }
  int64_t off = 0;
  for (int l = 0; l < E_l_; ++l) {
    offset_[l] = off;
    for (int s = 0; s < ep_size_; ++s) {
      expert_off_[s * E_l_ + l] = off;
      off += recv_count_[s * E_l_ + l];
    }
  }
  offset_[E_l_] = off;
}

int64_t ExpertExchange::send(const float* in, float* out, double* ms) {
  return exchange(in, rows_to_, out, rows_from_, ms);
}

int64_t ExpertExchange::send_back(const float* in, float* out, double* ms) {
  return exchange(in, rows_from_, out, rows_to_, ms);
}

int64_t ExpertExchange::exchange(const float* in, const std::vector<int64_t>& send_rows, float* out,
                                 const std::vector<int64_t>& recv_rows, double* ms) {
  if (!ep_) {
    if (in != out && send_rows[0] > 0) std::memcpy(out, in, sizeof(float) * send_rows[0] * h_);
    return 0;
  }
  std::vector<int64_t> sc(ep_size_), rc(ep_size_);
  int64_t bytes = 0;
  for (int r = 0; r < ep_size_; ++r) {
    sc[r] = send_rows[r] * h_;
    rc[r] = recv_rows[r] * h_;
    if (r != ep_rank_) bytes += int64_t(sizeof(float)) * sc[r];
  }
  const auto t0 = std::chrono::steady_clock::now();
  ep_->all_to_all_v(in, sc, out, rc, DType::kF32);
  *ms += ms_since(t0);
  return bytes;
}

void ExpertExchange::to_expert_layout(float* dst, const float* src) const {
  for (int b = 0; b < ep_size_ * E_l_; ++b) {
    const int64_t n = recv_count_[b];
    if (n > 0)
      std::memcpy(dst + expert_off_[b] * h_, src + recv_off_[b] * h_, sizeof(float) * n * h_);
  }
}

void ExpertExchange::from_expert_layout(float* dst, const float* src) const {
  for (int b = 0; b < ep_size_ * E_l_; ++b) {
    const int64_t n = recv_count_[b];
    if (n > 0)
      std::memcpy(dst + recv_off_[b] * h_, src + expert_off_[b] * h_, sizeof(float) * n * h_);
  }
}

}  // namespace grove::parallel
