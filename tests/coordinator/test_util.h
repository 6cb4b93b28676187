// Helpers shared by the coordinator tests: a temporary directory and a tiny job spec.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "proto/grove.pb.h"
#include "spec/train_config.h"

namespace grove::coordinator::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "grove-coord-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline grove::v1::JobSpec TinySpec(int world, int steps = 10) {
  TrainConfig c;
  c.model.vocab_size = 256;
  c.model.d_model = 32;
  c.model.n_layers = 1;
  c.model.n_heads = 2;
  c.model.max_seq_len = 32;
  c.train.batch_size = 2;
  c.train.seq_len = 16;
  c.train.steps = steps;
  c.train.warmup_steps = 1;
  grove::v1::JobSpec spec;
  spec.set_name("tiny");
  spec.set_config_json(c.ToJson().dump());
  spec.mutable_parallel()->set_world_size(world);
  return spec;
}

}  // namespace grove::coordinator::testing
