#include "parallel/ring_attention.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"

namespace grove::parallel {

namespace {
constexpr int kTagKv = 0, kTagDkv = 1;

struct Sizes {
  int p, Sl;
  int64_t Eq, El, Ekv;
  Sizes(const CpAttentionShape& s, int p_) : p(p_), Sl(s.S / p_) {
    Eq = int64_t(Sl) * s.B * s.NH * s.HD;
    El = int64_t(s.B) * s.NH * Sl;
    Ekv = int64_t(Sl) * s.B * s.NKV * s.HD;
  }
  int64_t forward() const { return 2 * (2 * Ekv) + Eq + El; }
  int64_t backward() const { return 2 * (4 * Ekv) + El; }
};
}  // namespace

int64_t ring_workspace_elems(const CpAttentionShape& s, int p) {
  const Sizes z(s, p);
  return std::max(z.forward(), z.backward());
}

void ring_attention_forward(comm::Communicator& cp, const CpAttentionShape& s, float* out,
                            float* lse, const float* q, const float* k, const float* v,
                            float* workspace, CommStats* stats) {
  const Sizes z(s, cp.size());
  const int p = z.p, r = cp.rank(), Sl = z.Sl;
  const int64_t Ekv = z.Ekv;
  float* buf[2] = {workspace, workspace + 2 * Ekv};  // [k | v] of the block in hand, next block
  float* scratch = workspace + 4 * Ekv;
  const int next = (r + 1) % p, prev = (r + p - 1) % p;

  std::fill(out, out + z.Eq, 0.0f);
  std::fill(lse, lse + z.El, -std::numeric_limits<float>::infinity());
  std::memcpy(buf[0], k, sizeof(float) * Ekv);
  std::memcpy(buf[0] + Ekv, v, sizeof(float) * Ekv);
  Segment qs[2], ks[2];
  zigzag_segments(qs, s.S, p, r);
  for (int t = 0; t < p; ++t) {
    float* cur = buf[t % 2];
    comm::Work send, recv;
    if (t < p - 1) {  // the next block arrives while this one is computed
      send = cp.send_async(cur, 2 * Ekv, DType::kF32, next, kTagKv);
      recv = cp.recv_async(buf[(t + 1) % 2], 2 * Ekv, DType::kF32, prev, kTagKv);
      if (stats) stats->send(2 * Ekv);
    }
    zigzag_segments(ks, s.S, p, (r - t + p) % p);
    partial_attention_forward(out, lse, q, Sl, qs, cur, cur + Ekv, Sl, ks, s.B, s.NH, s.NKV, s.HD,
                              s.causal, scratch);
    send.wait();
    recv.wait();
  }
}

void ring_attention_backward(comm::Communicator& cp, const CpAttentionShape& s, float* dq,
                             float* dk, float* dv, const float* dout, const float* q,
                             const float* k, const float* v, const float* out, const float* lse,
                             float* workspace, CommStats* stats) {
  const Sizes z(s, cp.size());
  const int p = z.p, r = cp.rank(), Sl = z.Sl;
  const int64_t Ekv = z.Ekv;
  // [k | v | dk | dv] of the block in hand and of the next one.
  float* buf[2] = {workspace, workspace + 4 * Ekv};
  float* scratch = workspace + 8 * Ekv;
  const int next = (r + 1) % p, prev = (r + p - 1) % p;

  std::memcpy(buf[0], k, sizeof(float) * Ekv);
  std::memcpy(buf[0] + Ekv, v, sizeof(float) * Ekv);
  std::fill(buf[0] + 2 * Ekv, buf[0] + 4 * Ekv, 0.0f);
  Segment qs[2], ks[2];
  zigzag_segments(qs, s.S, p, r);
  for (int t = 0; t < p; ++t) {
    float* cur = buf[t % 2];
    float* nxt = buf[(t + 1) % 2];
    comm::Work send_kv, recv_kv;
    if (t < p - 1) {
      send_kv = cp.send_async(cur, 2 * Ekv, DType::kF32, next, kTagKv);
      recv_kv = cp.recv_async(nxt, 2 * Ekv, DType::kF32, prev, kTagKv);
      if (stats) stats->send(2 * Ekv);
    }
    zigzag_segments(ks, s.S, p, (r - t + p) % p);
    partial_attention_backward(dq, cur + 2 * Ekv, cur + 3 * Ekv, dout, q, out, lse, Sl, qs, cur,
                               cur + Ekv, Sl, ks, s.B, s.NH, s.NKV, s.HD, s.causal, scratch);
    // dK/dV move on with their block; after the last block this hop returns them to the owner.
    if (p > 1) {
      comm::Work send_d = cp.send_async(cur + 2 * Ekv, 2 * Ekv, DType::kF32, next, kTagDkv);
      comm::Work recv_d = cp.recv_async(nxt + 2 * Ekv, 2 * Ekv, DType::kF32, prev, kTagDkv);
      if (stats) stats->send(2 * Ekv);
      send_d.wait();
      recv_d.wait();
    }
    send_kv.wait();
    recv_kv.wait();
  }
  // This rank's dK/dV arrived with the last hop (p = 1: they never left buf[0]).
  const float* own = (p > 1 ? buf[p % 2] : buf[0]) + 2 * Ekv;
  cpu::add_inplace(dk, own, Ekv);
  cpu::add_inplace(dv, own + Ekv, Ekv);
}

}  // namespace grove::parallel
