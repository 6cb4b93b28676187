// Vocabulary-parallel embedding and cross-entropy (Megatron-LM): the [V, h] embedding table and
// LM head are split by vocabulary rows over the TP group, so no rank ever holds [N, V] logits.
// Templates over the kernel backend B (kernels/backend.h): every buffer is B's, the kernels are
// B's vocabulary-shard kernels and the collectives run as parallel/backend_collectives.h says.
//
// Rank r owns vocabulary ids [r·V/t, (r+1)·V/t).
// Embedding: each rank looks up the tokens it owns and writes zeros for the others; the sum over
// the TP group (f̄, or ḡ into the sequence region under SP) is the full embedding.
// Cross-entropy over logits [N, V/t]: the global max (all-reduce MAX), then one all-reduce SUM of
// the packed [exp-sum | target logit] per row give lse and the loss on every TP rank.
#pragma once

#include <cstdint>

#include "comm/communicator.h"
#include "core/status.h"
#include "parallel/backend_collectives.h"
#include "parallel/tensor_parallel.h"

namespace grove::parallel {

template <class B>
class VocabParallelEmbedding {
 public:
  using T = typename B::T;
  VocabParallelEmbedding(int vocab, int dim, const comm::Communicator* tp) : dim_(dim) {
    const int t = tp_size(tp);
    GROVE_CHECK(vocab % t == 0) << "vocab-parallel embedding: tp=" << t
                                << " does not divide the vocabulary of " << vocab;
    local_ = vocab / t;
    start_ = tp_rank(tp) * local_;
  }
  int vocab_start() const { return start_; }
  int local_vocab() const { return local_; }
  // partial[N, h]: this rank's rows for the tokens it owns, zero elsewhere (a partial sum).
  // tokens [N] in B's memory, table [V/t, h] this rank's rows.
  void forward(T* partial, const int32_t* tokens, const T* table, int N) const {
    B::embedding_forward_shard(partial, tokens, table, N, dim_, start_, local_);
  }
  // dtable += dout[n] for the tokens this rank owns; dout is the full [N, h] gradient.
  void backward(float* dtable, const T* dout, const int32_t* tokens, int N) const {
    B::embedding_backward_shard(dtable, dout, tokens, N, dim_, start_, local_);
  }

 private:
  int dim_, start_, local_;
};

// losses[N] and lse[N] (identical on every TP rank) from this rank's logits [N, V/t]. A target
// < 0 is ignored (loss 0). targets [N] in B's memory; `scratch` holds 3N floats of B's memory.
template <class B>
void vocab_parallel_cross_entropy_forward(comm::Communicator* tp, float* losses, float* lse,
                                          const typename B::T* logits, const int32_t* targets,
                                          int N, int local_vocab, int vocab_start, float* scratch) {
  float* row_max = scratch;     // [N]
  float* packed = scratch + N;  // [2N]: exp-sum | target logit
  B::cross_entropy_shard_max(row_max, logits, N, local_vocab);
  all_reduce<B>(tp, row_max, N, DType::kF32, comm::ReduceOp::kMax);
  B::cross_entropy_shard_sums(packed, logits, row_max, targets, N, local_vocab, vocab_start);
  all_reduce<B>(tp, packed, 2 * int64_t(N), DType::kF32, comm::ReduceOp::kSum);
  B::cross_entropy_shard_finish(losses, lse, row_max, packed, targets, N);
}

// dlogits[n, j] = (softmax_j - onehot(target)_j) · dloss[n] on this rank's block; may alias
// logits. No communication: lse is already the global one.
template <class B>
void vocab_parallel_cross_entropy_backward(typename B::T* dlogits, const typename B::T* logits,
                                           const float* lse, const int32_t* targets,
                                           const float* dloss, int N, int local_vocab,
                                           int vocab_start) {
  B::cross_entropy_shard_backward(dlogits, logits, lse, targets, dloss, N, local_vocab,
                                  vocab_start);
}

}  // namespace grove::parallel
