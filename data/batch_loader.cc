#include "data/batch_loader.h"

#include <nlohmann/json.hpp>
#include <numeric>

#include "core/rng.h"

namespace grove::data {
namespace {

// Uniform in [0, n), n > 0, without modulo bias (rejection sampling). grove::Rng is SplitMix64,
// fully specified, unlike std:: distributions, which differ between standard libraries.
uint64_t Below(Rng& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do {
    x = rng.next_u64();
  } while (x >= limit);
  return x % n;
}

}  // namespace

nlohmann::json LoaderStateToJson(const LoaderState& state) {
  return {{"epoch", state.epoch}, {"position", state.position}, {"seed", state.seed}};
}

StatusOr<LoaderState> LoaderStateFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return Status::Error("loader state: expected a JSON object");
  LoaderState s;
  for (const char* key : {"epoch", "position", "seed"}) {
    if (!j.contains(key) || !j.at(key).is_number_integer()) {
      return Status::Error(std::string("loader state: field \"") + key +
                           "\" is missing or not an integer");
    }
  }
  s.epoch = j.at("epoch").get<int64_t>();
  s.position = j.at("position").get<int64_t>();
  s.seed = j.at("seed").get<uint64_t>();
  if (s.epoch < 0 || s.position < 0) {
    return Status::Error("loader state: \"epoch\" and \"position\" must be >= 0");
  }
  return s;
}

StatusOr<BatchLoader> BatchLoader::Create(const TokenDataset& dataset,
                                          const LoaderOptions& options) {
  if (options.seq_len < 1) return Status::Error("LoaderOptions.seq_len must be >= 1");
  if (options.batch_size < 1) return Status::Error("LoaderOptions.batch_size must be >= 1");
  if (options.dp_size < 1) return Status::Error("LoaderOptions.dp_size must be >= 1");
  if (options.dp_rank < 0 || options.dp_rank >= options.dp_size) {
    return Status::Error("LoaderOptions.dp_rank=" + std::to_string(options.dp_rank) +
                         " must be in [0, dp_size=" + std::to_string(options.dp_size) + ")");
  }
  BatchLoader loader(dataset, options);
  if (loader.batches_per_epoch_ < 1) {
    return Status::Error("token file " + dataset.path() + " has " + std::to_string(dataset.size()) +
                         " tokens: " + std::to_string(loader.num_windows_) +
                         " windows of seq_len+1=" + std::to_string(options.seq_len + 1) +
                         ", fewer than one global batch of batch_size*dp_size=" +
                         std::to_string(int64_t{options.batch_size} * options.dp_size) +
                         "; lower seq_len or batch_size, or use a larger corpus");
  }
  return loader;
}

BatchLoader::BatchLoader(const TokenDataset& dataset, const LoaderOptions& options)
    : dataset_(&dataset), options_(options) {
  const int64_t n = static_cast<int64_t>(dataset.size());
  num_windows_ = n > 0 ? (n - 1) / options.seq_len : 0;
  batches_per_epoch_ = num_windows_ / (int64_t{options.batch_size} * options.dp_size);
  window_.resize(static_cast<size_t>(options.seq_len) + 1);
}

void BatchLoader::BuildOrder(int64_t epoch) const {
  if (order_epoch_ == epoch) return;
  order_.resize(static_cast<size_t>(num_windows_));
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (options_.shuffle) {
    // Fisher-Yates, from the back.
    Rng rng(derive_seed(options_.seed, static_cast<uint64_t>(epoch)));
    for (int64_t i = num_windows_ - 1; i > 0; --i) {
      const auto j = static_cast<int64_t>(Below(rng, static_cast<uint64_t>(i) + 1));
      std::swap(order_[i], order_[j]);
    }
  }
  order_epoch_ = epoch;
}

int64_t BatchLoader::WindowStart(int64_t epoch, int64_t position, int b) const {
  GROVE_CHECK(position >= 0 && position < batches_per_epoch_ && b >= 0 && b < options_.batch_size)
      << "batch " << position << " column " << b << " out of range (" << batches_per_epoch_
      << " batches of " << options_.batch_size << ")";
  BuildOrder(epoch);
  const int64_t B = options_.batch_size;
  const int64_t slot = (position * options_.dp_size + options_.dp_rank) * B + b;
  return order_[static_cast<size_t>(slot)] * options_.seq_len;
}

void BatchLoader::Next(int32_t* inputs, int32_t* targets) {
  if (position_ >= batches_per_epoch_) {
    ++epoch_;
    position_ = 0;
  }
  const int S = options_.seq_len;
  const int B = options_.batch_size;
  for (int b = 0; b < B; ++b) {
    const int64_t start = WindowStart(epoch_, position_, b);
    dataset_->Copy(static_cast<size_t>(start), window_.size(), window_.data());
    for (int s = 0; s < S; ++s) {
      inputs[static_cast<size_t>(s) * B + b] = window_[s];
      targets[static_cast<size_t>(s) * B + b] = window_[s + 1];
    }
  }
  ++position_;
}

void BatchLoader::Restore(const LoaderState& state) {
  GROVE_CHECK(state.epoch >= 0 && state.position >= 0 && state.position <= batches_per_epoch_)
      << "loader state (epoch " << state.epoch << ", position " << state.position
      << ") does not fit this loader (" << batches_per_epoch_
      << " batches per epoch); was it saved with another seq_len, batch_size or dataset?";
  options_.seed = state.seed;
  epoch_ = state.epoch;
  position_ = state.position;
  order_epoch_ = -1;  // the seed may have changed
}

}  // namespace grove::data
