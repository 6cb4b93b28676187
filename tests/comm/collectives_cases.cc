// The collective checks shared by every Communicator backend: each function below is one case,
// run on every rank of a world (any size) and comparing against a closed form. Data is
// integer-valued and seeded from the rank, so every result is exact and compared bit for bit.
// Buffers live where the communicator's collectives run (w.device()): host memory for MPI, device
// memory for the thread transport and for MPI over emulated device memory.
//   tests/comm/collectives_test.cc         MPI, under mpirun at np 1-4
//   tests/comm/thread_collectives_test.cc  the thread transport at 1-4 thread ranks (a GPU, or
//                                          the CUDA emulator), and MPI over emulated device memory
#include "tests/comm/collectives_cases.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

namespace grove::comm::cases {
namespace {

// A tensor on the communicator's device holding v.
template <typename T>
Tensor make(Communicator& w, const std::vector<T>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, dtype_of<T>());
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * sizeof(T));
  return w.device() == Device::kCPU ? t : t.to(w.device());
}

// The same, for element types without a DType of their own (bf16 as uint16 bits).
template <typename T>
Tensor make_as(Communicator& w, const std::vector<T>& v, DType dtype) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, dtype);
  GROVE_CHECK(dtype_size(dtype) == sizeof(T)) << "make_as: element size";
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * sizeof(T));
  return w.device() == Device::kCPU ? t : t.to(w.device());
}

// The elements of t (copied to the host first when it lives on a device).
template <typename T>
std::vector<T> values(const Tensor& t) {
  const Tensor h = t.device() == Device::kCPU ? t : t.to(Device::kCPU);
  GROVE_CHECK(dtype_size(h.dtype()) == sizeof(T)) << "values: element size";
  const T* p = static_cast<const T*>(h.raw());
  return std::vector<T>(p, p + h.numel());
}

// Bitwise equality (so -0.0 vs 0.0 or a NaN would not pass by accident).
template <typename T>
void expect_bits(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(T)), 0)
        << what << ": element " << i << " is " << +got[i] << ", want " << +want[i];
  }
}

uint16_t bf16(float f) {  // exact for the small integers used here
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>(b >> 16);
}

}  // namespace

void WorldDescribesItself(Communicator& w) {
  EXPECT_EQ(w.name(), "world");
  ASSERT_EQ(static_cast<int>(w.info().world_ranks.size()), w.size());
  for (int r = 0; r < w.size(); ++r) EXPECT_EQ(w.info().world_ranks[r], r);
  EXPECT_EQ(w.info().world_rank(), w.rank());
}

template <typename T>
void check_all_reduce_sum(Communicator& w) {
  const int n = w.size(), r = w.rank();
  std::vector<T> v(7), want(7);
  for (int i = 0; i < 7; ++i) {
    v[i] = static_cast<T>((r + 1) * (i + 1) - 3);
    want[i] = static_cast<T>((i + 1) * n * (n + 1) / 2 - 3 * n);
  }
  Tensor t = make(w, v);
  w.all_reduce(t, ReduceOp::kSum);
  expect_bits(values<T>(t), want, dtype_name(dtype_of<T>()));
}

void AllReduceSum(Communicator& w) {
  check_all_reduce_sum<float>(w);
  check_all_reduce_sum<double>(w);
  check_all_reduce_sum<int32_t>(w);
  check_all_reduce_sum<int64_t>(w);
}

template <typename T>
void check_all_reduce_max(Communicator& w) {
  const int n = w.size(), r = w.rank();
  auto f = [](int rank, int i) { return static_cast<T>((rank * 7 + i * 3) % 11 - 5); };
  std::vector<T> v(9), want(9);
  for (int i = 0; i < 9; ++i) {
    v[i] = f(r, i);
    want[i] = f(0, i);
    for (int q = 1; q < n; ++q) want[i] = std::max(want[i], f(q, i));
  }
  Tensor t = make(w, v);
  w.all_reduce(t, ReduceOp::kMax);
  expect_bits(values<T>(t), want, dtype_name(dtype_of<T>()));
}

void AllReduceMax(Communicator& w) {
  check_all_reduce_max<float>(w);
  check_all_reduce_max<double>(w);
  check_all_reduce_max<int32_t>(w);
  check_all_reduce_max<int64_t>(w);
}

void AllReduceBf16(Communicator& w) {
  const int n = w.size(), r = w.rank();
  std::vector<uint16_t> v(5), sum(5), mx(5);
  for (int i = 0; i < 5; ++i) {
    v[i] = bf16(static_cast<float>(r + i - 2));
    sum[i] = bf16(static_cast<float>(n * (n - 1) / 2 + n * (i - 2)));
    mx[i] = bf16(static_cast<float>(n - 1 + i - 2));
  }
  Tensor a = make_as(w, v, DType::kBF16), b = make_as(w, v, DType::kBF16);
  w.all_reduce(a, ReduceOp::kSum);
  w.all_reduce(b, ReduceOp::kMax);
  std::vector<uint16_t> ga = values<uint16_t>(a), gb = values<uint16_t>(b);
  expect_bits(ga, sum, "bf16 sum");
  expect_bits(gb, mx, "bf16 max");
}

void AllGather(Communicator& w) {
  const int n = w.size(), r = w.rank();
  std::vector<int64_t> v = {r * 10 + 0, r * 10 + 1, r * 10 + 2}, want;
  for (int q = 0; q < n; ++q)
    for (int j = 0; j < 3; ++j) want.push_back(q * 10 + j);
  Tensor in = make(w, v), out = Tensor::empty({3 * n}, DType::kI64, w.device());
  w.all_gather(in, out);
  expect_bits(values<int64_t>(out), want, "all_gather i64");

  // u8, and a 2-d output: the blocks are still contiguous in rank order.
  Tensor in8 = make(w, std::vector<uint8_t>{uint8_t(r), uint8_t(200 + r)});
  Tensor out8 = Tensor::empty({n, 2}, DType::kU8, w.device());
  w.all_gather(in8, out8);
  const std::vector<uint8_t> got8 = values<uint8_t>(out8);
  for (int q = 0; q < n; ++q) {
    EXPECT_EQ(got8[2 * q], q);
    EXPECT_EQ(got8[2 * q + 1], 200 + q);
  }
}

void AllGatherInPlace(Communicator& w) {
  const int n = w.size(), r = w.rank();
  std::vector<float> buf(2 * n, -1.0f), want;
  buf[2 * r] = float(r);
  buf[2 * r + 1] = float(-r);
  for (int q = 0; q < n; ++q) want.insert(want.end(), {float(q), float(-q)});
  Tensor t = make(w, buf);
  float* p = static_cast<float*>(t.raw());
  w.all_gather(p + 2 * r, p, 2, DType::kF32);
  expect_bits(values<float>(t), want, "in-place all_gather");
}

void ReduceScatter(Communicator& w) {
  const int n = w.size(), r = w.rank(), m = 4;
  std::vector<int32_t> v(n * m), sum(m), mx(m);
  for (int b = 0; b < n; ++b)
    for (int j = 0; j < m; ++j) v[b * m + j] = r * 100 + b * 10 + j;
  for (int j = 0; j < m; ++j) {
    sum[j] = 100 * n * (n - 1) / 2 + n * (r * 10 + j);
    mx[j] = (n - 1) * 100 + r * 10 + j;
  }
  Tensor in = make(w, v), out = Tensor::empty({m}, DType::kI32, w.device());
  w.reduce_scatter(in, out, ReduceOp::kSum);
  expect_bits(values<int32_t>(out), sum, "reduce_scatter sum");
  w.reduce_scatter(in, out, ReduceOp::kMax);
  expect_bits(values<int32_t>(out), mx, "reduce_scatter max");

  // f32, integer-valued: bit-exact as well.
  std::vector<float> vf(v.begin(), v.end()), sumf(sum.begin(), sum.end());
  Tensor inf = make(w, vf), outf = Tensor::empty({m}, DType::kF32, w.device());
  w.reduce_scatter(inf, outf, ReduceOp::kSum);
  expect_bits(values<float>(outf), sumf, "reduce_scatter f32 sum");
}

void AllToAll(Communicator& w) {
  const int n = w.size(), r = w.rank(), m = 3;
  std::vector<int32_t> v(n * m), want(n * m);
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < m; ++k) {
      v[j * m + k] = r * 100 + j * 10 + k;     // block j goes to rank j
      want[j * m + k] = j * 100 + r * 10 + k;  // block j came from rank j
    }
  Tensor in = make(w, v), out = Tensor::empty({n * m}, DType::kI32, w.device());
  w.all_to_all(in, out);
  expect_bits(values<int32_t>(out), want, "all_to_all");
}

// Uneven counts, some zero: rank i sends (i + 2j) % 3 elements to rank j; element k of that
// block is i*1000 + j*100 + k.
void check_all_to_all_v(Communicator& w, const std::function<int64_t(int, int)>& count) {
  const int n = w.size(), r = w.rank();
  std::vector<int64_t> sc(n), rc(n);
  std::vector<float> v, want;
  for (int j = 0; j < n; ++j) {
    sc[j] = count(r, j);
    rc[j] = count(j, r);
    for (int k = 0; k < sc[j]; ++k) v.push_back(float(r * 1000 + j * 100 + k));
    for (int k = 0; k < rc[j]; ++k) want.push_back(float(j * 1000 + r * 100 + k));
  }
  Tensor in = make(w, v), out = Tensor::empty({int64_t(want.size())}, DType::kF32, w.device());
  w.all_to_all_v(in, sc, out, rc);
  expect_bits(values<float>(out), want, "all_to_all_v");
}

void AllToAllVUneven(Communicator& w) {
  check_all_to_all_v(w, [](int i, int j) { return (i + 2 * j) % 3; });
  // Skewed: everything goes to rank 0 (rank 0 receives from all, others receive nothing).
  check_all_to_all_v(w, [](int i, int j) { return j == 0 ? 2 + i : 0; });
  // Rank 0 sends nothing to anyone.
  check_all_to_all_v(w, [](int i, int j) { return i == 0 ? 0 : 1 + j; });
}

void AllToAllVLeavesTailUntouched(Communicator& w) {
  const int n = w.size(), r = w.rank();
  std::vector<int64_t> sc(n, 1), rc(n, 1);
  Tensor in = make(w, std::vector<int32_t>(n + 2, r)),
         out = make(w, std::vector<int32_t>(n + 2, -7));
  w.all_to_all_v(in, sc, out, rc);
  std::vector<int32_t> want(n + 2, -7);
  std::iota(want.begin(), want.begin() + n, 0);
  expect_bits(values<int32_t>(out), want, "a2a-v with spare room");
}

void Broadcast(Communicator& w) {
  const int n = w.size(), r = w.rank();
  for (int root = 0; root < n; ++root) {
    std::vector<double> v(6, -1.0), want(6);
    for (int i = 0; i < 6; ++i) want[i] = root * 10 + i;
    if (r == root) v = want;
    Tensor t = make(w, v);
    w.broadcast(t, root);
    expect_bits(values<double>(t), want, "broadcast");
  }
}

void ZeroLengthEverywhere(Communicator& w) {
  const int n = w.size(), r = w.rank();
  Tensor e = Tensor::empty({0}, DType::kF32, w.device()),
         e2 = Tensor::empty({0, 5}, DType::kF32, w.device());
  w.all_reduce(e, ReduceOp::kSum);
  w.all_reduce(e2, ReduceOp::kMax);
  w.all_gather(e, e2);
  w.reduce_scatter(e2, e, ReduceOp::kSum);
  w.all_to_all(e, e2);
  std::vector<int64_t> zeros(n, 0);
  w.all_to_all_v(e, zeros, e2, zeros);
  w.broadcast(e, n - 1);
  Work s = w.send_async(e, (r + 1) % n);
  w.recv(e, (r + n - 1) % n);
  s.wait();
  // Raw forms with null pointers and count 0.
  w.all_reduce(nullptr, 0, DType::kF32, ReduceOp::kSum);
  w.all_gather(nullptr, nullptr, 0, DType::kI32);
  w.reduce_scatter(nullptr, nullptr, 0, DType::kF64, ReduceOp::kMax);
  w.all_to_all_v(nullptr, zeros, nullptr, zeros, DType::kBF16);
  w.broadcast(nullptr, 0, DType::kU8, 0);
  EXPECT_EQ(w.watchdog()->armed(), 0u);
}

void SendRecvRingWithTags(Communicator& w) {
  const int n = w.size(), r = w.rank();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  // Two messages to the same peer, told apart by tag, received in the opposite order.
  Tensor a = make(w, std::vector<int32_t>{r, r, r}), b = make(w, std::vector<int32_t>{-r, 5});
  Tensor ra = Tensor::empty({3}, DType::kI32, w.device()),
         rb = Tensor::empty({2}, DType::kI32, w.device());
  Work wb = w.recv_async(rb, prev, /*tag=*/8);
  Work wa = w.recv_async(ra, prev, /*tag=*/7);
  Work sa = w.send_async(a, next, 7);
  Work sb = w.send_async(b, next, 8);
  wa.wait();
  wb.wait();
  sa.wait();
  sb.wait();
  expect_bits(values<int32_t>(ra), {prev, prev, prev}, "tag 7");
  expect_bits(values<int32_t>(rb), {-prev, 5}, "tag 8");
  if (n >= 2) {  // blocking forms between distinct ranks
    Tensor t = make(w, std::vector<float>{float(r), 0.5f});
    if (r == 0) w.send(t, 1, 3);
    if (r == 1) {
      w.recv(t, 0, 3);
      expect_bits(values<float>(t), {0.0f, 0.5f}, "blocking send/recv");
    }
  }
}

void RecvOfWrongSizeIsAnError(Communicator& w) {
  if (w.size() < 2) return;  // needs two ranks
  if (w.rank() == 0) w.send(make(w, std::vector<int32_t>{1, 2, 3}), 1);
  if (w.rank() == 1) {
    Tensor t = Tensor::empty({4}, DType::kI32, w.device());
    try {
      w.recv(t, 0);
      ADD_FAILURE() << "a 3-element message into a 4-element recv must fail";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("received 3 elements, expected 4"), std::string::npos)
          << e.what();
    }
  }
  w.barrier();
}

void AsyncFormsCompleteOutOfOrder(Communicator& w) {
  const int n = w.size(), r = w.rank();
  Tensor s = make(w, std::vector<int64_t>{r, 1});
  Tensor g_in = make(w, std::vector<int32_t>{r}),
         g_out = Tensor::empty({n}, DType::kI32, w.device());
  std::vector<int64_t> sc(n), rc(n);
  std::vector<int32_t> v, want;
  for (int j = 0; j < n; ++j) {
    sc[j] = (r + j) % 2;
    rc[j] = (j + r) % 2;
    if (sc[j]) v.push_back(r * 10 + j);
    if (rc[j]) want.push_back(j * 10 + r);
  }
  Tensor a_in = make(w, v), a_out = Tensor::empty({int64_t(want.size())}, DType::kI32, w.device());
  Tensor b = make(w, std::vector<float>{r == 0 ? 42.0f : 0.0f});

  Work w1 = w.all_reduce_async(s, ReduceOp::kSum);
  Work w2 = w.all_gather_async(g_in, g_out);
  Work w3 = w.all_to_all_v_async(a_in, sc, a_out, rc);  // counts are copied at start
  sc.assign(n, -99);
  rc.assign(n, -99);
  Work w4 = w.broadcast_async(b, 0);
  Work w5 = w.barrier_async();
  EXPECT_EQ(w.watchdog()->armed(), 5u);
  w5.wait();
  w4.wait();
  w3.wait();
  while (!w2.test()) {
  }
  EXPECT_TRUE(w2.done());
  w1.wait();
  w1.wait();  // idempotent
  EXPECT_EQ(w.watchdog()->armed(), 0u);

  expect_bits(values<int64_t>(s), {int64_t(n) * (n - 1) / 2, n}, "async all_reduce");
  std::vector<int32_t> ranks(n);
  std::iota(ranks.begin(), ranks.end(), 0);
  expect_bits(values<int32_t>(g_out), ranks, "async all_gather");
  expect_bits(values<int32_t>(a_out), want, "async all_to_all_v");
  expect_bits(values<float>(b), {42.0f}, "async broadcast");
}

void UnwaitedWorkIsWaitedByItsDestructor(Communicator& w) {
  const int n = w.size();
  Tensor t = make(w, std::vector<int32_t>{1, 2});
  { Work pending = w.all_reduce_async(t, ReduceOp::kSum); }
  expect_bits(values<int32_t>(t), {n, 2 * n}, "destructor wait");
  Tensor u = make(w, std::vector<int32_t>{3});
  Work first = w.all_reduce_async(u, ReduceOp::kSum);
  first = w.barrier_async();  // replacing a pending Work completes it first
  expect_bits(values<int32_t>(u), {3 * n}, "move-assign wait");
  first.wait();
  EXPECT_EQ(w.watchdog()->armed(), 0u);
}

void MisuseThrowsBeforeCommunicating(Communicator& w) {
  const int n = w.size();
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto has = [](const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
  };
  Tensor f4 = Tensor::empty({4}, DType::kF32, w.device()),
         i4 = Tensor::empty({4}, DType::kI32, w.device());
  Tensor big = Tensor::empty({4 * n + 1}, DType::kF32, w.device());
  std::string m = message([&] { w.all_gather(f4, big); });
  EXPECT_TRUE(has(m, "all_gather on group 'world'") && has(m, "do not fit")) << m;
  m = message([&] { w.all_gather(f4, i4); });
  EXPECT_TRUE(has(m, "input is f32, output is i32")) << m;
  m = message([&] { w.reduce_scatter(f4, big, ReduceOp::kSum); });
  EXPECT_TRUE(has(m, "reduce_scatter on group 'world'")) << m;
  m = message([&] { w.broadcast(f4, n); });
  EXPECT_TRUE(
      has(m, "root " + std::to_string(n) + " is not a rank of this group of " + std::to_string(n)))
      << m;
  std::vector<int64_t> short_counts(n + 1, 0), counts(n, 1);
  m = message([&] { w.all_to_all_v(f4, short_counts, f4, short_counts); });
  EXPECT_TRUE(has(m, "need one send and one receive count per rank")) << m;
  counts[0] = 5;
  m = message([&] { w.all_to_all_v(f4, counts, big, counts); });
  EXPECT_TRUE(has(m, "send counts sum to")) << m;
  counts[0] = -1;
  m = message([&] { w.all_to_all_v(big, counts, big, counts); });
  EXPECT_TRUE(has(m, "negative count for rank 0")) << m;
  m = message([&] { w.send(f4, -1); });
  EXPECT_TRUE(has(m, "peer -1 is not a rank")) << m;
  m = message([&] { w.all_reduce(nullptr, 3, DType::kF32, ReduceOp::kSum); });
  EXPECT_TRUE(has(m, "null buffer for 3 elements")) << m;
  float* x = static_cast<float*>(f4.raw());
  m = message([&] { w.reduce_scatter(x, x, 1, DType::kF32, ReduceOp::kSum); });
  EXPECT_TRUE(has(m, "overlap")) << m;
  EXPECT_EQ(w.watchdog()->armed(), 0u);
  w.barrier();  // still in step
}

void SplitParityReversedAndExcluded(Communicator& w) {
  const int n = w.size(), r = w.rank();
  // Even and odd ranks, ordered by descending world rank (key = -rank).
  auto sub = w.split(r % 2, -r, "parity");
  ASSERT_TRUE(sub);
  std::vector<int> members;
  for (int q = n - 1; q >= 0; --q)
    if (q % 2 == r % 2) members.push_back(q);
  EXPECT_EQ(sub->name(), "parity");
  EXPECT_EQ(sub->size(), int(members.size()));
  EXPECT_EQ(sub->info().world_ranks, members);
  EXPECT_EQ(sub->info().world_rank(), r);
  EXPECT_EQ(members[sub->rank()], r);
  // The group really is those ranks, in that order.
  Tensor mine = make(w, std::vector<int32_t>{r});
  Tensor all = Tensor::empty({sub->size()}, DType::kI32, w.device());
  sub->all_gather(mine, all);
  expect_bits(values<int32_t>(all), std::vector<int32_t>(members.begin(), members.end()),
              "parity members");

  // Rank 0 opts out: it gets no communicator, the rest form one group of n - 1 (3 at np=4).
  auto rest = w.split(r == 0 ? -1 : 0, r, "rest");
  if (r == 0) {
    EXPECT_FALSE(rest);
  } else {
    ASSERT_TRUE(rest);
    EXPECT_EQ(rest->size(), n - 1);
    EXPECT_EQ(rest->rank(), r - 1);
    Tensor t = make(w, std::vector<int64_t>{r});
    rest->all_reduce(t, ReduceOp::kSum);
    expect_bits(values<int64_t>(t), {int64_t(n) * (n - 1) / 2}, "rest sum");
    // A split of a split keeps world ranks.
    auto single = rest->split(rest->rank(), 0, "self");
    ASSERT_TRUE(single);
    EXPECT_EQ(single->size(), 1);
    EXPECT_EQ(single->info().world_ranks, std::vector<int>{r});
    Tensor u = make(w, std::vector<int32_t>{r, 2});
    single->all_reduce(u, ReduceOp::kSum);
    expect_bits(values<int32_t>(u), {r, 2}, "size-1 all_reduce");
  }
}

void NonPowerOfTwoGroups(Communicator& w) {
  // Groups of 3 (and the remainder) out of the world, whatever its size.
  const int r = w.rank(), n = w.size();
  auto g = w.split(r / 3, r % 3, "three");
  ASSERT_TRUE(g);
  const int base = r / 3 * 3, m = std::min(3, n - base);
  EXPECT_EQ(g->size(), m);
  std::vector<int32_t> v(2 * m), want(2 * m);
  for (int j = 0; j < 2 * m; ++j) v[j] = r * 2 + j;
  Tensor in = make(w, v), out = Tensor::empty({2}, DType::kI32, w.device());
  g->reduce_scatter(in, out, ReduceOp::kSum);
  int32_t s = 0;
  for (int q = base; q < base + m; ++q) s += q * 2;
  expect_bits(values<int32_t>(out), {s + m * 2 * g->rank(), s + m * (2 * g->rank() + 1)},
              "reduce_scatter in a group of 3");
}

}  // namespace grove::comm::cases
