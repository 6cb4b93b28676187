// KeepFreedHostMemory: a large block freed by one step is reused by the next, not unmapped and
// faulted in again (comm/host_allocator.h).
#include "comm/host_allocator.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace grove::comm {
namespace {

TEST(HostAllocator, KeepsTheEnvironmentsChoiceThenKeepsLargeFreedBlocksInTheHeap) {
  // glibc's own limit for its dynamic mmap threshold is 32 MiB: 64 MiB is always an mmap there.
  constexpr size_t kBytes = size_t(64) << 20;
  ::unsetenv("GLIBC_TUNABLES");
  ::setenv("MALLOC_TRIM_THRESHOLD_", "1000000", 1);
  HostAllocatorPolicy kept = KeepFreedHostMemory();
  EXPECT_FALSE(kept.applied);
  EXPECT_NE(kept.reason.find("environment"), std::string::npos) << kept.reason;
  ::unsetenv("MALLOC_TRIM_THRESHOLD_");

  HostAllocatorPolicy policy = KeepFreedHostMemory();
  ASSERT_TRUE(policy.applied) << policy.reason;
  for (int step = 0; step < 2; ++step) {
    auto* block = static_cast<volatile char*>(std::malloc(kBytes));
    ASSERT_NE(block, nullptr);
    std::memset(const_cast<char*>(block), step + 1, kBytes);
    const struct mallinfo2 held = mallinfo2();
    EXPECT_EQ(held.hblks, 0u) << "step " << step << ": the 64 MiB block is an mmap";
    EXPECT_GE(held.arena, kBytes) << "step " << step;
    EXPECT_EQ(block[kBytes / 2], step + 1);
    std::free(const_cast<char*>(block));
    EXPECT_GE(mallinfo2().arena, kBytes) << "step " << step << ": the heap was trimmed on free";
  }
}

}  // namespace
}  // namespace grove::comm
