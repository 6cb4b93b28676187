// JobManager: the coordinator's state machine. Jobs, worker registration and grid assignment,
// heartbeats and liveness, exits, cancellation, and the event log WatchJob streams.
//
// States: PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, and RUNNING -> RESTARTING ->
// RUNNING while a job has restarts left (max_restarts), and RUNNING -> PREEMPTED -> RUNNING when
// the workers stopped on SIGTERM after a checkpoint and the job is launched again. Each
// transition carries its reason and time and is an event; terminal states never change. Every
// change is an event with the job's next revision (1, 2, 3, ...); events are written to the
// JobStore before the call returns.
//
// Liveness: a registered worker silent for heartbeat_timeout, or one that exits non-zero, fails
// the job (or restarts it); the other workers' next heartbeat answers ABORT. A cancel answers
// STOP: the workers checkpoint, exit 0 and report it; the job is CANCELLED when the last one has.
//
// Principals (coordinator/auth.h): every call takes the caller; user calls that change a job
// (cancel, checkpoint, IssueWorkerToken) need its owner or the admin; worker calls need a worker
// credential issued for that job and attempt (verified here against the stored SHA-256).
//
// Bounded work: every request is checked against `Limits` before any work or lock; nothing
// under the lock grows faster than the request. Liveness is judged by when heartbeats arrived
// (noted before the manager's lock is taken), so a slow handler or a stalled coordinator never
// makes a worker look silent.
//
// Thread-safe. Watchers are woken through callbacks that run without the manager's lock held.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/auth.h"
#include "coordinator/path_policy.h"
#include "coordinator/store.h"
#include "planner/cluster.h"
#include "proto/grove.pb.h"

namespace grove::coordinator {

// The documented limits of the API (proto/grove.proto, docs/coordinator.md).
struct Limits {
  static constexpr size_t kIdBytes = 128;           // job ids, request_id
  static constexpr size_t kNameBytes = 128;         // JobSpec.name
  static constexpr size_t kConfigBytes = 64 << 10;  // JobSpec.config_json
  static constexpr int kWorldSize = 65536;
  static constexpr size_t kHostBytes = 255;
  static constexpr size_t kDevicesBytes = 1024;
  static constexpr size_t kReasonBytes = 1024;  // cancel reason
  static constexpr size_t kExitMessageBytes = 4096;
  static constexpr int kMetricsPerHeartbeat = 256;
  static constexpr int kExpertLayers = 1024;     // expert_load entries per metric
  static constexpr int kExpertsPerLayer = 4096;  // counts per expert_load entry
  static constexpr int kExpertCountsPerHeartbeat = 65536;
  static constexpr int kCheckpointsPerHeartbeat = 16;
  static constexpr size_t kPathBytes = 4096;
  static constexpr size_t kCheckpointsKept = 256;  // newest Job.checkpoints kept
  static constexpr int kListLimit = 1000;
  static constexpr size_t kListBytes = 1 << 20;     // one ListJobs page
  static constexpr int kMetricsLimit = 100000;      // GetMetrics
  static constexpr size_t kMetricsBytes = 4 << 20;  // one GetMetrics answer
  static constexpr int kWorkerTokensPerAttempt = 64;
  static constexpr size_t kTailBytes = 16 << 20;  // recent events kept in memory per job
};

struct ManagerOptions {
  std::chrono::milliseconds heartbeat_timeout{30000};
  std::chrono::milliseconds heartbeat_interval{1000};  // what workers are told to use
  // A job whose first rank registered waits this long for the others (also after a restart).
  std::chrono::milliseconds registration_timeout{300000};
  size_t event_tail = 2048;  // recent events kept in memory per job (older ones come from SQLite)
  // A PENDING job that no worker joined for this long fails ("never launched").
  std::chrono::milliseconds pending_timeout{std::chrono::hours(24)};
  PathPolicy paths;  // where jobs may read data and write runs (default: any absolute path)
  // The cluster the jobs run on (--cluster): layouts a job leaves open are planned by the cost
  // model (coordinator/planner.h); without one, the first layout that fits is taken.
  std::optional<planner::ClusterSpec> cluster;
  // Tests only: runs in SubmitJob after the spec was planned, before the job is inserted (lets a
  // test line up concurrent submits there).
  std::function<void()> submit_planned_hook;
};

class JobManager {
 public:
  using Waker = std::function<void()>;

  // Loads every job from `store`. Workers of running jobs get a fresh heartbeat_timeout to
  // reconnect. Starts the liveness monitor thread (stopped by the destructor).
  static StatusOr<std::unique_ptr<JobManager>> Create(std::unique_ptr<JobStore> store,
                                                      ManagerOptions options);
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // `who` defaults to an unrestricted in-process caller; the server passes the RPC's principal.
  grpc::Status Submit(const grove::v1::SubmitJobRequest& req, grove::v1::SubmitJobResponse* resp,
                      const Principal& who = Principal::Unrestricted());
  grpc::Status Get(const std::string& job_id, grove::v1::Job* job);
  grpc::Status List(const grove::v1::ListJobsRequest& req, grove::v1::ListJobsResponse* resp);
  grpc::Status Cancel(const grove::v1::CancelJobRequest& req, grove::v1::Job* job,
                      const Principal& who = Principal::Unrestricted());
  grpc::Status RequestCheckpoint(const std::string& job_id, grove::v1::Job* job,
                                 const Principal& who = Principal::Unrestricted());
  grpc::Status Metrics(const grove::v1::GetMetricsRequest& req,
                       grove::v1::GetMetricsResponse* resp);
  // A worker credential for the job's current attempt (owner or admin; not for a finished job).
  grpc::Status IssueWorkerToken(const grove::v1::IssueWorkerTokenRequest& req,
                                grove::v1::IssueWorkerTokenResponse* resp,
                                const Principal& who = Principal::Unrestricted());
  grpc::Status Register(const grove::v1::RegisterWorkerRequest& req,
                        grove::v1::RegisterWorkerResponse* resp,
                        const Principal& who = Principal::Unrestricted());
  grpc::Status Heartbeat(const grove::v1::HeartbeatRequest& req, grove::v1::HeartbeatResponse* resp,
                         const Principal& who = Principal::Unrestricted());
  grpc::Status ReportExit(const grove::v1::ReportExitRequest& req,
                          grove::v1::ReportExitResponse* resp,
                          const Principal& who = Principal::Unrestricted());

  // PERMISSION_DENIED unless `who` holds a worker credential issued for `job_id` and `attempt`
  // (attempt < 0: the one the credential names). Unrestricted callers pass. Takes only the
  // credentials' own lock, never the manager's.
  grpc::Status AuthorizeWorker(const Principal& who, const std::string& job_id, int attempt);

  // Set once the database file was deleted or replaced under the running coordinator; then every
  // change is refused and grove-coordinator exits (main.cc polls this).
  std::string fatal_error();

  // Events with revision > after (at most `limit`; metrics only if asked). *next_after is the
  // revision to continue from (past skipped metrics); *terminal tells whether the job is in a
  // terminal state.
  grpc::Status Events(const std::string& job_id, int64_t after, bool include_metrics, int limit,
                      std::vector<grove::v1::JobEvent>* out, int64_t* next_after, bool* terminal);
  // Registers `wake` to run once when an event with revision > after (a metric only counts if
  // include_metrics) is added or the job ends. Returns 0 without registering when the job has
  // events past `after`, is terminal or unknown (read Events again); else an id for CancelWait.
  uint64_t WaitForEvents(const std::string& job_id, int64_t after, bool include_metrics,
                         Waker wake);
  void CancelWait(const std::string& job_id, uint64_t waiter);

  // Memory reported by each rank over time (not persisted: a restarted coordinator starts
  // afresh). At most kMemorySamples per rank: when full, every other sample is dropped and the
  // spacing doubles, so the history spans the whole job at a coarser resolution.
  struct MemorySample {
    int64_t time_unix_ms = 0;
    uint64_t memory_bytes = 0;
    int64_t device_memory_bytes = -1;  // -1: not reported
  };
  static constexpr size_t kMemorySamples = 512;
  grpc::Status MemoryHistory(const std::string& job_id,
                             std::map<int, std::vector<MemorySample>>* out);

  // One liveness pass (the monitor thread runs it every heartbeat_timeout / 10).
  void CheckLiveness();

  const ManagerOptions& options() const { return options_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Waiter {
    uint64_t id;
    int64_t after;
    bool include_metrics;
    Waker wake;
  };
  struct Entry {
    grove::v1::Job job;
    int64_t number = 0;   // the N of job-N
    std::string out_dir;  // resolved, absolute (empty for jobs submitted with a relative one)
    size_t tail_bytes = 0;
    std::map<int, Clock::time_point> last_seen;  // rank -> last heartbeat (current attempt)
    Clock::time_point attempt_started{};         // first registration of the attempt / restart
    bool waiting_for_ranks = false;              // registration clock running
    std::deque<grove::v1::JobEvent> tail;
    std::vector<Waiter> waiters;
    struct MemoryTrack {
      std::vector<MemorySample> samples;
      int64_t spacing_ms = 0;  // minimum time between kept samples
    };
    std::map<int, MemoryTrack> memory;  // rank -> samples
  };
  // What one call changed, committed in one transaction.
  struct Change {
    Entry* entry;
    std::vector<grove::v1::JobEvent> events;
    std::vector<grove::v1::WorkerInfo> workers;
  };

  // Worker credentials and heartbeat arrivals, under their own lock (creds_mu_) so that
  // authorizing a worker and noting its heartbeat never wait for the manager's lock.
  struct JobCredentials {
    int world_size = 0;
    std::map<int, std::vector<std::string>> sha256;  // attempt -> token hashes
    struct Heard {
      int attempt = -1;
      Clock::time_point time{};  // latest arrival or answer of a heartbeat
      int in_flight = 0;         // heartbeats received and not yet answered
    };
    std::map<int, Heard> heard;  // rank -> its latest heartbeat
  };
  // Notes a heartbeat from its arrival to its answer: while the coordinator owes a worker an
  // answer, that worker is not silent, however long the answer takes.
  class HeartbeatInFlight {
   public:
    HeartbeatInFlight(JobManager* m, std::string job_id, int attempt, int rank);
    ~HeartbeatInFlight();
    HeartbeatInFlight(const HeartbeatInFlight&) = delete;
    HeartbeatInFlight& operator=(const HeartbeatInFlight&) = delete;

   private:
    JobManager* m_;
    std::string job_id_;
    int attempt_, rank_;
  };

  JobManager(std::unique_ptr<JobStore> store, ManagerOptions options);
  void Monitor();
  // The latest time a rank of the job's current attempt was heard (see HeartbeatInFlight); now
  // while one of its heartbeats is being handled.
  Clock::time_point LastHeard(const Entry& e, int rank, Clock::time_point now) const;

  Entry* Find(const std::string& job_id);
  grove::v1::JobEvent& AddEvent(Change& c);
  void AddMessage(Change& c, const std::string& message);
  void Transition(Change& c, grove::v1::JobState to, const std::string& reason);
  void FailOrRestart(Change& c, const std::string& reason);
  // Every rank stopped after a checkpoint on `signal` at `step` (saved), or one rank ran out of
  // its stop grace before the checkpoint at `step` was written (!saved): PREEMPTED (a new attempt
  // that resumes from the last checkpoint when the job is launched again) or CANCELLED.
  void Stopped(Change& c, int signal, int64_t step, bool saved = true);
  void TouchWorker(Change& c, grove::v1::WorkerInfo* w);
  void RecordMemory(Entry& e, const grove::v1::HeartbeatRequest& req, int64_t now_ms);
  grove::v1::WorkerInfo* FindWorker(Entry& e, int rank);
  // Writes the change; on a database error restores `before` and returns INTERNAL. Moves the
  // wakers of satisfied waiters into *wake (run them after unlocking).
  grpc::Status Commit(Change& c, const grove::v1::Job& before, std::vector<Waker>* wake);

  std::unique_ptr<JobStore> store_;
  ManagerOptions options_;
  std::mutex mu_;
  std::map<std::string, Entry> jobs_;
  std::map<std::string, std::string> by_request_;  // request id -> job id
  std::map<int64_t, std::string> by_number_;       // job number -> job id (newest last)
  int64_t next_number_ = 0;
  std::string fatal_;  // database lost (see fatal_error())

  mutable std::mutex creds_mu_;  // after mu_ when both are held
  std::map<std::string, JobCredentials> creds_;
  uint64_t next_waiter_ = 1;
  Clock::time_point started_ = Clock::now();
  Clock::time_point last_pass_{};  // the monitor's previous liveness pass

  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace grove::coordinator
