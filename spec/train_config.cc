#include "spec/train_config.h"

#include <fstream>

#include "core/json_fields.h"
#include "spec/grid.h"

namespace grove {

namespace {

nlohmann::json train_to_json(const TrainOptions& t) {
  return {{"batch_size", t.batch_size},
          {"seq_len", t.seq_len},
          {"grad_accum", t.grad_accum},
          {"steps", t.steps},
          {"lr", t.lr},
          {"min_lr", t.min_lr},
          {"warmup_steps", t.warmup_steps},
          {"weight_decay", t.weight_decay},
          {"beta1", t.beta1},
          {"beta2", t.beta2},
          {"adam_eps", t.adam_eps},
          {"grad_clip", t.grad_clip},
          {"seed", t.seed},
          {"recompute", recompute_name(t.recompute)},
          {"eval_every", t.eval_every},
          {"eval_batches", t.eval_batches},
          {"checkpoint_every", t.checkpoint_every},
          {"keep_checkpoints", t.keep_checkpoints},
          {"threads", t.threads},
          {"device", device_name(t.device)},
          {"precision", precision_name(t.precision)}};
}

Status train_from_json(const nlohmann::json& j, TrainOptions* t) {
  JsonFields f(j, "train");
  f.get("batch_size", &t->batch_size);
  f.get("seq_len", &t->seq_len);
  f.get("grad_accum", &t->grad_accum);
  f.get("steps", &t->steps);
  f.get("lr", &t->lr);
  f.get("min_lr", &t->min_lr);
  f.get("warmup_steps", &t->warmup_steps);
  f.get("weight_decay", &t->weight_decay);
  f.get("beta1", &t->beta1);
  f.get("beta2", &t->beta2);
  f.get("adam_eps", &t->adam_eps);
  f.get("grad_clip", &t->grad_clip);
  f.get("seed", &t->seed);
  f.get_parsed("recompute", &t->recompute, parse_recompute);
  f.get("eval_every", &t->eval_every);
  f.get("eval_batches", &t->eval_batches);
  f.get("checkpoint_every", &t->checkpoint_every);
  f.get("keep_checkpoints", &t->keep_checkpoints);
  f.get("threads", &t->threads);
  f.get_parsed("device", &t->device, parse_device);
  f.get_parsed("precision", &t->precision, parse_precision);
  return f.finish();
}

// Sets j[a][b]... = value for a dotted key, creating objects on the way.
Status apply_override(nlohmann::json* j, const std::string& kv) {
  const size_t eq = kv.find('=');
  if (eq == std::string::npos || eq == 0)
    return Status::Error("override '" + kv +
                         "' must look like section.key=value (e.g. train.lr=1e-3)");
  const std::string key = kv.substr(0, eq), raw = kv.substr(eq + 1);
  nlohmann::json value = nlohmann::json::parse(raw, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = raw;  // a bare string such as recompute=full
  nlohmann::json* node = j;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    const std::string part =
        key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty()) return Status::Error("override '" + kv + "' has an empty key component");
    if (dot == std::string::npos) {
      (*node)[part] = value;
      return Status::Ok();
    }
    if (!node->contains(part)) (*node)[part] = nlohmann::json::object();
    node = &(*node)[part];
    if (!node->is_object())
      return Status::Error("override '" + kv + "': '" + part + "' is not a section");
    start = dot + 1;
  }
}

}  // namespace

Status TrainConfig::Validate() const {
  GROVE_RETURN_IF_ERROR(model.Validate());
  auto err = [](const std::string& m) { return Status::Error("train config: " + m); };
  const TrainOptions& t = train;
  if (t.batch_size <= 0) return err("train.batch_size must be positive");
  if (t.seq_len <= 0) return err("train.seq_len must be positive");
  if (t.seq_len > model.max_seq_len)
    return err("train.seq_len=" + std::to_string(t.seq_len) +
               " is longer than model.max_seq_len=" + std::to_string(model.max_seq_len) +
               " (the RoPE table size); raise model.max_seq_len or lower train.seq_len");
  if (t.grad_accum <= 0) return err("train.grad_accum must be positive");
  if (t.steps <= 0) return err("train.steps must be positive");
  if (!(t.lr > 0)) return err("train.lr must be positive");
  if (t.min_lr < 0 || t.min_lr > t.lr) return err("train.min_lr must be in [0, train.lr]");
  if (t.warmup_steps < 0) return err("train.warmup_steps must be >= 0");
  if (t.weight_decay < 0) return err("train.weight_decay must be >= 0");
  if (!(t.beta1 >= 0 && t.beta1 < 1)) return err("train.beta1 must be in [0, 1)");
  if (!(t.beta2 >= 0 && t.beta2 < 1)) return err("train.beta2 must be in [0, 1)");
  if (!(t.adam_eps > 0)) return err("train.adam_eps must be positive");
  if (t.grad_clip < 0) return err("train.grad_clip must be >= 0 (0 disables clipping)");
  if (t.eval_every < 0) return err("train.eval_every must be >= 0");
  if (t.eval_batches <= 0) return err("train.eval_batches must be positive");
  if (t.checkpoint_every < 0) return err("train.checkpoint_every must be >= 0");
  if (t.keep_checkpoints <= 0) return err("train.keep_checkpoints must be >= 1");
  if (t.threads < 0) return err("train.threads must be >= 0 (0 = all cores)");
  // train.precision=bf16 on train.device=cpu needs AVX512_BF16 or AMX-BF16 on the workers' CPUs:
  // checked where the model is built (worker/training_model.cc), since the coordinator that
  // validates the config may run on another machine.
  if (t.device == Device::kCUDA) {
#ifndef GROVE_HAVE_CUDA
    return err(
        "train.device=cuda but this build has no CUDA support: rebuild with "
        "-DGROVE_CUDA=ON on a machine with the CUDA toolkit, or set train.device=cpu");
#endif
  }
  if (data.dir.empty()) return err("data.dir must name the prepared dataset directory");
  const ParallelOptions& p = parallel;
  if (p.tp < 1 || p.cp < 1 || p.ep < 1 || p.dp < 0)
    return err("parallel.tp, parallel.cp and parallel.ep must be >= 1 and parallel.dp >= 0");
  if (p.cp > 1 && train.seq_len % (2 * p.cp) != 0)
    return err("context parallelism cuts the sequence into 2·cp chunks: train.seq_len=" +
               std::to_string(train.seq_len) +
               " is not divisible by 2 × parallel.cp=" + std::to_string(2 * p.cp));
  if (std::string why =
          TensorParallelConflict(model, train.seq_len, p.tp, p.cp, p.sequence_parallel && p.tp > 1);
      !why.empty())
    return err("parallel." + why);
  if (p.ep > 1 && model.moe.num_experts == 0)
    return err("parallel.ep=" + std::to_string(p.ep) +
               " needs a mixture-of-experts model: set model.moe.num_experts");
  if (model.moe.num_experts > 0 && model.moe.num_experts % p.ep != 0)
    return err("model.moe.num_experts=" + std::to_string(model.moe.num_experts) +
               " is not divisible by parallel.ep=" + std::to_string(p.ep));
  if (model.moe.num_experts > 0 && p.tp > 1 && !p.sequence_parallel)
    return err("MoE with parallel.tp=" + std::to_string(p.tp) +
               " needs parallel.sequence_parallel=true (experts must see distinct tokens)");
  if (p.dp > 0 && train.batch_size % p.dp != 0)
    return err("train.batch_size=" + std::to_string(train.batch_size) +
               " (global) is not divisible by parallel.dp=" + std::to_string(p.dp));
  if (out_dir.empty()) return err("out_dir must not be empty");
  return Status::Ok();
}

Status TrainConfig::ResolveLayout(int world) {
  ParallelOptions& p = parallel;
  if (p.dp == 0 && p.tp >= 1 && p.cp >= 1) {  // smaller sizes: validate() names them
    if (world % (p.tp * p.cp) != 0)
      return Status::Error("parallel.tp=" + std::to_string(p.tp) +
                           " × parallel.cp=" + std::to_string(p.cp) + " does not divide the " +
                           std::to_string(world) + " ranks");
    p.dp = world / (p.tp * p.cp);
  }
  if (Status s = parallel::validate({world, p.tp, p.cp, p.ep, p.dp}); !s.ok())
    return Status::Error("parallel: " + s.message() + " (world: the number of MPI ranks)");
  return Validate();
}

nlohmann::json TrainConfig::ToJson() const {
  return {{"model", ModelConfigToJson(model)},
          {"train", train_to_json(train)},
          {"data", {{"dir", data.dir}}},
          {"parallel",
           {{"tp", parallel.tp},
            {"cp", parallel.cp},
            {"ep", parallel.ep},
            {"dp", parallel.dp},
            {"sequence_parallel", parallel.sequence_parallel},
            {"cp_attention", cp_attention_name(parallel.cp_attention)}}},
          {"out_dir", out_dir}};
}

StatusOr<TrainConfig> TrainConfigFromJson(const nlohmann::json& j) {
  TrainConfig c;
  JsonFields top(j, "config");
  nlohmann::json model = nlohmann::json::object(), train = nlohmann::json::object(),
                 data = nlohmann::json::object(), parallel = nlohmann::json::object();
  top.get("model", &model);
  top.get("train", &train);
  top.get("data", &data);
  top.get("parallel", &parallel);
  top.get("out_dir", &c.out_dir);
  GROVE_RETURN_IF_ERROR(top.finish());
  GROVE_RETURN_IF_ERROR(ModelConfigFromJson(model, &c.model));
  GROVE_RETURN_IF_ERROR(train_from_json(train, &c.train));
  JsonFields d(data, "data");
  d.get("dir", &c.data.dir);
  GROVE_RETURN_IF_ERROR(d.finish());
  JsonFields p(parallel, "parallel");
  p.get("tp", &c.parallel.tp);
  p.get("cp", &c.parallel.cp);
  p.get("ep", &c.parallel.ep);
  p.get("dp", &c.parallel.dp);
  p.get("sequence_parallel", &c.parallel.sequence_parallel);
  p.get_parsed("cp_attention", &c.parallel.cp_attention, parse_cp_attention);
  GROVE_RETURN_IF_ERROR(p.finish());
  GROVE_RETURN_IF_ERROR(c.Validate());
  return c;
}

std::string TensorParallelConflict(const ModelConfig& m, int seq_len, int tp, int cp, bool sp) {
  auto bad = [&](const std::string& what, int v) {
    return "tp=" + std::to_string(tp) + " does not divide " + what + "=" + std::to_string(v);
  };
  if (m.n_heads % tp != 0) return bad("model.n_heads", m.n_heads);
  if (m.kv_heads() % tp != 0) return bad("the kv heads (model.n_kv_heads)", m.kv_heads());
  if (m.ffn() % tp != 0) return bad("the SwiGLU hidden size (model.ffn_hidden)", m.ffn());
  if (m.vocab_size % tp != 0) return bad("model.vocab_size", m.vocab_size);
  if (sp && (seq_len / cp) % tp != 0)
    return bad("the sequence shard train.seq_len / parallel.cp", seq_len / cp);
  return "";
}

StatusOr<TrainConfig> LoadTrainConfig(const std::string& path,
                                      const std::vector<std::string>& overrides) {
  nlohmann::json j = nlohmann::json::object();
  if (!path.empty()) {
    std::ifstream in(path);
    if (!in) return Status::Error("cannot read config file " + path + " (does it exist?)");
    j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
    if (j.is_discarded() || !j.is_object())
      return Status::Error("config file " + path + " is not a valid JSON object");
  }
  for (const std::string& kv : overrides) GROVE_RETURN_IF_ERROR(apply_override(&j, kv));
  return TrainConfigFromJson(j);
}

}  // namespace grove
