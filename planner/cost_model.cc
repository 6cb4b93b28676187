#include "planner/cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "planner/collectives.h"
#include "spec/memory.h"
#include "spec/train_config.h"

namespace grove::planner {

namespace {

// Seconds of one micro-batch on one rank, by share of the step.
struct Cost {
  double gemm = 0, attention = 0, memory = 0;  // compute
  double tp = 0, cp = 0, ep = 0;               // blocking collectives
  double compute() const { return gemm + attention + memory; }
  double total() const { return compute() + tp + cp + ep; }
  Cost& operator+=(const Cost& o) {
    gemm += o.gemm;
    attention += o.attention;
    memory += o.memory;
    tp += o.tp;
    cp += o.cp;
    ep += o.ep;
    return *this;
  }
  Cost operator*(double k) const {
    Cost c = *this;
    c.gemm *= k, c.attention *= k, c.memory *= k, c.tp *= k, c.cp *= k, c.ep *= k;
    return c;
  }
};

// Everything one rank's step is made of, sized once per (workload, layout, cluster).
class StepModel {
 public:
  StepModel(const Workload& w, const Layout& l, const ClusterSpec& c) : w_(w), l_(l), c_(c) {
    const ModelConfig& m = w.model;
    e_ = w.precision == Precision::kBf16 ? 2.0 : 4.0;
    peak_ = c.device.peak(w.precision);
    t_ = l.tp;
    S_ = w.seq_len;
    s_ = double(w.seq_len) / l.cp;
    b_ = l.micro_batch;
    N_ = s_ * b_;
    sp_ = l.sp && l.tp > 1;
    R_ = sp_ ? N_ / t_ : N_;
    h_ = m.d_model;
    d_ = m.head_dim();
    a_ = double(m.n_heads) / t_;
    qd_ = double(m.n_heads) * d_ / t_;
    kvd_ = double(m.kv_heads()) * d_ / t_;
    f_ = double(m.ffn()) / t_;
    fe_ = m.expert_ffn();
    V_ = double(m.vocab_size) / t_;
    E_ = m.moe.num_experts;
    k_ = m.moe.top_k;
    const int g = c.devices_per_node;
    // Rank order (spec/grid.h): tp fastest, then cp, then dp; the expert grid ep fastest; a
    // pipeline's stages outermost (Megatron's order).
    tp_g_ = SpanOf(l.tp, 1, g);
    cp_g_ = SpanOf(l.cp, l.tp, g);
    dpcp_g_ = SpanOf(l.cp * l.dp, l.tp, g);
    const int dense = l.tp * l.cp * l.dp;
    ep_g_ = SpanOf(l.ep, 1, g);
    edp_g_ = SpanOf(dense / l.ep, l.ep, g);
    stats_g_ = SpanOf(dense, 1, g);
    stage_crosses_nodes_ = dense >= g;
  }

  // Seconds of one GEMM of 2·M·N·K FLOPs at its size's efficiency:
  //   time = flops / (peak · gemm_max · flops / (flops + half)) = (flops + half) / (peak·gemm_max)
  double Gemm(double M, double N, double K) const {
    if (M <= 0 || N <= 0 || K <= 0) return 0.0;
    const KernelEfficiency& e = c_.device.efficiency;
    return (2.0 * M * N * K + e.gemm_half_flops) / (peak_ * e.gemm_max);
  }
  double MemoryPass(double bytes) const {
    return bytes / (c_.device.memory_bandwidth * c_.device.efficiency.memory);
  }
  bool KeepsProbs() const { return l_.recompute == Recompute::kNone && l_.cp == 1; }

  // The attention block's forward (dense and MoE blocks alike).
  Cost AttentionForward() const {
    Cost k;
    k.gemm = Gemm(N_, qd_, h_) + 2 * Gemm(N_, kvd_, h_) + Gemm(N_, h_, qd_);
    // Causal: half of the 4·S²·d FLOPs per head and sequence; the CP rank holds 1/cp of them.
    const double flops = 2.0 * S_ * S_ * d_ * a_ * b_ / l_.cp;
    k.attention = flops / (peak_ * c_.device.efficiency.attention);
    // rmsnorm (read x, write ln), residual add (read 2, write 1), RoPE on q and k (read+write).
    double elems = 2 * R_ * h_ + 3 * R_ * h_ + 2 * N_ * (qd_ + kvd_);
    if (KeepsProbs()) elems += b_ * a_ * S_ * S_;  // write P (fp32 on the CPU path)
    k.memory = MemoryPass(elems * e_);
    if (sp_) {
      k.tp = AllGatherTime(c_, tp_g_, N_ * h_ * e_) + ReduceScatterTime(c_, tp_g_, N_ * h_ * e_);
    } else if (t_ > 1) {
      k.tp = AllReduceTime(c_, tp_g_, N_ * h_ * e_);
    }
    k.cp = CpForward(k.attention);
    return k;
  }
  Cost AttentionBackward() const {
    Cost k;
    k.gemm = 2 * (Gemm(N_, qd_, h_) + 2 * Gemm(N_, kvd_, h_) + Gemm(N_, h_, qd_));
    const double fwd = 2.0 * S_ * S_ * d_ * a_ * b_ / l_.cp;
    // dV = PᵀdO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀQ: twice the forward; without kept P it is
    // re-formed from Q·Kᵀ and lse first (FlashAttention-2): 2.5×.
    k.attention = (KeepsProbs() ? 2.0 : 2.5) * fwd / (peak_ * c_.device.efficiency.attention);
    double elems = 2.5 * (5 * R_ * h_ + 2 * N_ * (qd_ + kvd_));
    elems += N_ * (2 * qd_ + 2 * kvd_);            // zeroing dq, dk, dv, datt
    if (KeepsProbs()) elems += b_ * a_ * S_ * S_;  // read P
    k.memory = MemoryPass(elems * e_);
    if (sp_) {  // output gradient and ln1 re-gathered, input gradient reduce-scattered
      k.tp =
          2 * AllGatherTime(c_, tp_g_, N_ * h_ * e_) + ReduceScatterTime(c_, tp_g_, N_ * h_ * e_);
    } else if (t_ > 1) {
      k.tp = AllReduceTime(c_, tp_g_, N_ * h_ * e_);
    }
    k.cp = CpBackward(k.attention);
    return k;
  }

  // Context-parallel attention's communication (docs/attention.md). Tree: blocking
  // collectives; ring: K/V passes overlapped with the attention compute, exposed beyond it.
  double CpForward(double attention_s) const {
    if (l_.cp <= 1) return 0.0;
    const double p = l_.cp, ce = 4.0;  // the CP kernels run in fp32 on the host
    if (w_.cp_attention == CpAttention::kTree)
      return AllGatherTime(c_, cp_g_, p * N_ * qd_ * ce) +
             AllReduceTime(c_, cp_g_, p * N_ * a_ * 4.0) +
             ReduceScatterTime(c_, cp_g_, p * N_ * (qd_ + a_) * ce);
    const double hop = PointToPointTime(c_, cp_g_.nodes() > 1, 2 * N_ * kvd_ * ce);
    return std::max(0.0, (p - 1) * hop - attention_s * (p - 1) / p);
  }
  double CpBackward(double attention_s) const {
    if (l_.cp <= 1) return 0.0;
    const double p = l_.cp, ce = 4.0;
    if (w_.cp_attention == CpAttention::kTree)
      return 3 * AllGatherTime(c_, cp_g_, p * N_ * qd_ * ce) +
             AllGatherTime(c_, cp_g_, p * N_ * a_ * 4.0) +
             ReduceScatterTime(c_, cp_g_, p * N_ * qd_ * ce);
    const double hop = PointToPointTime(c_, cp_g_.nodes() > 1, 4 * N_ * kvd_ * ce);
    return std::max(0.0, p * hop - attention_s * (p - 1) / p);
  }

  Cost DenseMlpForward() const {
    Cost k;
    k.gemm = 2 * Gemm(N_, f_, h_) + Gemm(N_, h_, f_);
    // rmsnorm, residual add, SwiGLU (read gate and up, write act).
    k.memory = MemoryPass((2 * R_ * h_ + 3 * R_ * h_ + 3 * N_ * f_) * e_);
    if (sp_)
      k.tp = AllGatherTime(c_, tp_g_, N_ * h_ * e_) + ReduceScatterTime(c_, tp_g_, N_ * h_ * e_);
    else if (t_ > 1)
      k.tp = AllReduceTime(c_, tp_g_, N_ * h_ * e_);
    return k;
  }
  Cost DenseMlpBackward() const {
    Cost k;
    k.gemm = 2 * (2 * Gemm(N_, f_, h_) + Gemm(N_, h_, f_));
    k.memory = MemoryPass((2.5 * (5 * R_ * h_ + 3 * N_ * f_) + 3 * N_ * f_ + N_ * h_) * e_);
    if (sp_)
      k.tp =
          2 * AllGatherTime(c_, tp_g_, N_ * h_ * e_) + ReduceScatterTime(c_, tp_g_, N_ * h_ * e_);
    else if (t_ > 1)
      k.tp = AllReduceTime(c_, tp_g_, N_ * h_ * e_);
    return k;
  }

  // (token, slot) rows one expert-parallel rank's experts compute: R·k balanced, times the
  // imbalance, over the LSH compression (the experts run on the centroids).
  double ExpertRows() const { return R_ * k_ * w_.expert_imbalance / w_.lsh_ratio; }
  double LocalExperts() const { return double(E_) / l_.ep; }
  double A2aBytes() const { return R_ * k_ * h_ * e_ * w_.expert_imbalance / w_.lsh_ratio; }

  Cost MoeForward() const {
    Cost k;
    const double rows = ExpertRows() / LocalExperts();  // per local expert
    k.gemm = Gemm(R_, E_, h_) + LocalExperts() * (2 * Gemm(rows, fe_, h_) + Gemm(rows, h_, fe_));
    // rmsnorm + residual, router softmax/top-k, permute and un-permute rows, expert SwiGLU,
    // weighted combine.
    k.memory = MemoryPass(
        (5 * R_ * h_ + 3 * R_ * E_ + 4 * R_ * k_ * h_ + 3 * ExpertRows() * fe_ + 2 * R_ * k_ * h_) *
        e_);
    if (w_.lsh_ratio > 1.0) k.memory += MemoryPass((R_ * k_ * h_ * 3) * e_);  // hash, centroids
    if (l_.ep > 1) {
      k.ep = AllReduceTime(c_, stats_g_, (2.0 * E_ + 4) * 8) +
             AllToAllTime(c_, ep_g_, E_ * 8.0 * (w_.lsh_ratio > 1.0 ? 2 : 1)) +
             2 * AllToAllTime(c_, ep_g_, A2aBytes());
    } else {
      k.ep = AllReduceTime(c_, stats_g_, (2.0 * E_ + 4) * 8);
    }
    return k;
  }
  Cost MoeBackward() const {
    Cost k;
    const double rows = ExpertRows() / LocalExperts();
    k.gemm =
        2 * (Gemm(R_, E_, h_) + LocalExperts() * (2 * Gemm(rows, fe_, h_) + Gemm(rows, h_, fe_)));
    k.memory =
        MemoryPass((2.5 * (5 * R_ * h_ + 3 * R_ * E_ + 6 * R_ * k_ * h_ + 3 * ExpertRows() * fe_) +
                    3 * ExpertRows() * fe_ + 2 * ExpertRows() * h_) *
                   e_);
    if (l_.ep > 1) k.ep = 2 * AllToAllTime(c_, ep_g_, A2aBytes());
    return k;
  }

  // Embedding (first stage) and the head: final norm, vocabulary-parallel LM head and
  // cross-entropy (last stage).
  Cost EmbeddingForward() const {
    Cost k;
    k.memory = MemoryPass(2 * N_ * h_ * e_);
    if (t_ > 1)
      k.tp =
          sp_ ? ReduceScatterTime(c_, tp_g_, N_ * h_ * e_) : AllReduceTime(c_, tp_g_, N_ * h_ * e_);
    return k;
  }
  Cost EmbeddingBackward() const {
    Cost k;
    k.memory = MemoryPass(3 * N_ * h_ * e_);
    if (sp_) k.tp = AllGatherTime(c_, tp_g_, N_ * h_ * e_);
    return k;
  }
  Cost HeadForward() const {
    Cost k;
    k.gemm = Gemm(N_, V_, h_);
    k.memory = MemoryPass((2 * R_ * h_ + 3 * N_ * V_) * e_);  // norm; softmax reads twice, lse
    if (t_ > 1)
      k.tp = (sp_ ? AllGatherTime(c_, tp_g_, N_ * h_ * e_) : 0.0) +
             3 * AllReduceTime(c_, tp_g_, N_ * 4.0);  // max, sum, target logit
    k.tp += AllReduceTime(c_, dpcp_g_, 16.0);         // the loss and valid-target sums
    return k;
  }
  Cost HeadBackward() const {
    Cost k;
    k.gemm = 2 * Gemm(N_, V_, h_);
    k.memory = MemoryPass((3 * N_ * V_ + 4 * R_ * h_ + N_ * h_) * e_);
    if (sp_)
      k.tp = ReduceScatterTime(c_, tp_g_, N_ * h_ * e_);
    else if (t_ > 1)
      k.tp = AllReduceTime(c_, tp_g_, N_ * h_ * e_);
    return k;
  }

  // Parameters of one layer on this rank: dense (summed over dp×cp; norms and router included)
  // and experts (summed over edp).
  double DenseParams(int layer) const {
    const ModelConfig& m = w_.model;
    double p = h_ * (qd_ + 2 * kvd_) + qd_ * h_ + 2 * h_;
    if (m.is_moe_layer(layer))
      p += double(E_) * h_;
    else
      p += 3 * h_ * f_;
    return p;
  }
  double ExpertParams(int layer) const {
    return w_.model.is_moe_layer(layer) ? LocalExperts() * 3 * h_ * fe_ : 0.0;
  }

  const Workload& w_;
  const Layout& l_;
  const ClusterSpec& c_;
  double e_, peak_, t_, S_, s_, b_, N_, R_, h_, d_, a_, qd_, kvd_, f_, fe_, V_;
  int E_, k_;
  bool sp_;
  GroupSpan tp_g_, cp_g_, dpcp_g_, ep_g_, edp_g_, stats_g_;
  bool stage_crosses_nodes_;
};

}  // namespace

std::string Layout::str() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "tp%d cp%d ep%d dp%d", tp, cp, ep, dp);
  std::string s = buf;
  if (pp > 1) {
    std::snprintf(buf, sizeof buf, " pp%d", pp);
    s += buf;
    if (pp_virtual > 1) {
      std::snprintf(buf, sizeof buf, "v%d", pp_virtual);
      s += buf;
    }
  }
  std::snprintf(buf, sizeof buf, " %s mb%dx%d", recompute_name(recompute), micro_batch, grad_accum);
  return s + buf;
}

double Prediction::part(const std::string& name) const {
  for (const StepPart& p : parts)
    if (p.name == name) return p.seconds;
  return 0.0;
}

ClusterSpec EffectiveCluster(const ClusterSpec& c, int ranks_per_node) {
  ClusterSpec e = c;
  if (c.shared_cores > 0 && ranks_per_node > c.shared_cores) {
    const double share = c.shared_cores / ranks_per_node;
    e.device.peak_fp32 *= share;
    e.device.peak_bf16 *= share;
    e.device.memory_bandwidth *= share;
  }
  if (c.intra_topology == IntraTopology::kShared && ranks_per_node > 1)
    e.intra.bandwidth = c.intra.bandwidth / ranks_per_node;
  return e;
}

Status CheckLayout(const Workload& w, const Layout& l, const ClusterSpec& c) {
  const ModelConfig& m = w.model;
  for (auto [name, v] : {std::pair<const char*, int>{"tp", l.tp},
                         {"cp", l.cp},
                         {"ep", l.ep},
                         {"dp", l.dp},
                         {"pp", l.pp},
                         {"pp_virtual", l.pp_virtual},
                         {"micro_batch", l.micro_batch},
                         {"grad_accum", l.grad_accum}})
    if (v < 1) return Status::Error(std::string(name) + " must be >= 1, got " + std::to_string(v));
  if (w.precision == Precision::kAuto)
    return Status::Error("the workload's precision must be fp32 or bf16 (resolve auto first)");
  if (w.precision == Precision::kBf16 && c.device.peak_bf16 <= 0)
    return Status::Error("cluster " + c.name + " has no bf16 peak (device.peak_tflops.bf16)");
  if (!(w.lsh_ratio >= 1.0)) return Status::Error("the LSH compression ratio must be >= 1");
  if (!(w.expert_imbalance >= 1.0)) return Status::Error("the expert imbalance must be >= 1");
  if (w.seq_len % l.cp != 0 || (l.cp > 1 && w.seq_len % (2 * l.cp) != 0))
    return Status::Error("cp=" + std::to_string(l.cp) + ": train.seq_len=" +
                         std::to_string(w.seq_len) + " must be a multiple of 2·cp (zigzag)");
  if (std::string why = TensorParallelConflict(m, w.seq_len, l.tp, l.cp, l.sp && l.tp > 1);
      !why.empty())
    return Status::Error(why);
  const int dense = l.tp * l.cp * l.dp;
  if (m.moe.num_experts > 0) {
    if (Status s = m.moe.Validate(l.ep); !s.ok()) return s;
    if (dense % l.ep != 0)
      return Status::Error("ep=" + std::to_string(l.ep) +
                           " does not divide tp·cp·dp=" + std::to_string(dense));
    if (l.tp > 1 && !l.sp)
      return Status::Error("an MoE model with tp=" + std::to_string(l.tp) +
                           " needs sequence parallelism");
  } else if (l.ep != 1) {
    return Status::Error("ep=" + std::to_string(l.ep) + " needs an MoE model (model.moe)");
  }
  if (m.n_layers % l.pp != 0 || (l.pp_virtual > 1 && m.n_layers % (l.pp * l.pp_virtual) != 0))
    return Status::Error("pp=" + std::to_string(l.pp) + " (x" + std::to_string(l.pp_virtual) +
                         " virtual) does not divide model.n_layers=" + std::to_string(m.n_layers));
  const int world = l.world();
  if (c.max_nodes > 0 && world > c.devices_per_node * c.max_nodes)
    return Status::Error("the layout needs " + std::to_string(world) + " devices; cluster " +
                         c.name + " has " + std::to_string(c.devices_per_node * c.max_nodes));
  if (world > c.devices_per_node && c.devices_per_node % l.tp != 0)
    return Status::Error("tp=" + std::to_string(l.tp) + " does not divide the cluster's " +
                         std::to_string(c.devices_per_node) +
                         " devices per node (a TP group must lie in one node)");
  return Status::Ok();
}

MemoryPerDevice PredictMemory(const Workload& w, const Layout& l) {
  const ModelConfig& m = w.model;
  MemoryLayout ml;
  ml.batch = l.micro_batch;
  ml.seq = w.seq_len / l.cp;
  ml.tp = l.tp;
  ml.sp = l.sp && l.tp > 1;
  ml.recompute = l.recompute;
  ml.ep = l.ep;
  const MemoryEstimate base = EstimateMemory(m, ml);
  // Activations: spec/memory.h's per-block bytes (fp32), the MoE layers' stash, the head. With
  // a 1F1B pipeline the first stage keeps pp micro-batches of L/pp layers: L layers' worth.
  const double act_scale = w.precision == Precision::kBf16 ? 0.5 : 1.0;
  double layers = 0, moe = 0;
  for (int i = 0; i < m.n_layers; ++i) {
    layers += double(ActivationBytesPerLayer(m, ml, m.is_moe_layer(i)));
    if (m.is_moe_layer(i)) moe += double(MoeExpectedStashBytes(m, ml)) * w.expert_imbalance;
  }
  MemoryPerDevice r;
  r.activations =
      act_scale * (layers + double(base.activations_transient) + double(base.activations_head));
  r.moe_buffers = act_scale * moe;
  // Parameters of this rank's shard (EstimateMemory's fp32 count), over pipeline stages.
  const double params = double(base.parameters) / 4.0 / l.pp;
  if (w.precision == Precision::kBf16) {
    // bf16 compute copy + fp32 master weights, fp32 gradients, AdamW m and v.
    const double shard = w.shard_optimizer ? l.dp * l.cp : 1;
    r.parameters = params * (2.0 + 4.0 / shard);
    r.gradients = params * 4.0;
    r.optimizer = params * 8.0 / shard;
  } else {
    const double shard = w.shard_optimizer ? l.dp * l.cp : 1;
    r.parameters = params * 4.0;
    r.gradients = params * 4.0;
    r.optimizer = params * 8.0 / shard;
  }
  r.total = r.activations + r.moe_buffers + r.parameters + r.gradients + r.optimizer;
  return r;
}

Prediction Predict(const Workload& w, const Layout& l, const ClusterSpec& cluster) {
  const ModelConfig& m = w.model;
  const int world = l.world();
  const ClusterSpec c = EffectiveCluster(cluster, std::min(world, cluster.devices_per_node));
  StepModel sm(w, l, c);

  // One micro-batch through this rank's layers (the slowest stage with a pipeline: the stage
  // with the head, or the one with the embedding when that is slower).
  const int L = m.n_layers, per_stage = L / l.pp;
  struct StageCost {
    Cost fwd, bwd, recompute;
    std::vector<std::pair<double, double>> dp_ranges;  // (backward time before, bytes) per range
    double dp_expert_bytes = 0;
  };
  auto stage = [&](int first, int last, bool embedding, bool head) {
    StageCost s;
    const Cost af = sm.AttentionForward(), ab = sm.AttentionBackward();
    const Cost mf = sm.DenseMlpForward(), mb = sm.DenseMlpBackward();
    const Cost ef = sm.MoeForward(), eb = sm.MoeBackward();
    if (embedding) s.fwd += sm.EmbeddingForward();
    if (head) s.fwd += sm.HeadForward();
    double bwd_so_far = 0;
    if (head) {
      s.bwd += sm.HeadBackward();
      bwd_so_far = s.bwd.total();
      s.dp_ranges.push_back({bwd_so_far, (sm.h_ + sm.h_ * sm.V_) * 4.0});
    }
    for (int i = last - 1; i >= first; --i) {
      const bool moe = m.is_moe_layer(i);
      const Cost fwd = [&] {
        Cost k = af;
        k += moe ? ef : mf;
        return k;
      }();
      Cost bwd = ab;
      bwd += moe ? eb : mb;
      s.fwd += fwd;
      if (l.recompute == Recompute::kFull) s.recompute += fwd;
      s.bwd += bwd;
      if (l.recompute == Recompute::kFull) bwd_so_far += fwd.total();
      bwd_so_far += bwd.total();
      s.dp_ranges.push_back({bwd_so_far, sm.DenseParams(i) * 4.0});
      s.dp_expert_bytes += sm.ExpertParams(i) * 4.0;
    }
    if (embedding) {
      s.bwd += sm.EmbeddingBackward();
      bwd_so_far += sm.EmbeddingBackward().total();
      s.dp_ranges.push_back({bwd_so_far, sm.h_ * sm.V_ * 4.0});
    }
    return s;
  };
  const bool pipelined = l.pp > 1;
  StageCost st = stage(pipelined ? L - per_stage : 0, L, !pipelined, true);
  if (pipelined) {
    StageCost first = stage(0, per_stage, true, false);
    if ((first.fwd.total() + first.bwd.total() + first.recompute.total()) >
        (st.fwd.total() + st.bwd.total() + st.recompute.total()))
      st = first;
  }
  Cost micro = st.fwd;
  micro += st.bwd;
  micro += st.recompute;

  // Data-parallel gradient sums on the last micro-batch: one all-reduce per layer range over
  // dp×cp (dense), the experts over edp; each starts when its block's backward ends. With
  // background progress they queue on one stream behind the backward; otherwise they all wait
  // for the final wait.
  double dp_total = 0, stream_end = 0;
  for (const auto& [ready, bytes] : st.dp_ranges) {
    const double t = AllReduceTime(c, sm.dpcp_g_, bytes);
    dp_total += t;
    stream_end = std::max(stream_end, ready) + t;
  }
  // Expert gradients: per MoE layer, summed over edp (queued after the dense ranges).
  const double expert_t = AllReduceTime(c, sm.edp_g_, st.dp_expert_bytes);
  dp_total += expert_t;
  stream_end += expert_t;
  const double backward_end = st.bwd.total() + st.recompute.total();
  const double dp_exposed =
      c.overlap_collectives ? std::max(0.0, stream_end - backward_end) : dp_total;
  // Replicated weights' gradients (norms, routers) summed over TP under SP, each layer.
  double tp_final = 0;
  if (sm.sp_) tp_final = per_stage * 3 * AllReduceTime(c, sm.tp_g_, sm.h_ * 4.0);

  // Optimizer: AdamW over the local parameters (memory-bound), the gradient norm's sum. A
  // sharded optimizer (distributed optimizer, FSDP) updates only its 1/(dp·cp) shard; the
  // reduce-scatter + all-gather that replace the all-reduce move the same bytes (dp reduction).
  const double params = PredictMemory(w, l).gradients / 4.0;
  const double opt_shard = w.shard_optimizer ? double(l.dp) * l.cp : 1.0;
  const double opt_bytes = params / opt_shard * (w.precision == Precision::kBf16 ? 38.0 : 36.0);
  const double optimizer =
      sm.MemoryPass(opt_bytes) + AllReduceTime(c, SpanOf(world, 1, c.devices_per_node), 8.0);

  // Pipeline: 1F1B over grad_accum micro-batches; bubble (pp − 1)/v micro-batch times, and one
  // activation send each way per micro-batch between stages.
  double bubble = 0, p2p = 0;
  if (pipelined) {
    bubble = double(l.pp - 1) / l.pp_virtual * micro.total();
    const double act = sm.R_ * sm.h_ * sm.e_;
    p2p = l.grad_accum * 2 * l.pp_virtual * PointToPointTime(c, sm.stage_crosses_nodes_, act);
  }

  Prediction p;
  p.layout = l;
  const double m_ = l.grad_accum;
  const Cost all = micro * m_;
  const Cost recompute = st.recompute * m_;
  p.parts = {{"gemm", all.gemm - recompute.gemm},
             {"attention", all.attention - recompute.attention},
             {"memory-bound", all.memory - recompute.memory},
             {"recompute", recompute.compute()},
             {"tp collectives", all.tp + tp_final},
             {"cp attention", all.cp},
             {"ep all-to-all", all.ep},
             {"dp reduction", dp_exposed},
             {"optimizer", optimizer},
             {"pipeline bubble", bubble},
             {"pipeline p2p", p2p}};
  p.step_s = 0;
  for (const StepPart& part : p.parts) p.step_s += part.seconds;
  p.dp_reduction_total_s = dp_total;
  const double global_batch = double(l.micro_batch) * l.dp * l.grad_accum;
  p.tokens_per_s = global_batch * w.seq_len / p.step_s;
  p.model_flops = m.training_flops(global_batch, w.seq_len);
  p.mfu = p.model_flops / (p.step_s * world * cluster.device.peak(w.precision));
  p.memory = PredictMemory(w, l);
  p.device_memory = cluster.device.memory_bytes;
  p.fits = p.memory.total <= kUsableMemoryFraction * cluster.device.memory_bytes;
  return p;
}

}  // namespace grove::planner
