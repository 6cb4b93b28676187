#include "spec/moe_options.h"

#include <cmath>
#include <sstream>

namespace grove {

Status LshOptions::Validate(int h) const {
  std::ostringstream os;
  if (num_hashes < 1) {
    os << "moe.lsh.num_hashes=" << num_hashes << " must be >= 1";
  } else if (rotation_dim < 1 || rotation_dim > h) {
    os << "moe.lsh.rotation_dim=" << rotation_dim << " must be in [1, h=" << h << "]";
  } else if (num_hashes * std::log2(2.0 * rotation_dim) > 64.0) {
    os << "moe.lsh.num_hashes=" << num_hashes << " with moe.lsh.rotation_dim=" << rotation_dim
       << " needs more than 64 bits of bucket id ((2r)^L > 2^64)";
  } else if (min_tokens < 0) {
    os << "moe.lsh.min_tokens=" << min_tokens << " must be >= 0";
  } else if (!(target_compression == 0.0 || target_compression >= 1.0)) {
    os << "moe.lsh.target_compression=" << target_compression
       << " must be 0 (bucket by all num_hashes codes) or >= 1";
  } else if (warmup_steps < 0) {
    os << "moe.lsh.warmup_steps=" << warmup_steps << " must be >= 0";
  } else {
    return Status::Ok();
  }
  return Status::Error(os.str());
}

Status MoeOptions::Validate(int ep) const {
  std::ostringstream os;
  if (num_experts < 1) {
    os << "moe.num_experts=" << num_experts << " must be >= 1";
  } else if (top_k < 1 || top_k > num_experts) {
    os << "moe.top_k=" << top_k << " must be in [1, moe.num_experts=" << num_experts << "]";
  } else if (ep < 1 || num_experts % ep != 0) {
    os << "moe.num_experts=" << num_experts << " is not divisible by parallel.ep=" << ep;
  } else if (expert_ffn < 0) {
    os << "moe.expert_ffn=" << expert_ffn << " must be >= 0 (0: the model's ffn)";
  } else if (!(aux_loss_coef >= 0)) {
    os << "moe.aux_loss_coef=" << aux_loss_coef << " must be >= 0";
  } else if (!(z_loss_coef >= 0)) {
    os << "moe.z_loss_coef=" << z_loss_coef << " must be >= 0";
  } else if (!(capacity_factor >= 0)) {
    os << "moe.capacity_factor=" << capacity_factor << " must be >= 0 (0: dropless)";
  } else {
    return Status::Ok();
  }
  return Status::Error(os.str());
}

}  // namespace grove
