// Transformer: a decoder-only language model with explicit forward and backward (DESIGN.md §3).
//
//   x = wte[tokens]                                   [N, h]   N = s*b, rows ordered (s, b)
//   for each block:
//     x2 = x  + Wo · attention(rope(Wq·rms1(x)), rope(Wk·rms1(x)), Wv·rms1(x))
//     x  = x2 + Wdown · (silu(Wgate·rms2(x2)) * Wup·rms2(x2))
//   logits = lm_head · rmsf(x);  loss = mean over valid targets of cross-entropy
//
// All buffers (stash, gradient scratch) are allocated in the constructor for a fixed (b, s), so
// memory is known before step 0. Gradients ACCUMULATE into grads() across backward calls
// (gradient accumulation); call zero_grads() at the start of each optimizer step.
//
// Parallelism (DESIGN.md §5): with a ParallelGrid the block's projections are column/row
// parallel over the TP group (heads and SwiGLU columns split), the embedding and LM head are
// vocabulary-parallel, and with sequence parallelism the residual stream and norms live on
// [s/t, b, h] (g before each column-parallel input, ḡ after each row-parallel output). Gradients
// of the replicated norm weights are SUM-all-reduced over TP under SP, and all gradients are
// SUM-all-reduced over DP in per-layer buckets started as soon as a block's backward is done.
// The loss is normalised by the number of valid targets of the whole data-parallel batch, so a
// layout's gradients equal the single-rank model's on the same global batch.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "model/activations.h"
#include "model/config.h"
#include "model/weights.h"
#include "parallel/cp_attention.h"
#include "parallel/grid.h"
#include "parallel/moe_layer.h"
#include "parallel/tensor_parallel.h"
#include "parallel/vocab_parallel.h"
#include "parallel/zigzag.h"

namespace grove {

struct ModelParallel {
  const parallel::ParallelGrid* grid = nullptr;  // null: single process
  bool sequence_parallel = false;                // SP on top of TP (needs seq % tp == 0)
  parallel::CpAttention cp_attention = parallel::CpAttention::kTree;  // with cp > 1
};

class Transformer {
 public:
  // `config` must be valid (ModelConfig::Validate) and seq <= config.max_seq_len. `batch` is
  // this data-parallel rank's micro-batch, `seq` the full sequence length; with context
  // parallelism (cp > 1) this rank holds the zigzag shard of seq/cp positions (chunks r and
  // 2cp−1−r of 2cp, for causal load balance) and attention runs across the CP group
  // (tree or ring attention); everything else is local to the shard.
  Transformer(const ModelConfig& config, int batch, int seq, Recompute mode,
              ModelParallel parallel = {});

  const ModelConfig& config() const { return config_; }
  int batch() const { return b_; }
  int seq() const { return s_ * cp_size_; }
  Recompute recompute() const { return mode_; }
  Weights& params() { return params_; }
  const Weights& params() const { return params_; }
  Weights& grads() { return grads_; }

  // tokens, targets: [seq, b] row-major (row = s_idx * b + b_idx), this DP rank's columns of the
  // global batch (identical on every TP and CP rank; each CP rank takes its zigzag shard). A target
  // < 0 is ignored. Returns the mean loss over the valid targets of the whole data-parallel batch.
  float forward(const int32_t* tokens, const int32_t* targets);
  // Backward of the last forward; d(loss) is scaled by `loss_scale` (1/accumulation steps).
  // `finalize` (the last micro-batch of a step) also reduces the gradients over TP (norm weights
  // under SP) and DP, so grads() then hold the gradient of the global loss.
  void backward(float loss_scale = 1.0f, bool finalize = true);
  void zero_grads() { grads_.zero(); }

  // Logits of the last forward, [N, V]; valid until backward() overwrites them.
  const Tensor& logits() const { return stash_.logits; }
  ActivationReport activation_report() const;
  // Approximate FLOPs of one forward+backward over b*s tokens (matmuls and attention).
  double flops_per_step() const;

  // Mixture of experts: the sum over MoE layers of aux + z loss (already times their
  // coefficients) of the last forward — added to the training objective by backward(), not to
  // the returned cross-entropy — and each MoE layer's metrics (null entries: dense blocks).
  float moe_loss() const { return moe_loss_; }
  std::vector<parallel::MoeMetrics> moe_metrics() const;
  // The MoE layer of block l, or null for a dense block (e.g. to swap its dispatcher).
  parallel::MoeLayer* moe_layer(int l) { return moe_[l].get(); }

 private:
  void block_forward(int l, BlockActivations& a);
  void block_backward(int l, BlockActivations& a);
  // The normalised activation [N, h] a column-parallel layer reads: the stash itself, or under
  // SP the all-gather (g) of its [R, h] shard into scratch.
  const float* gather_rows(const Tensor& shard);
  // Reduces d(loss)/d(gathered input) [N, h] into d(loss)/d(shard) [R, h]: reduce-scatter under
  // SP (g backward), all-reduce otherwise (f backward). Result in g_.dln.
  void reduce_input_grad();
  // Row-parallel output [N, h] partial sums -> `out` [R, h]: ḡ (SP) or f̄ (plain TP).
  void reduce_output(float* out);
  // The full gradient [N, h] of a row-parallel output from the residual gradient [R, h].
  const float* output_grad();
  // Gradient buckets: start the all-reduce of one layer's (or the head's) gradients over
  // `group` (dp for dense weights, edp for experts).
  void start_bucket(int bucket, const std::vector<NamedTensor>& grads, comm::Communicator* group);
  void finish_buckets();

  ModelConfig config_;
  int b_, s_;
  Recompute mode_;
  ModelParallel par_;
  comm::Communicator* tp_ = nullptr;  // null or size 1: no tensor parallelism
  comm::Communicator* dp_ = nullptr;
  comm::Communicator* edp_ = nullptr;   // expert gradient reduction
  comm::Communicator* cp_ = nullptr;    // context parallel (attention across sequence shards)
  comm::Communicator* dpcp_ = nullptr;  // ranks holding distinct tokens of the dense model
  int cp_size_ = 1;
  std::unique_ptr<parallel::ContextAttention> cp_attn_;
  std::unique_ptr<parallel::Zigzag> zigzag_;
  // Position-aware RoPE: plain (positions 0..s-1) or at the zigzag shard's global positions.
  void rope(float* x, int heads, bool backward);
  std::vector<std::unique_ptr<parallel::MoeLayer>> moe_;  // per block; null for dense blocks
  float moe_loss_ = 0;
  float loss_scale_ = 1;  // of the running backward (the MoE aux/z weight)
  int t_ = 1;
  bool sp_ = false;
  int64_t rows_ = 0;  // R: rows of the residual stream on this rank
  parallel::ColumnParallelLinear col_q_, col_kv_, col_ffn_, col_vocab_;
  parallel::RowParallelLinear row_o_, row_down_;
  parallel::VocabParallelEmbedding embed_;
  double global_valid_ = 0;
  Weights params_, grads_;
  ActivationStash stash_;
  Tensor rope_cos_, rope_sin_;  // [max_seq_len, d/2]
  Tensor tokens_, targets_;     // [N] int32, copies of the last forward's inputs
  Tensor full_;                 // [N, h] gathered norm output / row-parallel partial sums (TP)
  Tensor ce_scratch_;           // [3N] vocab-parallel cross-entropy

  // DP gradient buckets: one per layer, one for the head (final norm, lm_head), one for wte.
  struct Bucket {
    Tensor buf;
    std::vector<NamedTensor> grads;
    comm::Work work;
  };
  std::vector<Bucket> buckets_;

  // Gradient scratch, reused by every block in the backward.
  struct GradScratch {
    Tensor dresid;   // [R, h] gradient flowing along the residual stream
    Tensor dfull;    // [N, h] gradient w.r.t. a gathered norm output (sum over q/k/v, gate/up)
    Tensor dout;     // [N, h] SP: all-gathered residual gradient = row-parallel output grad
    Tensor dln;      // [R, h] gradient w.r.t. an RMSNorm output
    Tensor datt;     // [N, a*d]
    Tensor dq;       // [N, a*d]
    Tensor dk, dv;   // [N, k*d]
    Tensor dact;     // [N, f]
    Tensor dgate;    // [N, f]
    Tensor dup;      // [N, f]
    Tensor dlosses;  // [N]
  } g_;
};

}  // namespace grove
