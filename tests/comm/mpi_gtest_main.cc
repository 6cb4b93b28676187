// main() for multi-rank GoogleTest binaries; see mpi_test_env.h.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "tests/comm/mpi_test_env.h"
#ifdef GROVE_GPU_TEST_MAIN
#include "tests/common/gpu_skip.h"
#endif

namespace grove::test {
namespace {

comm::Communicator* g_world = nullptr;
const comm::MpiSession* g_session = nullptr;

// Prints each failed assertion as "[rank r/n] file:line: message", on every rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  RankFailurePrinter(int rank, int size) : rank_(rank), size_(size) {}
  // Remembered here: UnitTest::current_test_info() would take the lock that gtest holds while
  // it reports a test part result.
  void OnTestStart(const ::testing::TestInfo& t) override {
    test_ = std::string(t.test_suite_name()) + "." + t.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d/%d] FAILED %s at %s:%d\n%s\n", rank_, size_, test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
    std::fflush(stderr);
  }

 private:
  int rank_, size_;
  std::string test_ = "(outside a test)";
};

}  // namespace

comm::Communicator& world() {
  return *g_world;
}
const comm::MpiSession& mpi_session() {
  return *g_session;
}

}  // namespace grove::test

int main(int argc, char** argv) {
  grove::comm::MpiSession session(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  grove::comm::CommOptions options;
  options.timeout =
      std::chrono::seconds(20);  // a desynchronised test aborts, well before ctest's limit
  std::unique_ptr<grove::comm::Communicator> world = session.world(options);
  grove::test::g_world = world.get();
  grove::test::g_session = &session;

  const int rank = world->rank(), size = world->size();
  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  // Only rank 0 prints the usual progress; every rank reports its own failures, tagged.
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new grove::test::RankFailurePrinter(rank, size));

  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = failed;
  world->all_reduce(&any_failed, 1, grove::DType::kI32, grove::comm::ReduceOp::kMax);
  if (rank == 0) {
    std::printf("[mpi] %d ranks: %s\n", size,
                any_failed ? "FAILED on at least one rank" : "all passed");
  }
  grove::test::g_world = nullptr;
  world.reset();
#ifdef GROVE_GPU_TEST_MAIN
  // GPU tests (grove_mpi_test(... GPU)): the skip code when this rank has no CUDA device.
  return grove::testing::gpu_test_exit_code(any_failed, rank == 0);
#else
  return any_failed;
#endif
}
