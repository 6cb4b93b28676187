// The collective checks every Communicator backend must pass (collectives_cases.cc), as plain
// functions of one rank's world communicator, so that each harness runs the same bodies: MPI
// under mpirun (collectives_test.cc), and the thread transport and MPI over emulated device
// memory (thread_collectives_test.cc). Every rank of the world calls the same case; GoogleTest
// assertions record failures (from any thread).
#pragma once

#include "comm/communicator.h"

namespace grove::comm::cases {

// X(Name) for every case; a harness defines one TEST per entry.
#define GROVE_COMM_CASES(X)              \
  X(WorldDescribesItself)                \
  X(AllReduceSum)                        \
  X(AllReduceMax)                        \
  X(AllReduceBf16)                       \
  X(AllGather)                           \
  X(AllGatherInPlace)                    \
  X(ReduceScatter)                       \
  X(AllToAll)                            \
  X(AllToAllVUneven)                     \
  X(AllToAllVLeavesTailUntouched)        \
  X(Broadcast)                           \
  X(ZeroLengthEverywhere)                \
  X(SendRecvRingWithTags)                \
  X(RecvOfWrongSizeIsAnError)            \
  X(AsyncFormsCompleteOutOfOrder)        \
  X(UnwaitedWorkIsWaitedByItsDestructor) \
  X(MisuseThrowsBeforeCommunicating)     \
  X(SplitParityReversedAndExcluded)      \
  X(NonPowerOfTwoGroups)

#define GROVE_COMM_DECLARE_CASE(name) void name(Communicator& world);
GROVE_COMM_CASES(GROVE_COMM_DECLARE_CASE)
#undef GROVE_COMM_DECLARE_CASE

}  // namespace grove::comm::cases
