// The plain all-to-all dispatcher; see moe_dispatcher.h for the stages and the legend.
#include "parallel/moe_dispatcher.h"

#include <chrono>
#include <cstring>

namespace grove::parallel {
namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

template <typename V>
void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

AllToAllDispatcher::AllToAllDispatcher(int num_experts, int h, comm::Communicator* ep_group)
    : ep_(ep_group != nullptr && ep_group->size() > 1 ? ep_group : nullptr),
      ep_size_(ep_ ? ep_->size() : 1),
      ep_rank_(ep_ ? ep_->rank() : 0),
      E_(num_experts),
      E_l_(num_experts / ep_size_),
      h_(h),
      send_count_(num_experts),
      recv_count_(num_experts),
      rows_to_(ep_size_),
      rows_from_(ep_size_),
      recv_off_(num_experts),
      expert_off_(num_experts),
      offset_(E_l_ + 1) {
  GROVE_CHECK(num_experts % ep_size_ == 0)
      << "num_experts=" << num_experts << " is not divisible by ep=" << ep_size_;
}

void AllToAllDispatcher::preprocess(const Routing& r, const float* x) {
  T_ = r.T;
  k_ = r.k;
  const int64_t A = int64_t(T_) * k_;
  weight_.assign(r.weight.begin(), r.weight.begin() + A);
  // Count, then permute by a counting sort on the expert id: rows to expert e form one block,
  // in (token, slot) order; blocks in expert order are blocks in destination-rank order.
  std::fill(send_count_.begin(), send_count_.end(), 0);
  for (int64_t a = 0; a < A; ++a) {
    if (r.kept[a]) ++send_count_[r.expert[a]];
  }
  std::vector<int64_t> cursor(E_);
  S_ = 0;
  for (int e = 0; e < E_; ++e) {
    cursor[e] = S_;
    S_ += send_count_[e];
  }
  perm_.resize(S_);
  pos_.resize(A);
  for (int64_t a = 0; a < A; ++a) {
    if (!r.kept[a]) {
      pos_[a] = -1;
      continue;
    }
    const int64_t i = cursor[r.expert[a]]++;
    perm_[i] = a;
    pos_[a] = i;
  }
  // Block r of send_count_ holds the counts for rank r's experts: one all_to_all of E_l each.
  if (ep_) {
    const auto t0 = std::chrono::steady_clock::now();
    ep_->all_to_all(send_count_.data(), recv_count_.data(), E_l_, DType::kI64);
    stats_.dispatch_a2a_ms += ms_since(t0);
    stats_.bytes_sent += int64_t(sizeof(int64_t)) * E_l_ * (ep_size_ - 1);
  } else {
    recv_count_ = send_count_;
  }
  // Layouts: received = (source s, local expert l) blocks; expert = (l, s) blocks.
  R_ = 0;
  for (int s = 0; s < ep_size_; ++s) {
    rows_to_[s] = rows_from_[s] = 0;
    for (int l = 0; l < E_l_; ++l) {
      rows_to_[s] += send_count_[s * E_l_ + l];
      recv_off_[s * E_l_ + l] = R_;
      R_ += recv_count_[s * E_l_ + l];
      rows_from_[s] += recv_count_[s * E_l_ + l];
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
  (void)x;  // the plain dispatcher sends every token as it is
}

void AllToAllDispatcher::exchange(const float* in, const std::vector<int64_t>& send_rows,
                                  float* out, const std::vector<int64_t>& recv_rows, double* ms) {
  if (!ep_) {
    if (in != out && send_rows[0] > 0) std::memcpy(out, in, sizeof(float) * send_rows[0] * h_);
    return;
  }
  std::vector<int64_t> sc(ep_size_), rc(ep_size_);
  for (int r = 0; r < ep_size_; ++r) {
    sc[r] = send_rows[r] * h_;
    rc[r] = recv_rows[r] * h_;
    if (r != ep_rank_) stats_.bytes_sent += int64_t(sizeof(float)) * sc[r];
  }
  const auto t0 = std::chrono::steady_clock::now();
  ep_->all_to_all_v(in, sc, out, rc, DType::kF32);
  *ms += ms_since(t0);
}

void AllToAllDispatcher::to_expert_layout(float* dst, const float* src) const {
  for (int b = 0; b < ep_size_ * E_l_; ++b) {
    const int64_t n = recv_count_[b];
    if (n > 0)
      std::memcpy(dst + expert_off_[b] * h_, src + recv_off_[b] * h_, sizeof(float) * n * h_);
  }
}

void AllToAllDispatcher::from_expert_layout(float* dst, const float* src) const {
  for (int b = 0; b < ep_size_ * E_l_; ++b) {
    const int64_t n = recv_count_[b];
    if (n > 0)
      std::memcpy(dst + recv_off_[b] * h_, src + expert_off_[b] * h_, sizeof(float) * n * h_);
  }
}

ExpertBatch AllToAllDispatcher::dispatch(const float* x) {
  grow(send_, size_t(S_) * h_);
  grow(recv_, size_t(R_) * h_);
  grow(expert_in_, size_t(R_) * h_);
#pragma omp parallel for schedule(static) if (S_ >= 256)
  for (int64_t i = 0; i < S_; ++i) {
    std::memcpy(send_.data() + i * h_, x + (perm_[i] / k_) * h_, sizeof(float) * h_);
  }
  exchange(send_.data(), rows_to_, recv_.data(), rows_from_, &stats_.dispatch_a2a_ms);
  to_expert_layout(expert_in_.data(), recv_.data());
  return ExpertBatch{expert_in_.data(), R_, offset_};
}

void AllToAllDispatcher::combine(float* out, const float* y) {
  grow(recv_, size_t(R_) * h_);
  grow(returned_, size_t(S_) * h_);
  from_expert_layout(recv_.data(), y);
  exchange(recv_.data(), rows_from_, returned_.data(), rows_to_, &stats_.combine_a2a_ms);
  // Unpermute and weight; per token the slots are summed in slot order (j = 0..k-1).
#pragma omp parallel for schedule(static) if (T_ >= 256)
  for (int t = 0; t < T_; ++t) {
    float* o = out + int64_t(t) * h_;
    std::memset(o, 0, sizeof(float) * h_);
    for (int j = 0; j < k_; ++j) {
      const int64_t a = int64_t(t) * k_ + j, i = pos_[a];
      if (i < 0) continue;
      const float w = weight_[a];
      const float* yr = returned_.data() + i * h_;
      for (int c = 0; c < h_; ++c) o[c] += w * yr[c];
    }
  }
}

void AllToAllDispatcher::combine_backward(float* dy, float* dweight, const float* dout) {
  grow(send_, size_t(S_) * h_);
  grow(recv_, size_t(R_) * h_);
  // dw_{t,j} = dout_t · y_{t,j};  d y_{t,j} = w_{t,j} · dout_t, in permuted order.
#pragma omp parallel for schedule(static) if (T_ >= 256)
  for (int t = 0; t < T_; ++t) {
    const float* g = dout + int64_t(t) * h_;
    for (int j = 0; j < k_; ++j) {
      const int64_t a = int64_t(t) * k_ + j, i = pos_[a];
      if (i < 0) {
        dweight[a] = 0;
        continue;
      }
      const float* yr = returned_.data() + i * h_;
      float* s = send_.data() + i * h_;
      const float w = weight_[a];
      double dot = 0;
      for (int c = 0; c < h_; ++c) {
        dot += double(g[c]) * yr[c];
        s[c] = w * g[c];
      }
      dweight[a] = float(dot);
    }
  }
  exchange(send_.data(), rows_to_, recv_.data(), rows_from_, &stats_.backward_a2a_ms);
  to_expert_layout(dy, recv_.data());
}

void AllToAllDispatcher::dispatch_backward(float* din, const float* dx) {
  grow(send_, size_t(S_) * h_);
  grow(recv_, size_t(R_) * h_);
  from_expert_layout(recv_.data(), dx);
  exchange(recv_.data(), rows_from_, send_.data(), rows_to_, &stats_.backward_a2a_ms);
#pragma omp parallel for schedule(static) if (T_ >= 256)
  for (int t = 0; t < T_; ++t) {
    float* d = din + int64_t(t) * h_;
    for (int j = 0; j < k_; ++j) {
      const int64_t i = pos_[int64_t(t) * k_ + j];
      if (i < 0) continue;
      const float* g = send_.data() + i * h_;
      for (int c = 0; c < h_; ++c) d[c] += g[c];
    }
  }
}

size_t AllToAllDispatcher::stash_bytes() const {
  const int64_t A = int64_t(T_) * k_;
  return sizeof(float) * (size_t(A) + size_t(R_ + S_) * h_) + sizeof(int64_t) * size_t(S_ + A);
}

}  // namespace grove::parallel
