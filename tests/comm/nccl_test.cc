// NCCL backend in a world of one rank (no MPI needed): every operation on device buffers.
// Skips, saying why, when there is no CUDA device.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <vector>

#include "comm/nccl_communicator.h"

namespace grove::comm {
namespace {

#define SKIP_WITHOUT_GPU()                                                            \
  if (!cuda_device_available())                                                       \
  GTEST_SKIP() << "no CUDA device: the NCCL backend (" << NcclCommunicator::version() \
               << ") is built but its tests need a GPU"

template <typename T>
Tensor device_tensor(const std::vector<T>& v) {
  Tensor h = Tensor::empty({int64_t(v.size())}, dtype_of<T>());
  if (!v.empty()) std::memcpy(h.raw(), v.data(), v.size() * sizeof(T));
  return h.to(Device::kCUDA);
}

template <typename T>
std::vector<T> host_values(const Tensor& d) {
  Tensor h = d.to(Device::kCPU);
  const T* p = h.data<T>();
  return std::vector<T>(p, p + h.numel());
}

TEST(Nccl, VersionIsKnown) {
  EXPECT_NE(NcclCommunicator::version(), "unknown");
  std::printf("NCCL %s\n", NcclCommunicator::version().c_str());
}

TEST(Nccl, WorldOfOneRunsEveryOperation) {
  SKIP_WITHOUT_GPU();
  auto c = NcclCommunicator::create_single(0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->device(), Device::kCUDA);
  EXPECT_STREQ(c->backend_name(), "nccl");

  Tensor t = device_tensor(std::vector<float>{1, -2, 3});
  c->all_reduce(t, ReduceOp::kSum);
  EXPECT_EQ(host_values<float>(t), (std::vector<float>{1, -2, 3}));
  c->all_reduce(t, ReduceOp::kMax);
  EXPECT_EQ(host_values<float>(t), (std::vector<float>{1, -2, 3}));

  Tensor out = Tensor::zeros({3}, DType::kF32, Device::kCUDA);
  c->all_gather(t, out);
  EXPECT_EQ(host_values<float>(out), (std::vector<float>{1, -2, 3}));
  c->reduce_scatter(t, out, ReduceOp::kSum);
  EXPECT_EQ(host_values<float>(out), (std::vector<float>{1, -2, 3}));
  c->all_to_all(t, out);
  EXPECT_EQ(host_values<float>(out), (std::vector<float>{1, -2, 3}));

  Tensor i = device_tensor(std::vector<int64_t>{4, 5, 6, 7});
  Tensor o = Tensor::zeros({4}, DType::kI64, Device::kCUDA);
  std::vector<int64_t> sc = {3}, rc = {3};
  c->all_to_all_v(i, sc, o, rc);
  EXPECT_EQ(host_values<int64_t>(o), (std::vector<int64_t>{4, 5, 6, 0}));
  c->broadcast(i, 0);
  EXPECT_EQ(host_values<int64_t>(i), (std::vector<int64_t>{4, 5, 6, 7}));
  c->barrier();

  Tensor e = Tensor::empty({0}, DType::kF32, Device::kCUDA);
  c->all_reduce(e, ReduceOp::kSum);
  std::vector<int64_t> zero = {0};
  c->all_to_all_v(e, zero, e, zero);

  Work w = c->all_reduce_async(t, ReduceOp::kSum);
  w.wait();
  EXPECT_TRUE(w.done());
  EXPECT_EQ(c->watchdog()->armed(), 0u);

  auto sub = c->split(0, 0, "sub");
  ASSERT_TRUE(sub);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->name(), "sub");
  sub->all_reduce(t, ReduceOp::kSum);
  EXPECT_EQ(host_values<float>(t), (std::vector<float>{1, -2, 3}));
  EXPECT_FALSE(c->split(-1, 0, "none"));

  Tensor host = Tensor::zeros({2});
  EXPECT_THROW(c->all_reduce(host, ReduceOp::kSum), Error);
}

// The watchdog covers NCCL: a send that no receive ever matches (to itself, in a world of one)
// never completes on the device; the watchdog aborts the communicator (ncclCommAbort) and ends
// the process with the message naming the operation and the group. Written without a GPU at
// hand: not yet run on one.
TEST(NcclDeathTest, UnmatchedSendIsAbortedByTheWatchdog) {
  SKIP_WITHOUT_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        CommOptions options;
        options.timeout = std::chrono::milliseconds(1500);
        auto c = NcclCommunicator::create_single(0, options);
        Tensor t = Tensor::zeros({4}, DType::kF32, Device::kCUDA);
        c->send(t, 0);
      },
      ::testing::ExitedWithCode(kWatchdogExitCode),
      "grove comm watchdog: send\\(to 0, 4 x f32\\) on group 'world' \\(rank 0 of 1, world rank "
      "0; members 0\\) did not complete within 1500 ms(.|\n)*grove comm: ncclCommAbort on group "
      "'world'");
}

}  // namespace
}  // namespace grove::comm
