// Helpers shared by the coordinator tests: a temporary directory, a tiny job spec and a worker
// credential for a job.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "coordinator/job_manager.h"
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
  c.data.dir = "/tmp/grove-coordinator-tests/data";  // absolute, as the coordinator requires
  c.out_dir = "/tmp/grove-coordinator-tests/run";
  grove::v1::JobSpec spec;
  spec.set_name("tiny");
  spec.set_config_json(c.ToJson().dump());
  spec.mutable_parallel()->set_world_size(world);
  return spec;
}

// A worker credential for the job's current attempt, as its launcher gets it.
inline std::string WorkerToken(JobManager& m, const std::string& job_id) {
  grove::v1::IssueWorkerTokenRequest req;
  req.set_job_id(job_id);
  grove::v1::IssueWorkerTokenResponse resp;
  grpc::Status st = m.IssueWorkerToken(req, &resp);
  return st.ok() ? resp.worker_token() : "refused: " + st.error_message();
}

}  // namespace grove::coordinator::testing
