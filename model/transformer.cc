#include "model/transformer.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"
#include "parallel/lsh_dispatcher.h"

namespace grove {

namespace k = cpu;
namespace par = parallel;

namespace {

comm::Communicator* group_or_null(const par::ParallelGrid* grid, par::Group g) {
  if (grid == nullptr) return nullptr;
  comm::Communicator& c = grid->group(g);
  return c.size() > 1 ? &c : nullptr;
}

// One block's gradients with their short names (as in Weights::named()).
std::vector<NamedTensor> gw_named(const LayerWeights& g) {
  std::vector<NamedTensor> out = {
      {"attn_norm", g.attn_norm}, {"wq", g.wq}, {"wk", g.wk}, {"wv", g.wv}, {"wo", g.wo},
      {"mlp_norm", g.mlp_norm}};
  if (g.router.defined()) {
    out.push_back({"router", g.router});
    out.push_back({".experts.w_gate", g.e_gate});
    out.push_back({".experts.w_up", g.e_up});
    out.push_back({".experts.w_down", g.e_down});
  } else {
    out.push_back({"w_gate", g.w_gate});
    out.push_back({"w_up", g.w_up});
    out.push_back({"w_down", g.w_down});
  }
  return out;
}

MemoryLayout layout_of(int b, int s, Recompute mode, int t, bool sp) {
  return MemoryLayout{b, s, t, sp, mode};
}

}  // namespace

Transformer::Transformer(const ModelConfig& config, int batch, int seq, Recompute mode,
                         ModelParallel parallel)
    : config_(config),
      b_(batch),
      s_(seq),  // made local below once the CP size is known
      mode_(mode),
      par_(parallel),
      tp_(group_or_null(parallel.grid, par::Group::kTp)),
      dp_(group_or_null(parallel.grid, par::Group::kDp)),
      edp_(group_or_null(parallel.grid, par::Group::kEdp)),
      cp_(group_or_null(parallel.grid, par::Group::kCp)),
      dpcp_(group_or_null(parallel.grid, par::Group::kDpCp)),
      cp_size_(cp_ ? cp_->size() : 1),
      t_(par::tp_size(tp_)),
      sp_(parallel.sequence_parallel && t_ > 1),
      col_q_(config.d_model, config.n_heads * config.head_dim(), tp_),
      col_kv_(config.d_model, config.kv_heads() * config.head_dim(), tp_),
      col_ffn_(config.d_model, config.ffn(), tp_),
      col_vocab_(config.d_model, config.vocab_size, tp_),
      row_o_(config.n_heads * config.head_dim(), config.d_model, tp_),
      row_down_(config.ffn(), config.d_model, tp_),
      embed_(config.vocab_size, config.d_model, tp_) {
  Status st = config_.Validate();
  GROVE_CHECK(st.ok()) << st.message();
  GROVE_CHECK(seq > 0 && seq <= config_.max_seq_len)
      << "seq " << seq << " exceeds model.max_seq_len " << config_.max_seq_len;
  GROVE_CHECK(seq % (2 * cp_size_) == 0 || cp_size_ == 1)
      << "context parallelism cuts the sequence into 2·cp chunks: cp=" << cp_size_ << " needs seq ("
      << seq << ") divisible by " << 2 * cp_size_;
  s_ = seq / cp_size_;
  if (cp_size_ > 1) {
    zigzag_ = std::make_unique<par::Zigzag>(seq, cp_size_, cp_->rank());
    cp_attn_ = std::make_unique<par::ContextAttention>(
        parallel.cp_attention, cp_,
        par::CpAttentionShape{seq, batch, config_.n_heads / par::tp_size(tp_),
                              config_.kv_heads() / par::tp_size(tp_), config_.head_dim(), true});
  }
  GROVE_CHECK(batch > 0) << "batch must be positive";
  GROVE_CHECK(config_.n_heads % t_ == 0 && config_.kv_heads() % t_ == 0)
      << "tp=" << t_ << " must divide model.n_heads=" << config_.n_heads << " and the kv heads ("
      << config_.kv_heads() << ")";
  GROVE_CHECK(!sp_ || s_ % t_ == 0)
      << "sequence parallelism splits the sequence: tp=" << t_ << " must divide seq/cp " << s_;
  const int64_t N = int64_t(b_) * s_, h = config_.d_model;
  rows_ = sp_ ? N / t_ : N;
  const par::ParallelGrid* grid = parallel.grid;
  const int ep = grid ? grid->shape().ep : 1, ep_rank = grid ? grid->coord().ep : 0;
  params_ = Weights::Init(config_, t_, par::tp_rank(tp_), ep, ep_rank);
  grads_ = Weights::Zeros(config_, t_, ep);
  // Under CP the attention probabilities are never kept (the CP kernels recompute them), so
  // recompute=none stores what selective stores for attention.
  stash_ = ActivationStash::Allocate(
      config_,
      layout_of(b_, s_, cp_size_ > 1 && mode_ == Recompute::kNone ? Recompute::kSelective : mode_,
                t_, sp_));
  // MoE blocks: the layer owns its parameters and gradients; params_ and grads_ alias them so
  // the optimizer, clipping and checkpoints see every tensor.
  moe_.resize(config_.n_layers);
  if (config_.moe.num_experts > 0) {
    GROVE_CHECK(t_ == 1 || sp_) << "MoE with tp=" << t_
                                << " needs sequence parallelism (experts see distinct tokens)";
    par::MoeConfig mc;
    mc.num_experts = config_.moe.num_experts;
    mc.top_k = config_.moe.top_k;
    mc.expert_ffn = config_.expert_ffn();
    mc.aux_loss_coef = config_.moe.aux_loss_coef;
    mc.z_loss_coef = config_.moe.z_loss_coef;
    mc.capacity_factor = config_.moe.capacity_factor;
    comm::Communicator* ep_group = group_or_null(grid, par::Group::kEp);
    comm::Communicator* stats = grid && grid->world().size() > 1 ? &grid->world() : nullptr;
    for (int l = 0; l < config_.n_layers; ++l) {
      if (!config_.is_moe_layer(l)) continue;
      moe_[l] = std::make_unique<par::MoeLayer>(mc, config_.d_model, config_.expert_ffn(),
                                                static_cast<int>(rows_), ep_group, stats);
      if (config_.moe.lsh.enabled) {
        const MoeLshOptions& q = config_.moe.lsh;
        par::LshConfig lc{q.enabled, q.num_hashes, q.rotation_dim, q.min_tokens, q.seed};
        moe_[l]->set_dispatcher(
            std::make_unique<par::LshDispatcher>(mc.num_experts, config_.d_model, ep_group, lc));
      }
      LayerWeights& p = params_.layers[l];
      LayerWeights& g = grads_.layers[l];
      std::vector<NamedTensor> lp = moe_[l]->params(), lg = moe_[l]->grads();
      Tensor* mine[] = {&p.router, &p.e_gate, &p.e_up, &p.e_down};
      Tensor* mine_g[] = {&g.router, &g.e_gate, &g.e_up, &g.e_down};
      for (int i = 0; i < 4; ++i) {
        GROVE_CHECK(lp[i].tensor.shape() == mine[i]->shape()) << "MoE parameter " << lp[i].name;
        std::memcpy(lp[i].tensor.raw(), mine[i]->raw(), mine[i]->bytes());
        *mine[i] = lp[i].tensor;
        *mine_g[i] = lg[i].tensor;
      }
    }
  }
  const int d = config_.head_dim();
  rope_cos_ = Tensor::empty({config_.max_seq_len, d / 2});
  rope_sin_ = Tensor::empty({config_.max_seq_len, d / 2});
  k::rope_table(rope_cos_.data<float>(), rope_sin_.data<float>(), config_.max_seq_len, d,
                config_.rope_theta);
  const int64_t qd = col_q_.local_out(), kvd = col_kv_.local_out(), f = col_ffn_.local_out();
  tokens_ = Tensor::empty({N}, DType::kI32);
  targets_ = Tensor::empty({N}, DType::kI32);
  if (sp_ || t_ > 1) full_ = Tensor::empty({N, h});
  ce_scratch_ = Tensor::empty({3 * N});
  g_.dresid = Tensor::empty({rows_, h});
  g_.dfull = Tensor::empty({N, h});
  if (sp_) g_.dout = Tensor::empty({N, h});
  g_.dln = Tensor::empty({rows_, h});
  g_.datt = Tensor::empty({N, qd});
  g_.dq = Tensor::empty({N, qd});
  g_.dk = Tensor::empty({N, kvd});
  g_.dv = Tensor::empty({N, kvd});
  g_.dact = Tensor::empty({N, f});
  g_.dgate = Tensor::empty({N, f});
  g_.dup = Tensor::empty({N, f});
  g_.dlosses = Tensor::empty({N});
}

// ---- region helpers ----------------------------------------------------------------------------

void Transformer::rope(float* x, int heads, bool backward) {
  const int d = config_.head_dim();
  const float* c = rope_cos_.data<float>();
  const float* sn = rope_sin_.data<float>();
  if (zigzag_) {
    if (backward)
      par::zigzag_rope_backward(x, c, sn, *zigzag_, b_, heads, d);
    else
      par::zigzag_rope_forward(x, c, sn, *zigzag_, b_, heads, d);
  } else if (backward) {
    k::rope_backward(x, c, sn, s_, b_, heads, d, 0);
  } else {
    k::rope_forward(x, c, sn, s_, b_, heads, d, 0);
  }
}

const float* Transformer::gather_rows(const Tensor& shard) {
  if (!sp_) return shard.data<float>();
  par::gather_from_sequence_region_forward(tp_, shard.data<float>(), full_.data<float>(),
                                           int64_t(b_) * s_, config_.d_model);
  return full_.data<float>();
}

void Transformer::reduce_input_grad() {
  const int64_t N = int64_t(b_) * s_, h = config_.d_model;
  if (sp_) {
    par::gather_from_sequence_region_backward(tp_, g_.dfull.data<float>(), g_.dln.data<float>(), N,
                                              h);
  } else {
    par::copy_to_tp_region_backward(tp_, g_.dfull.data<float>(), N * h);
    std::memcpy(g_.dln.data<float>(), g_.dfull.data<float>(), sizeof(float) * N * h);
  }
}

void Transformer::reduce_output(float* out) {
  const int64_t N = int64_t(b_) * s_, h = config_.d_model;
  if (sp_)
    par::scatter_to_sequence_region_forward(tp_, full_.data<float>(), out, N, h);
  else
    par::reduce_from_tp_region_forward(tp_, out, N * h);
}

const float* Transformer::output_grad() {
  if (!sp_) return g_.dresid.data<float>();  // f̄ backward: identity
  par::scatter_to_sequence_region_backward(tp_, g_.dresid.data<float>(), g_.dout.data<float>(),
                                           int64_t(b_) * s_, config_.d_model);
  return g_.dout.data<float>();
}

// ---- one block ---------------------------------------------------------------------------------

void Transformer::block_forward(int l, BlockActivations& a) {
  const LayerWeights& w = params_.layers[l];
  const int N = b_ * s_, h = config_.d_model, d = config_.head_dim();
  const int R = static_cast<int>(rows_);
  const int heads = config_.n_heads / t_, kv_heads = config_.kv_heads() / t_;
  const float* x = stash_.resid[l].data<float>();
  float* out = stash_.resid[l + 1].data<float>();
  // Row-parallel outputs go to scratch under SP (then reduce-scattered), in place otherwise.
  float* attn_out = sp_ ? full_.data<float>() : a.resid2.data<float>();
  float* mlp_out = sp_ ? full_.data<float>() : out;

  // Attention: x2 = x + ḡ/f̄(Wo · attention(rope(Wq·g(rms1(x))), ...)).
  k::rmsnorm_forward(a.ln1.data<float>(), a.rstd1.data<float>(), x, w.attn_norm.data<float>(), R, h,
                     config_.norm_eps);
  const float* ln1 = gather_rows(a.ln1);
  col_q_.forward(a.q.data<float>(), ln1, w.wq.data<float>(), N);
  col_kv_.forward(a.k.data<float>(), ln1, w.wk.data<float>(), N);
  col_kv_.forward(a.v.data<float>(), ln1, w.wv.data<float>(), N);
  rope(a.q.data<float>(), heads, /*backward=*/false);
  rope(a.k.data<float>(), kv_heads, /*backward=*/false);
  if (cp_attn_) {  // tree or ring attention over the CP group, global lse
    cp_attn_->forward(a.att.data<float>(), a.lse.data<float>(), a.q.data<float>(),
                      a.k.data<float>(), a.v.data<float>());
  } else {
    k::AttentionShape shape{s_, s_, b_, heads, kv_heads, d, /*causal=*/true};
    k::attention_forward(a.att.data<float>(), a.lse.data<float>(),
                         a.probs.defined() ? a.probs.data<float>() : nullptr, a.q.data<float>(),
                         a.k.data<float>(), a.v.data<float>(), shape);
  }
  row_o_.forward(attn_out, a.att.data<float>(), w.wo.data<float>(), N);
  reduce_output(a.resid2.data<float>());
  k::add_inplace(a.resid2.data<float>(), x, int64_t(R) * h);

  // MLP: out = x2 + ḡ/f̄(Wdown · (silu(Wgate·g(rms2(x2))) * Wup·g(rms2(x2)))).
  k::rmsnorm_forward(a.ln2.data<float>(), a.rstd2.data<float>(), a.resid2.data<float>(),
                     w.mlp_norm.data<float>(), R, h, config_.norm_eps);
  if (moe_[l]) {
    // MoE: the experts take this rank's own rows (the sequence shard under SP) directly; no
    // TP communication, the expert all-to-all happens inside the layer.
    moe_loss_ += moe_[l]->forward(out, a.ln2.data<float>(), R);
    k::add_inplace(out, a.resid2.data<float>(), int64_t(R) * h);
    return;
  }
  const float* ln2 = gather_rows(a.ln2);
  col_ffn_.forward(a.gate.data<float>(), ln2, w.w_gate.data<float>(), N);
  col_ffn_.forward(a.up.data<float>(), ln2, w.w_up.data<float>(), N);
  k::swiglu_forward(a.act.data<float>(), a.gate.data<float>(), a.up.data<float>(),
                    int64_t(N) * col_ffn_.local_out());
  row_down_.forward(mlp_out, a.act.data<float>(), w.w_down.data<float>(), N);
  reduce_output(out);
  k::add_inplace(out, a.resid2.data<float>(), int64_t(R) * h);
}

// On entry g_.dresid holds d(loss)/d(block output) [R, h]; on exit d(loss)/d(block input).
void Transformer::block_backward(int l, BlockActivations& a) {
  const LayerWeights& w = params_.layers[l];
  LayerWeights& gw = grads_.layers[l];
  const int N = b_ * s_, h = config_.d_model, d = config_.head_dim();
  const int R = static_cast<int>(rows_);
  const int heads = config_.n_heads / t_, kv_heads = config_.kv_heads() / t_;
  const float* x = stash_.resid[l].data<float>();
  float* dresid = g_.dresid.data<float>();

  // MLP. The residual passes dresid straight through to x2.
  if (moe_[l]) {
    g_.dln.zero();
    moe_[l]->backward(g_.dln.data<float>(), dresid, loss_scale_);
    k::rmsnorm_backward(dresid, gw.mlp_norm.data<float>(), g_.dln.data<float>(),
                        a.resid2.data<float>(), w.mlp_norm.data<float>(), a.rstd2.data<float>(), R,
                        h);
  } else {
    const float* dmlp_out = output_grad();

    g_.dact.zero();
    row_down_.backward(g_.dact.data<float>(), gw.w_down.data<float>(), dmlp_out,
                       a.act.data<float>(), w.w_down.data<float>(), N);
    g_.dgate.zero();
    g_.dup.zero();
    k::swiglu_backward(g_.dgate.data<float>(), g_.dup.data<float>(), g_.dact.data<float>(),
                       a.gate.data<float>(), a.up.data<float>(), int64_t(N) * col_ffn_.local_out());
    const float* ln2 = gather_rows(a.ln2);  // SP keeps only the shard: re-gather it
    g_.dfull.zero();
    col_ffn_.backward(g_.dfull.data<float>(), gw.w_gate.data<float>(), g_.dgate.data<float>(), ln2,
                      w.w_gate.data<float>(), N);
    col_ffn_.backward(g_.dfull.data<float>(), gw.w_up.data<float>(), g_.dup.data<float>(), ln2,
                      w.w_up.data<float>(), N);
    reduce_input_grad();
    k::rmsnorm_backward(dresid, gw.mlp_norm.data<float>(), g_.dln.data<float>(),
                        a.resid2.data<float>(), w.mlp_norm.data<float>(), a.rstd2.data<float>(), R,
                        h);
  }

  // Attention.
  const float* dattn_out = output_grad();
  g_.datt.zero();
  row_o_.backward(g_.datt.data<float>(), gw.wo.data<float>(), dattn_out, a.att.data<float>(),
                  w.wo.data<float>(), N);
  g_.dq.zero();
  g_.dk.zero();
  g_.dv.zero();
  if (cp_attn_) {
    cp_attn_->backward(g_.dq.data<float>(), g_.dk.data<float>(), g_.dv.data<float>(),
                       g_.datt.data<float>(), a.q.data<float>(), a.k.data<float>(),
                       a.v.data<float>(), a.att.data<float>(), a.lse.data<float>());
  } else {
    k::AttentionShape shape{s_, s_, b_, heads, kv_heads, d, /*causal=*/true};
    k::attention_backward(g_.dq.data<float>(), g_.dk.data<float>(), g_.dv.data<float>(),
                          g_.datt.data<float>(), a.q.data<float>(), a.k.data<float>(),
                          a.v.data<float>(), a.att.data<float>(), a.lse.data<float>(),
                          a.probs.defined() ? a.probs.data<float>() : nullptr, shape);
  }
  rope(g_.dq.data<float>(), heads, /*backward=*/true);
  rope(g_.dk.data<float>(), kv_heads, /*backward=*/true);
  const float* ln1 = gather_rows(a.ln1);
  g_.dfull.zero();
  col_q_.backward(g_.dfull.data<float>(), gw.wq.data<float>(), g_.dq.data<float>(), ln1,
                  w.wq.data<float>(), N);
  col_kv_.backward(g_.dfull.data<float>(), gw.wk.data<float>(), g_.dk.data<float>(), ln1,
                   w.wk.data<float>(), N);
  col_kv_.backward(g_.dfull.data<float>(), gw.wv.data<float>(), g_.dv.data<float>(), ln1,
                   w.wv.data<float>(), N);
  reduce_input_grad();
  k::rmsnorm_backward(dresid, gw.attn_norm.data<float>(), g_.dln.data<float>(), x,
                      w.attn_norm.data<float>(), a.rstd1.data<float>(), R, h);
}

// ---- whole model -------------------------------------------------------------------------------

float Transformer::forward(const int32_t* tokens, const int32_t* targets) {
  const int N = b_ * s_, h = config_.d_model, V = config_.vocab_size;
  const int R = static_cast<int>(rows_);
  int32_t* tok = tokens_.data<int32_t>();
  int32_t* tgt = targets_.data<int32_t>();
  if (zigzag_) {  // this CP rank's rows of the full [seq, b] batch
    par::zigzag_shard(tok, tokens, *zigzag_, b_);
    par::zigzag_shard(tgt, targets, *zigzag_, b_);
  } else {
    std::memcpy(tok, tokens, sizeof(int32_t) * N);
    std::memcpy(tgt, targets, sizeof(int32_t) * N);
  }
  int64_t valid = 0;
  for (int i = 0; i < N; ++i) {
    GROVE_CHECK(tok[i] >= 0 && tok[i] < V) << "token id " << tok[i] << " at row " << i
                                           << " is outside the vocabulary [0, " << V << ")";
    GROVE_CHECK(tgt[i] < V) << "target id " << tgt[i] << " outside the vocabulary";
    valid += tgt[i] >= 0;
  }

  moe_loss_ = 0;
  // Embedding: vocabulary-parallel partial rows, then f̄ (all-reduce) or ḡ (reduce-scatter).
  float* emb = sp_ ? full_.data<float>() : stash_.resid[0].data<float>();
  embed_.forward(emb, tok, params_.wte.data<float>(), N);
  reduce_output(stash_.resid[0].data<float>());

  for (int l = 0; l < config_.n_layers; ++l)
    block_forward(l, mode_ == Recompute::kFull ? stash_.transient : stash_.blocks[l]);

  // Head: final norm, g, vocabulary-parallel LM head and cross-entropy.
  k::rmsnorm_forward(stash_.lnf.data<float>(), stash_.rstdf.data<float>(),
                     stash_.resid[config_.n_layers].data<float>(), params_.final_norm.data<float>(),
                     R, h, config_.norm_eps);
  col_vocab_.forward(stash_.logits.data<float>(), gather_rows(stash_.lnf),
                     params_.lm_head.data<float>(), N);
  if (t_ == 1) {
    k::cross_entropy_forward(stash_.losses.data<float>(), stash_.ce_lse.data<float>(),
                             stash_.logits.data<float>(), tgt, N, V);
  } else {
    par::vocab_parallel_cross_entropy_forward(
        tp_, stash_.losses.data<float>(), stash_.ce_lse.data<float>(), stash_.logits.data<float>(),
        tgt, N, embed_.local_vocab(), embed_.vocab_start(), ce_scratch_.data<float>());
  }
  double sums[2] = {0.0, static_cast<double>(valid)};  // loss sum, valid targets
  const float* losses = stash_.losses.data<float>();
  for (int i = 0; i < N; ++i) sums[0] += losses[i];  // fixed order: bit-reproducible
  if (dpcp_) dpcp_->all_reduce(sums, 2, DType::kF64, comm::ReduceOp::kSum);
  global_valid_ = sums[1];
  return global_valid_ > 0 ? static_cast<float>(sums[0] / global_valid_) : 0.0f;
}

void Transformer::backward(float loss_scale, bool finalize) {
  const int N = b_ * s_, h = config_.d_model, V = config_.vocab_size;
  const int R = static_cast<int>(rows_);
  const int L = config_.n_layers;
  // Dense gradients are summed over every rank holding distinct tokens of the same shard: the
  // data-parallel and context-parallel ranks together (dp_cp).
  const bool reduce_dp = finalize && dpcp_ != nullptr;
  loss_scale_ = loss_scale;
  float* dl = g_.dlosses.data<float>();
  const float per_token = global_valid_ > 0 ? loss_scale / float(global_valid_) : 0.0f;
  for (int i = 0; i < N; ++i) dl[i] = per_token;

  // Head: dlogits overwrite the logits in place.
  float* dlogits = stash_.logits.data<float>();
  if (t_ == 1) {
    k::cross_entropy_backward(dlogits, stash_.logits.data<float>(), stash_.ce_lse.data<float>(),
                              targets_.data<int32_t>(), dl, N, V);
  } else {
    par::vocab_parallel_cross_entropy_backward(
        dlogits, stash_.logits.data<float>(), stash_.ce_lse.data<float>(), targets_.data<int32_t>(),
        dl, N, embed_.local_vocab(), embed_.vocab_start());
  }
  const float* lnf = gather_rows(stash_.lnf);
  g_.dfull.zero();
  col_vocab_.backward(g_.dfull.data<float>(), grads_.lm_head.data<float>(), dlogits, lnf,
                      params_.lm_head.data<float>(), N);
  reduce_input_grad();
  g_.dresid.zero();
  k::rmsnorm_backward(g_.dresid.data<float>(), grads_.final_norm.data<float>(),
                      g_.dln.data<float>(), stash_.resid[L].data<float>(),
                      params_.final_norm.data<float>(), stash_.rstdf.data<float>(), R, h);
  if (finalize && sp_)  // replicated weight, different tokens per rank: SUM over TP
    tp_->all_reduce(grads_.final_norm.data<float>(), h, DType::kF32, comm::ReduceOp::kSum);
  if (reduce_dp)
    start_bucket(L, {{"final_norm", grads_.final_norm}, {"lm_head", grads_.lm_head}}, dpcp_);

  for (int l = L - 1; l >= 0; --l) {
    if (mode_ == Recompute::kFull) {
      // Re-run the block from its saved input; the forward is deterministic (no dropout), so
      // the recomputed intermediates are bit-identical to the first pass. resid[l+1] is
      // rewritten with the values it already holds. The re-run must not count the block's MoE
      // aux + z loss a second time.
      const float moe_loss = moe_loss_;
      block_forward(l, stash_.transient);
      moe_loss_ = moe_loss;
      block_backward(l, stash_.transient);
    } else {
      block_backward(l, stash_.blocks[l]);
    }
    LayerWeights& gw = grads_.layers[l];
    if (finalize && sp_) {  // replicated weights that saw different tokens: SUM over TP
      for (Tensor* t : {&gw.attn_norm, &gw.mlp_norm, &gw.router})
        if (t->defined())
          tp_->all_reduce(t->data<float>(), t->numel(), DType::kF32, comm::ReduceOp::kSum);
    }
    std::vector<NamedTensor> dense, experts;
    for (const NamedTensor& nt : gw_named(gw))
      (shard_dim(nt.name) == ShardDim::kExperts ? experts : dense).push_back(nt);
    if (reduce_dp) start_bucket(l, dense, dpcp_);
    // Experts: SUM over the ranks holding the same experts (edp), never over ep.
    if (finalize && edp_ && !experts.empty()) start_bucket(L + 2 + l, experts, edp_);
  }
  // Embedding: the residual gradient, gathered back to all N rows under SP (ḡ backward).
  embed_.backward(grads_.wte.data<float>(), output_grad(), tokens_.data<int32_t>(), N);
  if (reduce_dp) start_bucket(L + 1, {{"wte", grads_.wte}}, dpcp_);
  if (finalize) finish_buckets();
}

// ---- data-parallel gradient buckets ---------------------------------------------------------

void Transformer::start_bucket(int bucket, const std::vector<NamedTensor>& grads,
                               comm::Communicator* group) {
  if (buckets_.empty()) buckets_.resize(2 * config_.n_layers + 2);
  Bucket& bk = buckets_[bucket];
  int64_t n = 0;
  for (const NamedTensor& g : grads) n += g.tensor.numel();
  if (!bk.buf.defined()) bk.buf = Tensor::empty({n});
  float* p = bk.buf.data<float>();
  for (const NamedTensor& g : grads) {
    std::memcpy(p, g.tensor.raw(), g.tensor.bytes());
    p += g.tensor.numel();
  }
  bk.grads = grads;
  bk.work = group->all_reduce_async(bk.buf.raw(), n, DType::kF32, comm::ReduceOp::kSum);
  // MPI progresses non-blocking collectives only inside MPI calls: poke the earlier buckets.
  for (Bucket& other : buckets_)
    if (&other != &bk && !other.work.done()) other.work.test();
}

void Transformer::finish_buckets() {
  for (Bucket& bk : buckets_) {
    if (bk.grads.empty()) continue;
    bk.work.wait();
    const float* p = bk.buf.data<float>();
    for (NamedTensor& g : bk.grads) {
      std::memcpy(g.tensor.raw(), p, g.tensor.bytes());
      p += g.tensor.numel();
    }
    bk.grads.clear();
  }
}

ActivationReport Transformer::activation_report() const {
  ActivationReport r;
  for (int l = 0; l < config_.n_layers; ++l) {
    size_t bytes = stash_.resid[l].bytes();
    if (mode_ != Recompute::kFull) bytes += stash_.blocks[l].bytes();
    r.per_layer.push_back(bytes);
  }
  r.transient = mode_ == Recompute::kFull ? stash_.transient.bytes() : 0;
  r.head = stash_.resid[config_.n_layers].bytes() + stash_.rstdf.bytes() + stash_.lnf.bytes() +
           stash_.logits.bytes() + stash_.ce_lse.bytes() + stash_.losses.bytes();
  for (const auto& m : moe_)
    if (m) r.moe += m->stash_bytes();
  return r;
}

std::vector<parallel::MoeMetrics> Transformer::moe_metrics() const {
  std::vector<parallel::MoeMetrics> out;
  for (const auto& m : moe_)
    if (m) out.push_back(m->metrics());
  return out;
}

double Transformer::flops_per_step() const {
  // Whole-model FLOPs of this rank's micro-batch over the full sequence (divide by t for one TP
  // rank's share).
  return config_.training_flops(b_, double(s_) * cp_size_);
}

}  // namespace grove
