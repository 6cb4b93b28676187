#include "spec/model_config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/json_fields.h"

namespace grove {

namespace {
// Attention matrices and (MLA) latent norms of one block.
int64_t attention_parameters(const ModelConfig& c) {
  const int64_t h = c.d_model, a = c.n_heads;
  if (!c.is_mla()) {
    const int64_t hd = c.head_dim();
    return h * a * hd + 2 * h * c.kv_heads() * hd + a * hd * h;
  }
  const int64_t qk = c.attn_qk_dim(), kvr = c.mla_kv_rank(), qr = c.mla.q_lora_rank;
  const int64_t q = qr > 0 ? qr * a * qk : h * a * qk;  // wq_b or wq
  return c.mla_replicated_parameters() + q + kvr * a * c.mla_nope_dim() + kvr * a * c.mla_v_dim() +
         h * a * c.mla_v_dim();  // wk_b, wv_b, wo
}

int64_t count_parameters(const ModelConfig& c, int experts_per_token) {
  const int64_t h = c.d_model, f = c.ffn(), fe = c.expert_ffn();
  const int64_t attn = attention_parameters(c);
  int64_t n = 2 * int64_t(c.vocab_size) * h + h;
  for (int l = 0; l < c.n_layers; ++l) {
    n += attn + 2 * h;
    if (c.is_moe_layer(l))
      n += int64_t(c.moe.num_experts) * h + experts_per_token * 3 * h * fe;
    else
      n += 3 * h * f;
  }
  return n;
}
}  // namespace

int64_t ModelConfig::mla_replicated_parameters() const {
  if (!is_mla()) return 0;
  const int64_t h = d_model, qr = mla.q_lora_rank, kvr = mla_kv_rank();
  return (qr > 0 ? h * qr + qr : 0) + h * kvr + kvr + h * mla_rope_dim();  // wq_a, q_norm, ...
}

int64_t ModelConfig::num_parameters() const {
  return count_parameters(*this, moe.num_experts);
}
int64_t ModelConfig::active_parameters() const {
  return count_parameters(*this, moe.top_k);
}

double ModelConfig::training_flops(double batch, double seq) const {
  const double matmul_params = double(active_parameters()) - double(vocab_size) * d_model;
  // QK^T over the q/k head width and PV over the value width (MHA: both head_dim()).
  const double attn =
      2.0 * seq * seq * double(attn_qk_dim() + attn_v_dim()) * n_heads * batch * n_layers;
  return 6.0 * matmul_params * batch * seq + 3.0 * attn;
}

Status ModelConfig::Validate() const {
  auto err = [](const std::string& m) { return Status::Error("model config: " + m); };
  if (vocab_size < 2)
    return err("model.vocab_size must be >= 2 (got " + std::to_string(vocab_size) + ")");
  if (d_model <= 0) return err("model.d_model must be positive");
  if (n_layers <= 0) return err("model.n_layers must be positive");
  if (n_heads <= 0) return err("model.n_heads must be positive");
  if (is_mla()) return ValidateMla();
  if (d_model % n_heads != 0)
    return err("model.n_heads=" + std::to_string(n_heads) + " does not divide model.d_model=" +
               std::to_string(d_model) + "; choose heads that divide d_model");
  if (head_dim() % 2 != 0)
    return err("head dim d_model/n_heads=" + std::to_string(head_dim()) +
               " must be even for RoPE; change model.n_heads or model.d_model");
  if (n_kv_heads < 0 || kv_heads() > n_heads || n_heads % kv_heads() != 0)
    return err("model.n_kv_heads=" + std::to_string(n_kv_heads) +
               " must divide model.n_heads=" + std::to_string(n_heads) + " (0 means n_heads)");
  return ValidateRest();
}

Status ModelConfig::ValidateMla() const {
  auto err = [](const std::string& m) { return Status::Error("model config: " + m); };
  if (n_kv_heads != 0)
    return err("model.n_kv_heads=" + std::to_string(n_kv_heads) +
               " applies to model.attention=mha only; MLA shares one latent across all heads: "
               "remove model.n_kv_heads or set it to 0");
  const MlaOptions& m = mla;
  const bool any_default = m.kv_lora_rank == 0 || m.qk_nope_head_dim == 0 ||
                           m.qk_rope_head_dim == 0 || m.v_head_dim == 0;
  if (any_default && d_model % n_heads != 0)
    return err(
        "model.mla dimensions left 0 default to multiples of d_model/n_heads, but "
        "model.n_heads=" +
        std::to_string(n_heads) + " does not divide model.d_model=" + std::to_string(d_model) +
        "; set every model.mla dimension explicitly");
  const std::pair<const char*, int> dims[] = {{"q_lora_rank", m.q_lora_rank},
                                              {"kv_lora_rank", m.kv_lora_rank},
                                              {"qk_nope_head_dim", m.qk_nope_head_dim},
                                              {"qk_rope_head_dim", m.qk_rope_head_dim},
                                              {"v_head_dim", m.v_head_dim}};
  for (const auto& [name, v] : dims)
    if (v < 0)
      return err(std::string("model.mla.") + name + "=" + std::to_string(v) +
                 " must be >= 0 (0: the default)");
  if (mla_kv_rank() < 1 || mla_nope_dim() < 1 || mla_v_dim() < 1)
    return err(
        "model.mla.kv_lora_rank, qk_nope_head_dim and v_head_dim must resolve to >= 1 "
        "(d_model/n_heads is too small for the defaults: set them explicitly)");
  if (mla_rope_dim() < 2 || mla_rope_dim() % 2 != 0)
    return err("model.mla.qk_rope_head_dim=" + std::to_string(mla_rope_dim()) +
               " must be even and >= 2 (RoPE rotates pairs)");
  if (mla_v_dim() > attn_qk_dim())
    return err(
        "model.mla.v_head_dim=" + std::to_string(mla_v_dim()) +
        " must be <= qk_nope_head_dim + qk_rope_head_dim = " + std::to_string(attn_qk_dim()) +
        " (values are zero-padded to the query/key head width inside attention)");
  return ValidateRest();
}

Status ModelConfig::ValidateRest() const {
  auto err = [](const std::string& m) { return Status::Error("model config: " + m); };
  if (ffn_hidden < 0) return err("model.ffn_hidden must be >= 0 (0 = automatic)");
  if (max_seq_len <= 0) return err("model.max_seq_len must be positive");
  if (!(rope_theta > 1.0f)) return err("model.rope_theta must be > 1");
  if (!(norm_eps > 0.0f)) return err("model.norm_eps must be > 0");
  if (!(init_std > 0.0f)) return err("model.init_std must be > 0");
  if (moe.num_experts < 0) return err("model.moe.num_experts must be >= 0 (0: dense model)");
  if (moe.num_experts > 0) {
    if (moe.top_k < 1 || moe.top_k > moe.num_experts)
      return err("model.moe.top_k=" + std::to_string(moe.top_k) + " must be in [1, " +
                 "model.moe.num_experts=" + std::to_string(moe.num_experts) + "]");
    if (moe.every < 1) return err("model.moe.every must be >= 1");
    if (moe.expert_ffn < 0) return err("model.moe.expert_ffn must be >= 0 (0: model ffn)");
    if (moe.aux_loss_coef < 0 || moe.z_loss_coef < 0)
      return err("model.moe.aux_loss_coef and model.moe.z_loss_coef must be >= 0");
    if (moe.capacity_factor < 0) return err("model.moe.capacity_factor must be >= 0 (0: dropless)");
    const LshOptions& q = moe.lsh;
    if (q.enabled) {
      if (q.num_hashes < 1) return err("model.moe.lsh.num_hashes must be >= 1");
      if (q.rotation_dim < 1 || q.rotation_dim > d_model)
        return err("model.moe.lsh.rotation_dim=" + std::to_string(q.rotation_dim) +
                   " must be in [1, model.d_model=" + std::to_string(d_model) + "]");
      if (q.num_hashes * std::log2(2.0 * q.rotation_dim) > 64.0)
        return err("model.moe.lsh.num_hashes x log2(2 rotation_dim) must be <= 64 (id bits)");
      if (q.min_tokens < 0) return err("model.moe.lsh.min_tokens must be >= 0");
      if (!(q.target_compression == 0.0 || q.target_compression >= 1.0))
        return err("model.moe.lsh.target_compression must be 0 (all num_hashes codes) or >= 1");
      if (q.warmup_steps < 0) return err("model.moe.lsh.warmup_steps must be >= 0");
    }
  }
  return Status::Ok();
}

Status ModelConfigFromJson(const nlohmann::json& j, ModelConfig* c) {
  JsonFields f(j, "model");
  f.get("vocab_size", &c->vocab_size);
  f.get("d_model", &c->d_model);
  f.get("n_layers", &c->n_layers);
  f.get("n_heads", &c->n_heads);
  f.get("n_kv_heads", &c->n_kv_heads);
  f.get("ffn_hidden", &c->ffn_hidden);
  f.get("max_seq_len", &c->max_seq_len);
  f.get("rope_theta", &c->rope_theta);
  f.get("norm_eps", &c->norm_eps);
  f.get("init_std", &c->init_std);
  f.get("seed", &c->seed);
  f.get_parsed("attention", &c->attention, parse_attention);
  nlohmann::json mla = nlohmann::json::object();
  f.get("mla", &mla);
  nlohmann::json moe = nlohmann::json::object();
  f.get("moe", &moe);
  GROVE_RETURN_IF_ERROR(f.finish());
  JsonFields a(mla, "model.mla");
  a.get("q_lora_rank", &c->mla.q_lora_rank);
  a.get("kv_lora_rank", &c->mla.kv_lora_rank);
  a.get("qk_nope_head_dim", &c->mla.qk_nope_head_dim);
  a.get("qk_rope_head_dim", &c->mla.qk_rope_head_dim);
  a.get("v_head_dim", &c->mla.v_head_dim);
  GROVE_RETURN_IF_ERROR(a.finish());
  JsonFields m(moe, "model.moe");
  m.get("num_experts", &c->moe.num_experts);
  m.get("top_k", &c->moe.top_k);
  m.get("every", &c->moe.every);
  m.get("expert_ffn", &c->moe.expert_ffn);
  m.get("aux_loss_coef", &c->moe.aux_loss_coef);
  m.get("z_loss_coef", &c->moe.z_loss_coef);
  m.get("capacity_factor", &c->moe.capacity_factor);
  nlohmann::json lsh = nlohmann::json::object();
  m.get("lsh", &lsh);
  GROVE_RETURN_IF_ERROR(m.finish());
  JsonFields q(lsh, "model.moe.lsh");
  q.get("enabled", &c->moe.lsh.enabled);
  q.get("num_hashes", &c->moe.lsh.num_hashes);
  q.get("rotation_dim", &c->moe.lsh.rotation_dim);
  q.get("min_tokens", &c->moe.lsh.min_tokens);
  q.get("seed", &c->moe.lsh.seed);
  q.get("center", &c->moe.lsh.center);
  q.get("target_compression", &c->moe.lsh.target_compression);
  q.get("warmup_steps", &c->moe.lsh.warmup_steps);
  q.get("compensate", &c->moe.lsh.compensate);
  return q.finish();
}

nlohmann::json ModelConfigToJson(const ModelConfig& c) {
  nlohmann::json j = {{"vocab_size", c.vocab_size},
                      {"d_model", c.d_model},
                      {"n_layers", c.n_layers},
                      {"n_heads", c.n_heads},
                      {"n_kv_heads", c.n_kv_heads},
                      {"ffn_hidden", c.ffn_hidden},
                      {"max_seq_len", c.max_seq_len},
                      {"rope_theta", c.rope_theta},
                      {"norm_eps", c.norm_eps},
                      {"init_std", c.init_std},
                      {"seed", c.seed},
                      {"moe",
                       {{"num_experts", c.moe.num_experts},
                        {"top_k", c.moe.top_k},
                        {"every", c.moe.every},
                        {"expert_ffn", c.moe.expert_ffn},
                        {"aux_loss_coef", c.moe.aux_loss_coef},
                        {"z_loss_coef", c.moe.z_loss_coef},
                        {"capacity_factor", c.moe.capacity_factor}}}};
  // Written only for MLA, so configs (and checkpoints) of MHA models are unchanged.
  if (c.is_mla()) {
    j["attention"] = attention_name(c.attention);
    j["mla"] = {{"q_lora_rank", c.mla.q_lora_rank},
                {"kv_lora_rank", c.mla.kv_lora_rank},
                {"qk_nope_head_dim", c.mla.qk_nope_head_dim},
                {"qk_rope_head_dim", c.mla.qk_rope_head_dim},
                {"v_head_dim", c.mla.v_head_dim}};
  }
  // Written only when on, so configs (and checkpoints) of models without it are unchanged.
  if (c.moe.lsh.enabled)
    j["moe"]["lsh"] = {{"enabled", c.moe.lsh.enabled},
                       {"num_hashes", c.moe.lsh.num_hashes},
                       {"rotation_dim", c.moe.lsh.rotation_dim},
                       {"min_tokens", c.moe.lsh.min_tokens},
                       {"seed", c.moe.lsh.seed}};
  // The method's later keys only when they differ from their defaults, so earlier LSH configs
  // (and their checkpoints' config) keep their JSON.
  const LshOptions d;
  if (c.moe.lsh.enabled && c.moe.lsh.center != d.center)
    j["moe"]["lsh"]["center"] = c.moe.lsh.center;
  if (c.moe.lsh.enabled && c.moe.lsh.target_compression != d.target_compression)
    j["moe"]["lsh"]["target_compression"] = c.moe.lsh.target_compression;
  if (c.moe.lsh.enabled && c.moe.lsh.warmup_steps != d.warmup_steps)
    j["moe"]["lsh"]["warmup_steps"] = c.moe.lsh.warmup_steps;
  if (c.moe.lsh.enabled && c.moe.lsh.compensate != d.compensate)
    j["moe"]["lsh"]["compensate"] = c.moe.lsh.compensate;
  return j;
}

}  // namespace grove
