// Multi-rank GoogleTest harness: every rank runs the same test binary under mpirun.
//
// The harness main initialises MPI, creates the world communicator (watchdog on, so a test that
// desynchronises the ranks fails loudly instead of hanging), prints failures tagged with the
// rank that saw them, and makes the process exit non-zero on every rank if any rank failed.
#pragma once

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"

namespace grove::test {

// The world communicator of this test run.
comm::Communicator& world();
// The MPI session (to create further world communicators, e.g. with another timeout).
const comm::MpiSession& mpi_session();

}  // namespace grove::test
