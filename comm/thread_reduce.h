// The thread transport's reduction step (comm/thread_communicator.h): acc[i] = acc[i] op x[i] for
// i < count, on device memory, enqueued on `stream`. Applied once per rank in rank order, it gives
// every rank the same, reproducible result. bf16 is combined in fp32 and rounded to nearest even,
// as the MPI and NCCL backends do.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "comm/types.h"

namespace grove::comm::detail {

cudaError_t combine_on_device(void* acc, const void* x, int64_t count, DType dtype, ReduceOp op,
                              cudaStream_t stream);

}  // namespace grove::comm::detail
