// Stop requests that arrive as signals, turned into a checkpoint at the step every rank reached.
//
//   SIGTERM, SIGUSR1   preemption: a scheduler's time limit or preemption, `scancel`, or
//                      grove-launch passing on its own SIGTERM (mpirun forwards SIGUSR1 to every
//                      rank, while its own SIGTERM would end them after a second)
//   SIGINT,  SIGUSR2   the user cancels (Ctrl-C; grove-launch passes on SIGINT as SIGUSR2)
//
// The handler only records the signal. After every optimizer step each rank votes the cause it
// received and one all_reduce(MAX) over the world communicator combines the votes, so every rank
// stops at the same step, after the step's checkpoint. Should the process still be running
// `grace` after the first signal (a step or a save that does not finish, a peer that is gone), it
// prints what happened, runs the grace hook (a coordinated worker reports the stop without a
// checkpoint there, bounded by a few seconds) and exits with 128 + the signal number, before a
// scheduler's SIGKILL (Slurm waits KillWait, 30 s by default, so the default grace is 20 s).
#pragma once

#include <chrono>
#include <functional>

#include "comm/communicator.h"

namespace grove {

enum class StopCause { kNone = 0, kPreempted = 1, kCancelled = 2 };

const char* StopCauseName(StopCause cause);  // "none", "preempted", "cancelled"

class StopSignals {
 public:
  static constexpr std::chrono::seconds kDefaultGrace{20};

  // Installs the handlers (once per process) and the grace timer's thread.
  static void Install(std::chrono::milliseconds grace = kDefaultGrace);
  // The first stop signal this process received (0 when none) and what it means.
  static int signal();
  static StopCause cause();
  // Collective over `world` (null or one rank: this process alone): the strongest cause any rank
  // received. Every rank calls it once after every step.
  static StopCause Agree(comm::Communicator* world);
  // The process is about to exit on its own: the grace timer stands down.
  static void Finished();
  // Runs on the grace timer's thread when the grace ran out, with the signal, just before the
  // exit; it must return within a few seconds. Replaces the previous hook; empty: none.
  static void OnGraceExpired(std::function<void(int signal)> hook);
};

}  // namespace grove
