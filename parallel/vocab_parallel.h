// Vocabulary-parallel embedding and cross-entropy (Megatron-LM): the [V, h] embedding table and
// LM head are split by vocabulary rows over the TP group, so no rank ever holds [N, V] logits.
//
// Rank r owns vocabulary ids [r·V/t, (r+1)·V/t).
// Embedding: each rank looks up the tokens it owns and writes zeros for the others; the sum over
// the TP group (f̄, or ḡ into the sequence region under SP) is the full embedding.
// Cross-entropy over logits [N, V/t]: the global max (all-reduce MAX), then one all-reduce SUM of
// the packed [exp-sum | target logit] per row give lse and the loss on every TP rank.
#pragma once

#include <cstdint>

#include "comm/communicator.h"

namespace grove::parallel {

class VocabParallelEmbedding {
 public:
  VocabParallelEmbedding(int vocab, int dim, const comm::Communicator* tp);
  int vocab_start() const { return start_; }
  int local_vocab() const { return local_; }
  // partial[N, h]: this rank's rows for the tokens it owns, zero elsewhere (a partial sum).
  void forward(float* partial, const int32_t* tokens, const float* table, int N) const;
  // dtable += dout[n] for the tokens this rank owns; dout is the full [N, h] gradient.
  void backward(float* dtable, const float* dout, const int32_t* tokens, int N) const;

 private:
  int dim_, start_, local_;
};

// losses[N] and lse[N] (identical on every TP rank) from this rank's logits [N, V/t]. A target
// < 0 is ignored (loss 0). `scratch` holds 3N floats.
void vocab_parallel_cross_entropy_forward(comm::Communicator* tp, float* losses, float* lse,
                                          const float* logits, const int32_t* targets, int N,
                                          int local_vocab, int vocab_start, float* scratch);
// dlogits[n, j] = (softmax_j - onehot(target)_j) · dloss[n] on this rank's block; may alias logits.
void vocab_parallel_cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                                           const int32_t* targets, const float* dloss, int N,
                                           int local_vocab, int vocab_start);

}  // namespace grove::parallel
