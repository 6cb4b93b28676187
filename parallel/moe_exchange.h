// ExpertExchange: the all-to-all plumbing every MoE dispatcher shares (plain and LSH-compressed):
// the count exchange, the row layouts and the row all-to-alls over the expert-parallel group.
//
// Legend: E experts, ep ranks, E_l = E / ep local experts, h row width.
// Rows leave a rank in expert order (hence destination-rank order). They arrive in the
// "received" layout, (source rank s, local expert l) blocks, and the experts read them in the
// "expert" layout, (l, s) blocks, so each local expert's rows are contiguous.
// Null or size-one groups communicate nothing (copies only).
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"

namespace grove::parallel {

class ExpertExchange {
 public:
  // num_experts % ep size == 0.
  ExpertExchange(int num_experts, int h, comm::Communicator* ep_group);

  comm::Communicator* group() const { return ep_; }
  int ep_size() const { return ep_size_; }
  int ep_rank() const { return ep_rank_; }
  int local_experts() const { return E_l_; }

  // all_to_all of `per_expert` int64 values per expert: out [E, per_expert] (block s = rank s's
  // experts) → in [ep, E_l, per_expert]. Adds its time to *ms; returns bytes sent to others.
  int64_t exchange_counts(const int64_t* out, int64_t* in, int per_expert, double* ms);

  // The layouts of one step from the rows sent to each expert [E] and received from each
  // (source s, local expert l) [ep · E_l].
  void set_layout(const int64_t* send_rows, const int64_t* recv_rows);
  int64_t received_rows() const { return R_; }
  // [E_l + 1] starts of each local expert's block in the expert layout.
  const std::vector<int64_t>& expert_offsets() const { return offset_; }

  // Rows in send order [S, h] → received layout [R, h] (forward direction), and back.
  // Each returns the bytes sent to other ranks and adds its time to *ms.
  int64_t send(const float* in, float* out, double* ms);
  int64_t send_back(const float* in, float* out, double* ms);

  // Received layout ↔ expert layout.
  void to_expert_layout(float* dst, const float* src) const;
  void from_expert_layout(float* dst, const float* src) const;

 private:
  int64_t exchange(const float* in, const std::vector<int64_t>& send_rows, float* out,
                   const std::vector<int64_t>& recv_rows, double* ms);

  comm::Communicator* ep_;
  int ep_size_, ep_rank_, E_l_, h_;
  int64_t R_ = 0;
  std::vector<int64_t> recv_count_;             // [ep, E_l]
  std::vector<int64_t> rows_to_, rows_from_;    // [ep]
  std::vector<int64_t> recv_off_, expert_off_;  // [ep, E_l]: block starts in both layouts
  std::vector<int64_t> offset_;                 // [E_l + 1]
};

}  // namespace grove::parallel
