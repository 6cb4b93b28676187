// TrainConfig: everything a training run needs, read from one JSON file plus command-line
// overrides ("--set train.lr=3e-4"), validated in one place with messages that name the field.
// The worker runs it; the coordinator validates job specs and plans layouts with the same code.
// Choices are enums (spec/enums.h); their strings appear only in the JSON.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "spec/enums.h"
#include "spec/model_config.h"

namespace grove {

struct TrainOptions {
  int batch_size = 8;         // sequences per micro-batch
  int seq_len = 128;          // tokens per sequence (<= model.max_seq_len)
  int grad_accum = 1;         // micro-batches per optimizer step
  int steps = 200;            // optimizer steps
  float lr = 3e-3f;           // peak learning rate
  float min_lr = 3e-4f;       // floor of the cosine decay
  int warmup_steps = 20;      // linear warmup from 0 to lr
  float weight_decay = 0.1f;  // AdamW decoupled decay, on matrices only (not norms)
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float adam_eps = 1e-8f;
  float grad_clip = 1.0f;  // max global gradient norm; 0 disables clipping
  uint64_t seed = 1234;    // data order
  Recompute recompute = Recompute::kSelective;
  int eval_every = 50;         // steps between validation runs (0: only at the end)
  int eval_batches = 8;        // validation micro-batches per run
  int checkpoint_every = 100;  // steps between checkpoints (0: only at the end)
  int keep_checkpoints = 2;    // how many recent checkpoints to keep
  int threads = 0;             // OpenMP threads; 0 = all cores
  // Where the model computes: cpu (OpenBLAS + own kernels, every parallel layout) or cuda (one
  // GPU per rank, kernels/cuda, NCCL data parallelism; tp = cp = ep = 1 so far).
  Device device = Device::kCPU;
  // cuda only: bf16 (bf16 compute, fp32 master weights and gradients) or fp32. auto: bf16 on
  // cuda, fp32 on cpu (the CPU path computes in fp32 only).
  Precision precision = Precision::kAuto;
};

// The parallel layout: tp × cp × dp = world (the number of MPI ranks); spec/grid.h has the rank
// order and the groups.
struct ParallelOptions {
  int tp = 1;                                     // tensor parallel
  int cp = 1;                                     // context parallel
  int ep = 1;                                     // expert parallel (folded over tp·cp·dp)
  int dp = 0;                                     // data parallel; 0 = world / (tp · cp)
  bool sequence_parallel = true;                  // SP on top of TP (ignored at tp = 1)
  CpAttention cp_attention = CpAttention::kTree;  // attention across the CP group
};

struct DataOptions {
  std::string dir = "runs/data-brown-8192";  // prepared dataset (tokenizer.model, *.bin)
};

struct TrainConfig {
  ModelConfig model;
  TrainOptions train;
  DataOptions data;
  ParallelOptions parallel;
  std::string out_dir = "runs/demo";  // metrics.jsonl, checkpoints/, config.json

  Status Validate() const;
  // Checks the layout against the number of ranks and the model; resolves parallel.dp = 0.
  Status ResolveLayout(int world);
  nlohmann::json ToJson() const;
};

// Builds a config from defaults <- file (if non-empty) <- overrides ("a.b=value"; the value is
// parsed as JSON when it parses, else taken as a string). Unknown keys are errors.
StatusOr<TrainConfig> LoadTrainConfig(const std::string& path,
                                      const std::vector<std::string>& overrides);
StatusOr<TrainConfig> TrainConfigFromJson(const nlohmann::json& j);

// Why tensor-parallel size `tp` with context-parallel size `cp` cannot split `model` at sequence
// length `seq_len` ("" when it can), e.g. "tp=3 does not divide model.n_heads=8": tp must divide
// the heads, the kv heads, the SwiGLU hidden size, the vocabulary and, with sequence parallelism
// (`sp`), the sequence shard seq_len / cp. Used by TrainConfig::Validate and the layout planner.
std::string TensorParallelConflict(const ModelConfig& model, int seq_len, int tp, int cp, bool sp);

}  // namespace grove
