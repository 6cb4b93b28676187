// JobManager: the coordinator's state machine. Jobs, worker registration and grid assignment,
// heartbeats and liveness, exits, cancellation, and the event log WatchJob streams.
//
// States: PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, and RUNNING -> RESTARTING ->
// RUNNING while a job has restarts left (max_restarts). Each transition carries its reason and
// time and is an event; terminal states never change. Every change is an event with the job's
// next revision (1, 2, 3, ...); events are written to the JobStore before the call returns.
//
// Liveness: a registered worker silent for heartbeat_timeout, or one that exits non-zero, fails
// the job (or restarts it); the other workers' next heartbeat answers ABORT. A cancel answers
// STOP: the workers checkpoint, exit 0 and report it; the job is CANCELLED when the last one has.
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
#include <string>
#include <thread>
#include <vector>

#include "coordinator/store.h"
#include "proto/grove.pb.h"

namespace grove::coordinator {

struct ManagerOptions {
  std::chrono::milliseconds heartbeat_timeout{30000};
  std::chrono::milliseconds heartbeat_interval{1000};  // what workers are told to use
  // A job whose first rank registered waits this long for the others (also after a restart).
  std::chrono::milliseconds registration_timeout{300000};
  size_t event_tail = 2048;  // recent events kept in memory per job (older ones come from SQLite)
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

  grpc::Status Submit(const grove::v1::SubmitJobRequest& req, grove::v1::SubmitJobResponse* resp);
  grpc::Status Get(const std::string& job_id, grove::v1::Job* job);
  grpc::Status List(const grove::v1::ListJobsRequest& req, grove::v1::ListJobsResponse* resp);
  grpc::Status Cancel(const grove::v1::CancelJobRequest& req, grove::v1::Job* job);
  grpc::Status RequestCheckpoint(const std::string& job_id, grove::v1::Job* job);
  grpc::Status Metrics(const grove::v1::GetMetricsRequest& req,
                       grove::v1::GetMetricsResponse* resp);
  grpc::Status Register(const grove::v1::RegisterWorkerRequest& req,
                        grove::v1::RegisterWorkerResponse* resp);
  grpc::Status Heartbeat(const grove::v1::HeartbeatRequest& req,
                         grove::v1::HeartbeatResponse* resp);
  grpc::Status ReportExit(const grove::v1::ReportExitRequest& req,
                          grove::v1::ReportExitResponse* resp);

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

  JobManager(std::unique_ptr<JobStore> store, ManagerOptions options);
  void Monitor();

  Entry* Find(const std::string& job_id);
  grove::v1::JobEvent& AddEvent(Change& c);
  void AddMessage(Change& c, const std::string& message);
  void Transition(Change& c, grove::v1::JobState to, const std::string& reason);
  void FailOrRestart(Change& c, const std::string& reason);
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
  int64_t next_number_ = 0;
  uint64_t next_waiter_ = 1;
  Clock::time_point started_ = Clock::now();

  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace grove::coordinator
