// CoordinatorLink: a worker's connection to grove-coordinator (proto/grove.proto).
//
//   auto link = CoordinatorLink::Register(options);  // rank, world, host -> layout, coords, config
//   link->Start();                                   // heartbeats on a background thread
//   run.on_step = link->StepHook(&grid.world());     // stop / checkpoint decisions per step
//   ... Trainer::Run() ...
//   link->ReportExit(code, message);
//
// Credential: worker RPCs need the job attempt's worker credential, which the launcher obtains
// (IssueWorkerToken) and passes in GROVE_WORKER_TOKEN or GROVE_WORKER_TOKEN_FILE; when either is
// set it replaces options.client.token (docs/coordinator.md, "Worker credentials").
//
// Heartbeats run on their own thread every heartbeat_interval (the coordinator's value), so a
// rank in a long step or collective still counts as alive; rank 0 also sends the per-step
// metrics it recorded since the previous heartbeat, at most kMetricsPerHeartbeat (and
// kExpertCountsPerHeartbeat expert-load counts) per heartbeat, the coordinator's limits; a
// backlog goes out over the following heartbeats. While the coordinator is unreachable (e.g.
// restarting) heartbeats are retried and metrics kept (bounded), training goes on.
//
// Every rank must take the same stop / checkpoint decision at the same step: StepHook() has every
// rank vote {stop level, newest checkpoint request} from its own latest heartbeat reply and
// combines the votes with one all_reduce(MAX) over the world communicator, so all ranks issue
// the same collective once per step and act on the same result.
//
// ABORT (the job failed or is restarting): the hook votes stop, and if the process has not
// exited abort_grace later (e.g. blocked in a collective with a dead peer) the watch thread ends
// it with exit code kAbortExitCode.
//
// Bounded exit without the coordinator: a second thread (the watch thread) never calls the
// coordinator, so it keeps its clock even while a heartbeat RPC is stuck. It ends the process
// with kAbortExitCode when neither a heartbeat was answered nor a step finished for a heartbeat
// timeout (at least 5 s): cut off from the coordinator and from the peers (a network partition),
// the rank exits instead of spinning in a collective until the comm watchdog fires. It also
// bounds ReportExit: a rank whose exit cannot be reported within exit_report_timeout (plus one
// RPC deadline) exits with its own exit code.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "core/status.h"
#include "proto/client.h"
#include "worker/trainer.h"

namespace grove {

struct CoordinatorLinkOptions {
  rpc::ClientOptions client;  // address, token, TLS, per-call deadline
  std::string job_id;
  int rank = 0;
  int world_size = 1;
  std::string host;  // default: gethostname()
  std::string devices = "cpu";
  // How long Register retries while the coordinator is unreachable.
  std::chrono::milliseconds register_timeout{60000};
  // How long ReportExit retries while the coordinator is unreachable.
  std::chrono::milliseconds exit_report_timeout{30000};
  std::chrono::milliseconds abort_grace{5000};
  size_t max_buffered_metrics = 100000;
};

class CoordinatorLink {
 public:
  static constexpr int kAbortExitCode = 75;
  // The coordinator's per-heartbeat limits (proto/grove.proto).
  static constexpr size_t kMetricsPerHeartbeat = 256;
  static constexpr size_t kExpertCountsPerHeartbeat = 65536;
  static constexpr size_t kCheckpointsPerHeartbeat = 16;

  // Registers this rank. Errors: the coordinator's refusal (unknown job, rank already
  // registered, wrong world size, bad token or a user token instead of the worker credential),
  // or unreachable past register_timeout.
  static StatusOr<std::unique_ptr<CoordinatorLink>> Register(CoordinatorLinkOptions options);
  ~CoordinatorLink();  // stops the heartbeat thread
  CoordinatorLink(const CoordinatorLink&) = delete;
  CoordinatorLink& operator=(const CoordinatorLink&) = delete;

  const grove::v1::RegisterWorkerResponse& assignment() const { return assignment_; }

  // Starts the heartbeat and watch threads.
  void Start();
  // Records a finished step: the step count goes with every heartbeat, the metrics (rank 0
  // only) with the next one.
  void RecordStep(const StepMetrics& m);
  // The step this attempt starts at (its checkpoint's, 0 for a fresh run): the step heartbeats
  // and the exit report carry until a step is recorded. An attempt that resumes at train.steps
  // (its rank was killed after the final checkpoint) trains nothing and reports that step, so
  // the job succeeds instead of failing "at step 0".
  void SetResumedStep(int64_t step) { last_step_.store(step); }
  // A checkpoint was saved: rank 0 reports it to the coordinator right away (and again with the
  // next heartbeat if that fails). A RunOptions::on_checkpoint hook.
  void RecordCheckpoint(int step, const std::string& path);
  // The decision for the step just finished; collective over `world` (nullptr: one rank).
  StepControl Decide(comm::Communicator* world);
  // RecordStep + Decide, as a RunOptions::on_step hook. `world` must outlive the hook.
  std::function<StepControl(const StepMetrics&)> StepHook(comm::Communicator* world);

  // Stops heartbeats, sends the metrics not yet sent, and reports the exit (retried while the
  // coordinator is unreachable, up to exit_report_timeout). Returns the job's state after it.
  // stop_signal: the worker stopped after a checkpoint because of this signal (0: none).
  StatusOr<grove::v1::JobState> ReportExit(int exit_code, const std::string& message,
                                           int stop_signal = 0);

  // The stop grace ran out before this rank's checkpoint was written (StopSignals'
  // OnGraceExpired hook, on another thread while the main one is stuck): reports exit code
  // 128 + signal with checkpoint_missed, one try within `timeout`, without waiting for the
  // heartbeat thread. When ReportExit is already running, waits for it instead (up to timeout).
  void ReportGraceExpired(int signal, std::chrono::milliseconds timeout);

  // Set once the coordinator answered STOP or ABORT (with its reason).
  bool stop_requested() const { return stop_level_.load() > 0; }
  bool abort_requested() const { return stop_level_.load() > 1; }
  std::string stop_reason() const;
  int64_t last_step() const { return last_step_.load(); }

 private:
  explicit CoordinatorLink(CoordinatorLinkOptions options);
  void HeartbeatLoop();
  void WatchLoop();
  // One heartbeat with the oldest buffered metrics (within the limits); false when the
  // coordinator was unreachable. *more: metrics or checkpoints are still waiting.
  bool SendHeartbeat(bool* more = nullptr);
  void HandleReply(const grove::v1::HeartbeatResponse& reply);
  void Abort(const std::string& reason);

  CoordinatorLinkOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grove::v1::Coordinator::Stub> stub_;
  grove::v1::RegisterWorkerResponse assignment_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::vector<grove::v1::StepMetric> pending_;
  std::vector<grove::v1::CheckpointRecord> pending_checkpoints_;
  std::string stop_reason_;
  std::chrono::steady_clock::time_point abort_deadline_{};
  bool unreachable_logged_ = false;
  std::thread thread_;
  bool watch_stopping_ = false;  // under mu_; set only by the destructor
  std::thread watch_thread_;
  // steady_clock nanoseconds: the last answered heartbeat (or the registration), the last
  // finished step, and (nonzero while ReportExit runs) when the exit report is given up.
  std::atomic<int64_t> last_contact_ns_{0};
  std::atomic<int64_t> last_step_ns_{0};
  std::atomic<int64_t> exit_report_deadline_ns_{0};
  std::atomic<int> exit_code_{0};
  std::atomic<bool> exit_reporting_{false};  // ReportExit or ReportGraceExpired has begun
  std::atomic<bool> exit_reported_{false};   // ReportExit returned

  std::atomic<int> stop_level_{0};          // 0 continue, 1 stop (cancel), 2 abort
  std::atomic<int64_t> checkpoint_seq_{0};  // newest checkpoint request seen
  int64_t checkpoint_done_ = 0;             // newest one acted on (main thread only)
  std::atomic<int64_t> last_step_{0};
};

}  // namespace grove
