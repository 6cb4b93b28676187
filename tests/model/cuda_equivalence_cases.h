// The layout-equivalence cases of the CUDA-backend model (TransformerT<CudaBackend<float>>), shared
// by its two drivers:
//   cuda_parallel_equivalence_test.cc  ranks are MPI processes (the CUDA emulator under mpirun;
//                                      device groups or host groups), plus the CPU model's check
//                                      of the capacity / LSH layouts;
//   cuda_thread_equivalence_test.cc    ranks are threads of one process on one CUDA device (the
//                                      test-only thread transport, comm/thread_communicator.h),
//                                      so a machine with one GPU and no MPI runs every layout.
// Every rank builds the tp=1, cp=1, ep=1 model on the global batch and the sharded model of its
// layout from the same seed; the loss and every gradient shard must equal the matching slice of
// the single-rank model, fp32, within kTol / kCpTol / kCompressedTol (cuda_equivalence_cases.cc
// says why each is what it is).
//
// A case runs on every rank of the world at once (its collectives match across ranks). The case
// lists are functions of the world size, so both drivers run the same layouts at the same size.
// gtest assertions: EXPECT_* report and go on; an ASSERT_* returns from the case on that rank
// only, so a driver whose ranks share a process must end the others (the thread driver throws,
// which aborts the transport).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "parallel/moe_layer.h"
#include "spec/enums.h"
#include "spec/model_config.h"

namespace grove::equivalence {

// What the driver gives a case: this rank's world and the world a grid is split from.
struct Env {
  comm::Communicator* world = nullptr;
  // device_groups: the grid's collectives on the device buffers themselves; false: on host memory
  // (the model stages every collective through host memory). Called once per grid.
  std::function<std::shared_ptr<comm::Communicator>(bool device_groups)> grid_world;
};

struct Layout {
  int tp = 1, dp = 1;
  bool sp = false;
  Recompute mode = Recompute::kSelective;
  bool moe = false;
  bool device_groups = true;
  int cp = 1;
  CpAttention algo = CpAttention::kTree;
  int ep = 1;
  bool mla = false;  // multi-head latent attention (MlaConfig) instead of MHA
  std::string str() const;
};

// Capacity dropping and the LSH-compressed all-to-all at ep, compared with ep = 1 on the same data
// split (dp = world).
struct CompressedLayout {
  int ep = 1;
  bool lsh = false, capacity = false;
  bool device_groups = true;
  std::string str() const;
};

// The cases at a world size. `device`: device groups are available (false: MPI without device
// buffers; every case then runs over host groups).
std::vector<Layout> tensor_sequence_layouts(int world);  // tp {1,2,4} x SP x recompute
std::vector<Layout> device_group_layouts(int world);     // the same over device groups
std::vector<Layout> moe_tensor_layouts(int world);       // dropless MoE under tp + SP
std::vector<Layout> context_parallel_layouts(int world, bool device);  // cp {2,4} tree and ring
std::vector<Layout> expert_parallel_layouts(int world, bool device);   // ep {2,4} plain
std::vector<Layout> mla_layouts(int world, bool device);  // MLA: tp x SP, cp tree/ring, MoE
std::vector<CompressedLayout> compressed_layouts(int world, bool device);  // capacity, LSH

void run_layout(const Env& env, const Layout& layout);

// What a compressed layout computed, for a further check by the driver (the CPU model's).
struct CompressedResult {
  ModelConfig config;
  int s = 0, b = 0;
  std::vector<int32_t> tokens, targets;  // this rank's [s, b]
  float loss = 0, moe_loss = 0;
  std::vector<std::string> grad_names;
  std::vector<Tensor> grads;  // host copies, this rank's shards
  std::vector<parallel::MoeMetrics> metrics;
  std::vector<int64_t> experts_rows;  // per MoE layer: rows the experts ran (centroids with LSH)
};
CompressedResult run_compressed_layout(const Env& env, const CompressedLayout& layout);
// Relative tolerance of a compressed layout against ep = 1 (and against the CPU model).
double compressed_tolerance();

// The largest relative gradient error of this thread's cases since the last call (reset).
double take_worst();
// Records a relative error into take_worst's maximum.
void note_error(double rel);

}  // namespace grove::equivalence
