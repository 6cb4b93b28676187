// Watchdog: turns a hung collective into a loud, named failure instead of a silent hang.
//
// Every communicator operation is armed with the watchdog when it starts and disarmed when it
// completes (a blocking call returns, or an async Work is waited on / tested complete). A
// background thread sleeps until the oldest armed operation's deadline (start + timeout); if that
// operation is still armed then, the watchdog calls its abort function with a message naming the
// operation, the group and the rank. Before the abort function it runs the abort hooks that
// communicators registered (add_abort_hook: a device communicator aborts its backend handle there,
// e.g. ncclCommAbort, so that nothing stays blocked on the device), each bounded in time. The abort
// function must end the job (MPI_Abort on MPI); should it return, the process exits with
// kWatchdogExitCode.
//
// Invariants: a timeout of zero disables the watchdog (no thread, arm() is free); deadlines are
// measured on the steady clock from the start of the operation, so an async operation that is
// waited on late counts the time it spent un-waited.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "comm/types.h"

namespace grove::comm {

inline constexpr int kWatchdogExitCode = 3;

class Watchdog : public std::enable_shared_from_this<Watchdog> {
 public:
  using Clock = std::chrono::steady_clock;
  // Receives the full error message; expected not to return.
  using AbortFn = std::function<void(const std::string& message)>;

  // Disarms on destruction (or when moved from, it leaves nothing armed behind).
  class Guard {
   public:
    Guard() = default;
    Guard(std::shared_ptr<Watchdog> dog, uint64_t id) : dog_(std::move(dog)), id_(id) {}
    Guard(Guard&& other) noexcept : dog_(std::move(other.dog_)), id_(other.id_) {}
    Guard& operator=(Guard&& other) noexcept;
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { release(); }
    // Disarms now; idempotent.
    void release();

   private:
    std::shared_ptr<Watchdog> dog_;
    uint64_t id_ = 0;
  };

  // Use create(): arm() hands out guards that share ownership of the watchdog.
  static std::shared_ptr<Watchdog> create(std::chrono::milliseconds timeout, AbortFn abort);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  Guard arm(OpRecord op);
  // Registers `hook` to run (on the watchdog's thread) when an operation times out, before the
  // abort function; returns its id for remove_abort_hook. Hooks run in registration order; all of
  // them together get at most kAbortHooksBudget, after which the job is aborted anyway.
  uint64_t add_abort_hook(std::function<void()> hook);
  void remove_abort_hook(uint64_t id);
  static constexpr std::chrono::seconds kAbortHooksBudget{10};
  std::chrono::milliseconds timeout() const { return timeout_; }
  bool enabled() const { return timeout_.count() > 0; }
  // Number of operations armed right now (for tests and diagnostics).
  size_t armed() const;

  // The message the watchdog gives for `op` after `timeout`.
  static std::string message(const OpRecord& op, std::chrono::milliseconds timeout);

 private:
  Watchdog(std::chrono::milliseconds timeout, AbortFn abort);
  void disarm(uint64_t id);
  void loop();
  void run_abort_hooks();

  struct Entry {
    OpRecord op;
    Clock::time_point deadline;
  };

  const std::chrono::milliseconds timeout_;
  const AbortFn abort_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Keyed by arm order; deadlines grow with the key (constant timeout), so begin() is the oldest.
  std::map<uint64_t, Entry> entries_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread thread_;
  std::mutex hooks_mu_;  // not mu_: a hook may be removed while the watchdog waits for a deadline
  std::map<uint64_t, std::function<void()>> hooks_;
  uint64_t next_hook_id_ = 1;
};

}  // namespace grove::comm
