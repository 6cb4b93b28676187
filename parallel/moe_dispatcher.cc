// The plain all-to-all dispatcher; see moe_dispatcher.h for the stages and the legend.
#include "parallel/moe_dispatcher.h"

#include <cstring>

namespace grove::parallel {
namespace {

template <typename V>
void grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

AllToAllDispatcher::AllToAllDispatcher(int num_experts, int h, comm::Communicator* ep_group)
    : xch_(num_experts, h, ep_group),
      E_(num_experts),
      h_(h),
      send_count_(num_experts),
      recv_count_(num_experts) {}

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
  stats_.bytes_sent +=
      xch_.exchange_counts(send_count_.data(), recv_count_.data(), 1, &stats_.dispatch_a2a_ms);
  xch_.set_layout(send_count_.data(), recv_count_.data());
  (void)x;  // the plain dispatcher sends every token as it is
}

ExpertBatch AllToAllDispatcher::dispatch(const float* x) {
  grow(send_, size_t(S_) * h_);
  grow(recv_, size_t(xch_.received_rows()) * h_);
  grow(expert_in_, size_t(xch_.received_rows()) * h_);
#pragma omp parallel for schedule(static) if (S_ >= 256)
  for (int64_t i = 0; i < S_; ++i) {
    std::memcpy(send_.data() + i * h_, x + (perm_[i] / k_) * h_, sizeof(float) * h_);
  }
  stats_.bytes_sent += xch_.send(send_.data(), recv_.data(), &stats_.dispatch_a2a_ms);
  xch_.to_expert_layout(expert_in_.data(), recv_.data());
  return ExpertBatch{expert_in_.data(), xch_.received_rows(), xch_.expert_offsets()};
}

void AllToAllDispatcher::combine(float* out, const float* y) {
  grow(recv_, size_t(xch_.received_rows()) * h_);
  grow(returned_, size_t(S_) * h_);
  xch_.from_expert_layout(recv_.data(), y);
  stats_.bytes_sent += xch_.send_back(recv_.data(), returned_.data(), &stats_.combine_a2a_ms);
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
  grow(recv_, size_t(xch_.received_rows()) * h_);
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
  stats_.bytes_sent += xch_.send(send_.data(), recv_.data(), &stats_.backward_a2a_ms);
  xch_.to_expert_layout(dy, recv_.data());
}

void AllToAllDispatcher::dispatch_backward(float* din, const float* dx) {
  grow(send_, size_t(S_) * h_);
  grow(recv_, size_t(xch_.received_rows()) * h_);
  xch_.from_expert_layout(recv_.data(), dx);
  stats_.bytes_sent += xch_.send_back(recv_.data(), send_.data(), &stats_.backward_a2a_ms);
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
  return sizeof(float) * (size_t(A) + size_t(xch_.received_rows() + S_) * h_) +
         sizeof(int64_t) * size_t(S_ + A);
}

}  // namespace grove::parallel
