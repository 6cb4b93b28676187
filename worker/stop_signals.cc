#include "worker/stop_signals.h"

#include <semaphore.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

namespace grove {

namespace {

std::atomic<int> g_signal{0};
std::atomic<bool> g_finished{false};
sem_t g_wake;
std::chrono::milliseconds g_grace{StopSignals::kDefaultGrace};
std::mutex g_hook_mu;
std::function<void(int)> g_grace_hook;

StopCause CauseOf(int sig) {
  switch (sig) {
    case SIGTERM:
    case SIGUSR1:
      return StopCause::kPreempted;
    case SIGINT:
    case SIGUSR2:
      return StopCause::kCancelled;
    default:
      return StopCause::kNone;
  }
}

extern "C" void OnStopSignal(int sig) {
  int none = 0;
  if (g_signal.compare_exchange_strong(none, sig)) sem_post(&g_wake);  // async-signal-safe
}

// Waits for the first signal, then for the grace; exits if the process has not finished by then.
void GraceTimer() {
  while (sem_wait(&g_wake) != 0) {
  }
  const int sig = g_signal.load();
  const auto deadline = std::chrono::steady_clock::now() + g_grace;
  while (std::chrono::steady_clock::now() < deadline) {
    if (g_finished.load()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (g_finished.load()) return;
  std::fprintf(stderr,
               "grove-worker: no checkpoint within the %.1f s grace after %s; exiting without "
               "one (the job resumes from its previous checkpoint)\n",
               g_grace.count() / 1000.0, (std::string("SIG") + sigabbrev_np(sig)).c_str());
  std::fflush(stderr);
  {
    // Held while the hook runs: OnGraceExpired({}) (e.g. before what the hook uses is destroyed)
    // waits for it.
    std::lock_guard<std::mutex> l(g_hook_mu);
    if (g_grace_hook) g_grace_hook(sig);
  }
  std::_Exit(128 + sig);
}

}  // namespace

const char* StopCauseName(StopCause cause) {
  switch (cause) {
    case StopCause::kPreempted:
      return "preempted";
    case StopCause::kCancelled:
      return "cancelled";
    default:
      return "none";
  }
}

void StopSignals::Install(std::chrono::milliseconds grace) {
  static std::once_flag once;
  std::call_once(once, [grace] {
    g_grace = grace;
    sem_init(&g_wake, 0, 0);
    std::thread(GraceTimer).detach();
    struct sigaction sa {};
    sa.sa_handler = OnStopSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGUSR2}) sigaction(sig, &sa, nullptr);
  });
}

int StopSignals::signal() {
  return g_signal.load();
}

StopCause StopSignals::cause() {
  return CauseOf(g_signal.load());
}

StopCause StopSignals::Agree(comm::Communicator* world) {
  int32_t vote = static_cast<int32_t>(cause());
  if (world != nullptr && world->size() > 1)
    world->all_reduce(&vote, 1, DType::kI32, comm::ReduceOp::kMax);
  return static_cast<StopCause>(vote);
}

void StopSignals::Finished() {
  g_finished.store(true);
}

void StopSignals::OnGraceExpired(std::function<void(int signal)> hook) {
  std::lock_guard<std::mutex> l(g_hook_mu);
  g_grace_hook = std::move(hook);
}

}  // namespace grove
