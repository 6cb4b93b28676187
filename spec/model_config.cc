#include "spec/model_config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/json_fields.h"

namespace grove {

namespace {
int64_t count_parameters(const ModelConfig& c, int experts_per_token) {
  const int64_t h = c.d_model, hd = c.head_dim(), f = c.ffn(), fe = c.expert_ffn();
  const int64_t attn = h * c.n_heads * hd + 2 * h * c.kv_heads() * hd + c.n_heads * hd * h;
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

int64_t ModelConfig::num_parameters() const {
  return count_parameters(*this, moe.num_experts);
}
int64_t ModelConfig::active_parameters() const {
  return count_parameters(*this, moe.top_k);
}

double ModelConfig::training_flops(double batch, double seq) const {
  const double matmul_params = double(active_parameters()) - double(vocab_size) * d_model;
  const double attn = 2.0 * 2.0 * seq * seq * head_dim() * n_heads * batch * n_layers;
  return 6.0 * matmul_params * batch * seq + 3.0 * attn;
}

Status ModelConfig::Validate() const {
  auto err = [](const std::string& m) { return Status::Error("model config: " + m); };
  if (vocab_size < 2)
    return err("model.vocab_size must be >= 2 (got " + std::to_string(vocab_size) + ")");
  if (d_model <= 0) return err("model.d_model must be positive");
  if (n_layers <= 0) return err("model.n_layers must be positive");
  if (n_heads <= 0) return err("model.n_heads must be positive");
  if (d_model % n_heads != 0)
    return err("model.n_heads=" + std::to_string(n_heads) + " does not divide model.d_model=" +
               std::to_string(d_model) + "; choose heads that divide d_model");
  if (head_dim() % 2 != 0)
    return err("head dim d_model/n_heads=" + std::to_string(head_dim()) +
               " must be even for RoPE; change model.n_heads or model.d_model");
  if (n_kv_heads < 0 || kv_heads() > n_heads || n_heads % kv_heads() != 0)
    return err("model.n_kv_heads=" + std::to_string(n_kv_heads) +
               " must divide model.n_heads=" + std::to_string(n_heads) + " (0 means n_heads)");
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
  nlohmann::json moe = nlohmann::json::object();
  f.get("moe", &moe);
  GROVE_RETURN_IF_ERROR(f.finish());
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
