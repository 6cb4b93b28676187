// Transformer: a decoder-only language model with explicit forward and backward, one template
// over the kernel backend (kernels/backend.h); docs/model.md has the math and the buffers.
//
//   x = wte[tokens]                                   [N, h]   N = s*b, rows ordered (s, b)
//   for each block:
//     x2 = x  + Wo · attention(rope(Wq·rms1(x)), rope(Wk·rms1(x)), Wv·rms1(x))
//     x  = x2 + Wdown · (silu(Wgate·rms2(x2)) * Wup·rms2(x2))        (or a mixture of experts)
//   logits = lm_head · rmsf(x);  loss = mean over valid targets of cross-entropy
//
// Backends: Transformer = TransformerT<CpuBackend> (fp32, host memory, the whole parallel
// engine), TransformerT<CpuBf16Backend> (the same with bf16 GEMM operands: fp32 activations,
// a bf16 copy of the weights kept by the backend, model/transformer_bf16.cc) and
// TransformerT<CudaBackend<T>> (model/cuda/cuda_transformer.h; fp32 or bf16 mixed precision on one
// device per rank: data, tensor, sequence, context and expert parallelism with every recompute
// mode, capacity dropping and the LSH-compressed all-to-all: Supports() says what a backend runs,
// naming the field).
//
// Parameters: ONE fp32 buffer on the backend's device laid out as ParamLayout (shapes known
// before step 0), with named views (params(): Weights); gradients likewise (grads()). The
// optimizer works on the flat buffers, the checkpoints and generation on the views. With a bf16
// compute type the matrices are read from a bf16 copy of the buffer, refreshed by
// sync_compute_weights() after every optimizer step; norm weights, weight gradients, rstd, lse
// and losses stay fp32.
//
// Activations live in named per-layer buffers (model/activations.h) allocated in the
// constructor for a fixed (b, s), so memory is known before step 0. Gradients ACCUMULATE into
// grads() across backward calls (gradient accumulation); call zero_grads() at the start of each
// optimizer step.
//
// Parallelism (docs/tensor_parallel.md, docs/attention.md, docs/moe.md): with a
// ParallelGrid the block's projections are column/row parallel over the TP group (heads and
// SwiGLU columns split), the embedding and LM head are vocabulary-parallel, and with sequence
// parallelism the residual stream and norms live on [s/t, b, h] (g before each column-parallel
// input, ḡ after each row-parallel output). Gradients of the replicated norm weights are
// SUM-all-reduced over TP under SP, and all gradients are SUM-all-reduced over DP in per-layer
// ranges of the flat gradient buffer started as soon as a block's backward is done (experts over
// edp). The loss is normalised by the number of valid targets of the whole data-parallel batch,
// so a layout's gradients equal the single-rank model's on the same global batch.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "comm/communicator.h"
#include "core/status.h"
#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/cpu/backend.h"
#include "kernels/cpu/bf16_backend.h"
#include "model/activations.h"
#include "model/local_moe.h"
#include "model/weights.h"
#include "parallel/cp_attention.h"
#include "parallel/grid.h"
#include "parallel/moe_layer.h"
#include "parallel/vocab_parallel.h"
#include "parallel/zigzag.h"
#include "spec/enums.h"
#include "spec/model_config.h"

namespace grove {

struct ModelParallel {
  const parallel::ParallelGrid* grid = nullptr;   // null: single process
  bool sequence_parallel = false;                 // SP on top of TP (needs seq % tp == 0)
  CpAttention cp_attention = CpAttention::kTree;  // with cp > 1
  // Without a grid: the data-parallel group (e.g. NCCL over the GPUs), or null.
  comm::Communicator* data_parallel = nullptr;
};

template <class B>
class TransformerT {
 public:
  using T = typename B::T;
  static constexpr bool kHost = kernels::kHostBackend<B>;
  // The MoE layer: parallel::MoeLayer (expert parallelism, capacity, LSH) on the host backend,
  // LocalMoe (every expert on the device, or E/ep with expert parallelism; capacity and LSH as
  // MoeLayer's) on a device backend.
  using MoeImpl = std::conditional_t<kHost, parallel::MoeLayer, LocalMoe<B>>;

  // OK, or what this backend cannot run for (config, batch, seq, parallel), naming the field.
  static Status Supports(const ModelConfig& config, int batch, int seq,
                         const ModelParallel& parallel);

  // `config` must be valid (ModelConfig::Validate) and Supports() OK. `batch` is this
  // data-parallel rank's micro-batch, `seq` the full sequence length; with context parallelism
  // (cp > 1) this rank holds the zigzag shard of seq/cp positions (chunks r and 2cp−1−r of 2cp,
  // for causal load balance) and attention runs across the CP group (tree or ring attention);
  // everything else is local to the shard. Parameters start as Weights::Init(config), sharded.
  // `training` false (decoding, model/generate.h): no gradient buffers; backward() must not be
  // called.
  TransformerT(const ModelConfig& config, int batch, int seq, Recompute mode,
               ModelParallel parallel = {}, bool training = true);
  TransformerT(const TransformerT&) = delete;
  TransformerT& operator=(const TransformerT&) = delete;

  const ModelConfig& config() const { return config_; }
  int batch() const { return b_; }
  int seq() const { return s_ * cp_size_; }
  Recompute recompute() const { return mode_; }

  // Named views of the flat fp32 parameters / gradients (on the backend's device).
  Weights& params() { return params_; }
  const Weights& params() const { return params_; }
  Weights& grads() { return grads_; }
  const ParamLayout& layout() const { return layout_; }
  // The flat buffers themselves ([layout().size] fp32 on the backend's device).
  float* flat_params() { return params_flat_.data<float>(); }
  float* flat_grads() { return grads_flat_.data<float>(); }
  void zero_grads() { grads_flat_.zero(); }
  // Copies full-shape or this rank's-shard host (or device) weights in by name, or out.
  Status load_params(const Weights& w);
  void store_params(Weights* w) const;
  // Re-derive the compute copy of the weights from the fp32 masters (after an optimizer step or
  // writing params()); no-op when T is float.
  void sync_compute_weights();

  // tokens, targets: host [seq, b] row-major (row = s_idx * b + b_idx), this DP rank's columns
  // of the global batch (identical on every TP and CP rank; each CP rank takes its zigzag
  // shard). A target < 0 is ignored. Returns the mean loss over the valid targets of the whole
  // data-parallel batch.
  float forward(const int32_t* tokens, const int32_t* targets);
  // Backward of the last forward; d(loss) is scaled by `loss_scale` (1/accumulation steps).
  // `finalize` (the last micro-batch of a step) also reduces the gradients over TP (norm weights
  // under SP) and DP, so grads() then hold the gradient of the global loss.
  void backward(float loss_scale = 1.0f, bool finalize = true);

  // Decoding (model/generate.h) runs this model's forward one position at a time: `attend`
  // replaces each block's causal attention over the batch. It receives the block index and, for
  // the N rows, q [N, a*d] and k, v [N, kv*d] after RoPE, and writes att [N, a*d]; RoPE puts row
  // s at position pos0 + s (set_position). No lse is kept: no backward after such a forward.
  using AttendFn = std::function<void(int layer, T* att, const T* q, const T* k, const T* v)>;
  void set_attention(AttendFn attend) { attend_ = std::move(attend); }
  // MLA decoding with the latent cache (model/generate.h): replaces each block's key/value
  // up-projections and attention. It receives the block index and, for the N rows, q [N, a*dq]
  // (each head [nope | rope], RoPE applied), the normed KV latent c [N, r_kv] and the RoPE key
  // k_R [N, rope] (RoPE applied), and writes the attention output without the value padding,
  // att [N, a*dv], which Wo reads. tp = 1 (no SP) only. Takes precedence over set_attention.
  using MlaAttendFn =
      std::function<void(int layer, T* att, const T* q, const T* c, const T* k_rope)>;
  void set_mla_attention(MlaAttendFn attend);
  void set_position(int pos0);

  // Logits of the last forward, [N, V/t] on the device; valid until backward() overwrites them.
  const Tensor& logits() const { return stash_.logits; }
  ActivationReport activation_report() const;
  // Bytes this model allocated on its device (parameters, gradients, compute copy, activations,
  // scratch).
  int64_t device_bytes() const;
  // FLOPs of one forward+backward over this rank's micro-batch, the whole model over the full
  // sequence (ModelConfig::training_flops; divide by t for one TP rank's share).
  double flops_per_step() const { return config_.training_flops(b_, double(s_) * cp_size_); }

  // Mixture of experts: the sum over MoE layers of aux + z loss (already times their
  // coefficients) of the last forward — added to the training objective by backward(), not to
  // the returned cross-entropy — and each MoE layer's metrics.
  float moe_loss() const { return moe_loss_; }
  std::vector<parallel::MoeMetrics> moe_metrics() const;
  // The MoE layer of block l, or null for a dense block (e.g. to swap its dispatcher).
  MoeImpl* moe_layer(int l) { return moe_[l].get(); }

 private:
  void block_forward(int l, BlockActivations& a);
  void block_backward(int l, BlockActivations& a);
  void mlp_backward(int l, BlockActivations& a);
  void attention_backward(int l, BlockActivations& a);
  // Position-aware RoPE over heads of rope_d_ values: plain (positions 0..s-1) or at the zigzag
  // shard's global positions.
  void rope(T* x, int heads, bool backward);
  // Multi-head latent attention (model/mla_impl.h, docs/model.md#multi-head-latent-attention).
  // Forward: from ln1 (this rank's rows; `ln1_full` the gathered [N, h] when wq reads it, else
  // null) to q, k, v in the attention kernels' layout. Backward: from g_.dq, g_.dk, g_.dv of the
  // attention backward to g_.dln = d(loss)/d(ln1 shard), accumulating the weights' gradients.
  void mla_qkv_forward(int l, BlockActivations& a, const T* ln1_full);
  void mla_qkv_backward(int l, BlockActivations& a);
  // RoPE of the last rope_d_ values of each of this rank's query heads in q [N, a*dq].
  void mla_rope_q(T* q, bool backward);
  // The attention output without each head's value padding, [N, a*dv] in mla_s_.attc.
  const T* mla_compact_att(const BlockActivations& a);
  // g (SP: all-gather the [R, cols] shard into `full`); the shard itself otherwise.
  T* gather_latent(Tensor& shard, Tensor& full, int cols);
  // The conjugate of gather_latent on a gradient [N, cols] in `full`: reduce-scatter into
  // `shard` (SP) or all-reduce in place (TP without SP); returns the [R, cols] gradient.
  T* reduce_latent_grad(Tensor& full, Tensor& shard, int cols);
  void mla_allocate_scratch();
  // The normalised activation [N, h] a column-parallel layer reads: the stash itself, or under
  // SP the all-gather (g) of its [R, h] shard into scratch.
  const T* gather_rows(Tensor& shard);
  // Reduces d(loss)/d(gathered input) [N, h] in g_.dfull into d(loss)/d(shard) [R, h] in g_.dln:
  // reduce-scatter under SP (g backward), all-reduce over TP otherwise (f backward).
  void reduce_input_grad();
  // Row-parallel output: [N, h] partial sums in full_ (SP) or `out` -> `out` [R, h].
  void reduce_output(T* out);
  // The full gradient [N, h] of a row-parallel output from the residual gradient [R, h].
  const T* output_grad();
  // DP reduction of the flat gradient range [begin, end) over `group`: started now (in place,
  // asynchronous) when the group works on this backend's memory, else staged through the host
  // in finish_reductions().
  void reduce_range(comm::Communicator* group, int64_t begin, int64_t end);
  void finish_reductions();
  int64_t offset(const std::string& name) const { return layout_.at(name).offset; }
  Tensor alloc(Shape shape, DType dtype);
  Tensor act(Shape shape) { return alloc(std::move(shape), B::kDType); }
  static T* p(Tensor& t) { return static_cast<T*>(t.raw()); }
  static const T* p(const Tensor& t) { return static_cast<const T*>(t.raw()); }
  static float* f(Tensor& t) { return t.data<float>(); }
  static const float* f(const Tensor& t) { return t.data<float>(); }

  ModelConfig config_;
  int b_, s_;
  Recompute mode_;
  ModelParallel par_;
  comm::Communicator* tp_ = nullptr;    // null or size 1: no tensor parallelism
  comm::Communicator* edp_ = nullptr;   // expert gradient reduction
  comm::Communicator* cp_ = nullptr;    // context parallel (attention across sequence shards)
  comm::Communicator* dpcp_ = nullptr;  // ranks holding distinct tokens of the dense model
  int cp_size_ = 1;
  int t_ = 1;
  bool sp_ = false;
  int64_t rows_ = 0;  // R: rows of the residual stream on this rank
  // d_: the q/k head width of the attention kernels; qd_, kvd_: this rank's q and k/v widths;
  // vd_, od_: the value head width and the output projection's input width (d_, qd_ for MHA).
  int N_ = 0, h_ = 0, qd_ = 0, kvd_ = 0, f_ = 0, Vl_ = 0, heads_ = 0, kv_heads_ = 0, d_ = 0;
  int vd_ = 0, od_ = 0, rope_d_ = 0;
  // MLA: whether the block is MLA, and its qk_nope width and latent ranks.
  bool mla_ = false;
  int nope_ = 0, qr_ = 0, kvr_ = 0;
  // cp > 1: tree or ring attention over the CP group and this rank's zigzag shard of the sequence.
  std::unique_ptr<parallel::ContextAttentionT<B>> cp_attn_;
  std::unique_ptr<parallel::Zigzag> zigzag_;
  // tp > 1: the vocabulary-parallel embedding (and its shard of the LM head's vocabulary) and the
  // cross-entropy's scratch [3N] fp32.
  std::unique_ptr<parallel::VocabParallelEmbedding<B>> embed_;
  Tensor ce_scratch_;
  std::vector<std::unique_ptr<MoeImpl>> moe_;                   // per block; null for dense blocks
  std::unique_ptr<typename LocalMoe<B>::Scratch> moe_scratch_;  // device backends
  AttendFn attend_;  // decoding: attention against a KV cache
  MlaAttendFn mla_attend_;  // MLA decoding: attention against the latent cache
  int pos0_ = 0;     // RoPE position of row 0 (decoding)
  float moe_loss_ = 0;
  float loss_scale_ = 1;  // of the running backward (the MoE aux/z weight)
  double global_valid_ = 0;
  int64_t allocated_ = 0;  // bytes of everything allocated through alloc()

  ParamLayout layout_;
  Tensor params_flat_, grads_flat_;  // fp32 [layout_.size]
  Tensor compute_flat_;              // T [layout_.size] when T is not float
  // The backend's own GEMM-operand copy of params_flat_ (CpuBf16Backend: bf16), if it keeps one.
  std::unique_ptr<typename kernels::WeightCopyOf<B>::type> weight_copy_;
  Weights params_, grads_;  // views of the flat buffers
  Weights compute_;         // views of the compute copy (= params_ when T is float)
  ActivationStash stash_;
  Tensor rope_cos_, rope_sin_;  // [max_seq_len, d/2] fp32
  Tensor tokens_, targets_;     // [N] int32 on the device: the last forward's inputs
  std::vector<int32_t> host_tokens_, host_targets_;  // [N] (this rank's shard)
  std::vector<float> host_losses_;                   // [N] device backends
  std::vector<float> host_dloss_;                    // [N] d(loss)/d(per-token loss), uploaded
  Tensor full_;  // [N, h] gathered norm output / row-parallel partial sums (TP)

  // DP reductions in flight (device-side groups) and staged ranges (host-side groups).
  struct Range {
    comm::Communicator* group;
    int64_t begin, end;
  };
  std::vector<comm::Work> pending_;
  std::vector<Range> staged_;

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
    Tensor dlosses;  // [N] fp32
  } g_;
  // MLA's scratch, reused by every block (model/mla_impl.h). *_full exist under SP only (without
  // SP the shard is the full tensor); forward buffers double as their gradients' in the backward.
  struct MlaScratch {
    Tensor cqn_full;   // [N, r_q]      gathered normalised query latent
    Tensor ckvn_full;  // [N, r_kv]     gathered normalised KV latent
    Tensor kr;         // [R, rope]     RoPE key before RoPE (its gradient in the backward)
    Tensor kr_full;    // [N, rope]     gathered RoPE key, rotated in place
    Tensor qrope;      // [N, a*rope]   the RoPE part of the queries, contiguous
    Tensor kn;         // [N, a*nope]   no-RoPE keys / their gradient
    Tensor vc;         // [N, a*dv]     values / their gradient
    Tensor attc;       // [N, a*dv]     attention output without the value padding
    Tensor dattc;      // [N, a*dv]     its gradient
    Tensor dkr_full;   // [N, rope]     the RoPE key's gradient, summed over this rank's heads
    Tensor dkr_head;   // [N, rope]     one head's share of it
    Tensor dcqn_full, dcqn, dcq;     // [N, r_q], [R, r_q], [R, r_q]
    Tensor dckvn_full, dckvn, dckv;  // [N, r_kv], [R, r_kv], [R, r_kv]
  } mla_s_;
};

using Transformer = TransformerT<CpuBackend>;
extern template class TransformerT<CpuBackend>;
extern template class TransformerT<CpuBf16Backend>;  // model/transformer_bf16.cc

}  // namespace grove
