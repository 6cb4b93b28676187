// JobStore: the coordinator's durable state in one SQLite database (WAL journal).
//
// Tables: jobs (one row per job: id, request id, state, the Job message without its transitions
// and workers), events (every JobEvent, keyed by job and revision; transitions are events too),
// workers (one row per job, attempt and rank). Every change the coordinator makes is written in
// one transaction before the RPC that caused it returns, so a restarted coordinator sees exactly
// what its clients saw. synchronous=NORMAL: a committed transaction survives a process crash;
// after a power loss the last few may be lost (the WAL is not fsynced per commit).
//
// Not thread-safe: the caller (JobManager) serialises access.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "proto/grove.pb.h"

namespace grove::coordinator {

// Owns one prepared statement.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& Bind(int index, int64_t v);
  Statement& Bind(int index, const std::string& v);  // TEXT
  Statement& BindBlob(int index, const std::string& v);
  // SQLITE_ROW -> true, SQLITE_DONE -> false; anything else throws grove::Error.
  bool Step();
  void Reset();
  int64_t Int(int col) const;
  std::string Text(int col) const;
  std::string Blob(int col) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

class JobStore {
 public:
  // Opens (creating if needed) the database at `path`; ":memory:" for tests.
  static StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // One write transaction: the job row (transitions and workers are stripped), new events, and
  // changed worker rows (WorkerInfo.attempt selects the row).
  void Commit(const grove::v1::Job& job, const std::vector<grove::v1::JobEvent>& events,
              const std::vector<grove::v1::WorkerInfo>& workers);

  // Every job, oldest first, with its transitions and the workers of its current attempt.
  std::vector<grove::v1::Job> LoadJobs();
  // Events with revision > after, in order, at most `limit`; metrics only if asked.
  std::vector<grove::v1::JobEvent> Events(const std::string& job_id, int64_t after,
                                          bool include_metrics, int limit);
  std::vector<grove::v1::StepMetric> Metrics(const std::string& job_id, int64_t after_step,
                                             int limit);
  // The largest job number handed out so far (job ids are "job-<number>").
  int64_t MaxJobNumber();

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  void Exec(const char* sql);

  sqlite3* db_;
};

}  // namespace grove::coordinator
