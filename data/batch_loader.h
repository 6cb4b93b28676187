// BatchLoader: deterministic, seeded, resumable batches of token windows from a TokenDataset.
//
// Dimensions: S = seq_len, B = batch_size (per data-parallel rank), D = dp_size, r = dp_rank.
// Windows: the dataset (N tokens) is cut into W = (N - 1) / S windows; window w covers tokens
// [w*S, w*S + S] (S + 1 tokens; consecutive windows share one boundary token, so every token
// after the first is a target exactly once per epoch).
// Order: epoch e visits the windows in a permutation seeded by derive_seed(seed, e) (core/rng.h;
// a fresh order each epoch), or in file order in sequential mode (shuffle = false).
// Global batch p of an epoch takes permuted windows [(p*D + r)*B, (p*D + r + 1)*B) on rank r;
// the windows left over at the end of an epoch (fewer than B*D) are skipped. The permutation
// uses grove::Rng and its own Fisher-Yates, so batches are bit-identical on every machine.
// Layout (docs/model.md#layout, sequence first): inputs and targets are [S, B] row-major,
// element (s, b) at s*B + b; inputs(s, b) = window_b[s], targets(s, b) = window_b[s + 1].
// State: (epoch, position = batches already taken in this epoch, seed). Restore(State()) makes
// the following batches bit-identical to those of an uninterrupted run.
// The loader keeps a pointer to the dataset: the dataset must outlive it.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <vector>

#include "core/status.h"
#include "data/token_file.h"

namespace grove::data {

struct LoaderOptions {
  int seq_len = 0;      // S, >= 1
  int batch_size = 0;   // B per rank, >= 1
  uint64_t seed = 0;    // epoch e's permutation is seeded by derive_seed(seed, e)
  bool shuffle = true;  // false: sequential windows in file order (validation)
  int dp_rank = 0;      // this rank's index in the data-parallel group
  int dp_size = 1;      // ranks sharing one global batch; each gets B different windows
};

struct LoaderState {
  int64_t epoch = 0;
  int64_t position = 0;  // batches already taken in `epoch`
  uint64_t seed = 0;
  bool operator==(const LoaderState&) const = default;
};

nlohmann::json LoaderStateToJson(const LoaderState& state);
// Error names the missing or mistyped field.
StatusOr<LoaderState> LoaderStateFromJson(const nlohmann::json& j);

class BatchLoader {
 public:
  // Error (naming the field or the dataset file) if options are invalid or the dataset is too
  // small for one batch.
  static StatusOr<BatchLoader> Create(const TokenDataset& dataset, const LoaderOptions& options);

  // Fills inputs and targets, each S*B int32 in [S, B] layout, and advances by one batch
  // (rolling over to the next epoch when this one is exhausted).
  void Next(int32_t* inputs, int32_t* targets);

  LoaderState State() const { return {epoch_, position_, options_.seed}; }
  // GROVE_CHECKs position <= batches_per_epoch().
  void Restore(const LoaderState& state);
  // Back to epoch 0, position 0 (e.g. before each validation pass).
  void Reset() { Restore({0, 0, options_.seed}); }

  int64_t num_windows() const { return num_windows_; }
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  const LoaderOptions& options() const { return options_; }
  // First token offset of column b of batch `position` in `epoch`, for this rank.
  int64_t WindowStart(int64_t epoch, int64_t position, int b) const;

 private:
  BatchLoader(const TokenDataset& dataset, const LoaderOptions& options);
  void BuildOrder(int64_t epoch) const;

  const TokenDataset* dataset_;
  LoaderOptions options_;
  int64_t num_windows_ = 0;
  int64_t batches_per_epoch_ = 0;
  int64_t epoch_ = 0;
  int64_t position_ = 0;
  mutable int64_t order_epoch_ = -1;    // epoch that order_ belongs to
  mutable std::vector<int64_t> order_;  // window visit order for order_epoch_
  std::vector<int32_t> window_;         // scratch, S + 1 tokens
};

}  // namespace grove::data
