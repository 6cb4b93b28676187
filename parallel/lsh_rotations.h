// The random rotations of the cross-polytope hash (lsh_compressor.h, docs/lsh.md#hash), header
// only so that every backend's MoE layer builds them without linking the CPU engine.
//
// Hash function l owns R_l [r, h]: a Gaussian matrix drawn from Rng(derive_seed(seed, l)) whose
// rows are made orthonormal by modified Gram-Schmidt in double, then rounded to fp32. Every rank
// and every backend builds bit-identical rotations from the config alone.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "spec/moe_options.h"

namespace grove::parallel {

// [L, r, h] row-major (L = cfg.num_hashes, r = cfg.rotation_dim); cfg must be valid for h.
inline std::vector<float> lsh_rotations(const LshOptions& cfg, int h) {
  const int r = cfg.rotation_dim, L = cfg.num_hashes;
  std::vector<float> rot(size_t(L) * r * h);
  std::vector<double> q(size_t(r) * h);
  for (int l = 0; l < L; ++l) {
    Rng rng(derive_seed(cfg.seed, uint64_t(l)));
    for (double& v : q) v = rng.normal();
    // Modified Gram-Schmidt on the rows. A Gaussian row is (almost surely) independent of the
    // previous ones; a degenerate one would show as a zero norm and is redrawn.
    for (int i = 0; i < r; ++i) {
      double* qi = q.data() + size_t(i) * h;
      for (;;) {
        for (int j = 0; j < i; ++j) {
          const double* qj = q.data() + size_t(j) * h;
          double d = 0;
          for (int c = 0; c < h; ++c) d += qi[c] * qj[c];
          for (int c = 0; c < h; ++c) qi[c] -= d * qj[c];
        }
        double nrm = 0;
        for (int c = 0; c < h; ++c) nrm += qi[c] * qi[c];
        nrm = std::sqrt(nrm);
        if (nrm > 1e-6) {
          for (int c = 0; c < h; ++c) qi[c] /= nrm;
          break;
        }
        for (int c = 0; c < h; ++c) qi[c] = rng.normal();
      }
    }
    for (size_t i = 0; i < q.size(); ++i) rot[size_t(l) * r * h + i] = float(q[i]);
  }
  return rot;
}

}  // namespace grove::parallel
