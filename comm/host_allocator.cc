#include "comm/host_allocator.h"

#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <limits>

namespace grove::comm {

HostAllocatorPolicy KeepFreedHostMemory() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if ((tunables && (std::strstr(tunables, "glibc.malloc.mmap_threshold") ||
                    std::strstr(tunables, "glibc.malloc.trim_threshold"))) ||
      std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_"))
    return {false, "malloc thresholds from the environment kept"};
  // The trim threshold: the largest value mallopt takes (2 GiB), above any step's scratch.
  if (mallopt(M_MMAP_THRESHOLD, int(kMmapThreshold)) != 1 ||
      mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) != 1)
    return {false, "mallopt refused the thresholds; glibc's defaults kept"};
  return {true, "blocks below 1 GiB from the heap, freed memory kept for reuse"};
}

}  // namespace grove::comm
