#include "model/config.h"

#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/json_fields.h"

namespace grove {

int64_t ModelConfig::num_parameters() const {
  const int64_t h = d_model, hd = head_dim(), f = ffn();
  const int64_t attn = h * n_heads * hd + 2 * h * kv_heads() * hd + n_heads * hd * h;
  const int64_t mlp = 3 * h * f;
  return 2 * int64_t(vocab_size) * h + n_layers * (attn + mlp + 2 * h) + h;
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
  return Status::Ok();
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::kNone:
      return "none";
    case Recompute::kSelective:
      return "selective";
    case Recompute::kFull:
      return "full";
  }
  return "?";
}

StatusOr<Recompute> parse_recompute(const std::string& s) {
  if (s == "none") return Recompute::kNone;
  if (s == "selective") return Recompute::kSelective;
  if (s == "full") return Recompute::kFull;
  return Status::Error("recompute must be one of none | selective | full (got '" + s + "')");
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
  return f.finish();
}

nlohmann::json ModelConfigToJson(const ModelConfig& c) {
  return {{"vocab_size", c.vocab_size},
          {"d_model", c.d_model},
          {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads},
          {"ffn_hidden", c.ffn_hidden},
          {"max_seq_len", c.max_seq_len},
          {"rope_theta", c.rope_theta},
          {"norm_eps", c.norm_eps},
          {"init_std", c.init_std},
          {"seed", c.seed}};
}

}  // namespace grove
