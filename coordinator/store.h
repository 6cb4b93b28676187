// JobStore: the coordinator's durable state in one SQLite database (WAL journal).
//
// Tables: jobs (one row per job: id, request id, state, the Job message without its transitions
// and workers), events (every JobEvent, keyed by job and revision; transitions are events too),
// workers (one row per job, attempt and rank). Every change the coordinator makes is written in
// one transaction before the RPC that caused it returns, so a restarted coordinator sees exactly
// what its clients saw. synchronous=NORMAL: a committed transaction survives a process crash;
// after a power loss the last few may be lost (the WAL is not fsynced per commit).
//
// The database is created 0600. Its identity is guarded: a new database gets a random instance
// id (table meta), and a ledger file next to it (`<db>.ledger`, 0600) records that id and the
// highest job number ever issued. Opening refuses a database that is missing, empty or another
// instance where the ledger says one existed (unless StoreOptions::accept_new_database, which
// starts a new database whose job numbers continue after the ledger's), so job ids are never
// reused. While open, CheckFile() notices the file being deleted or replaced.
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

struct StoreOptions {
  // Start a new database even though the ledger names another one (it was lost or replaced).
  bool accept_new_database = false;
};

// A stored worker credential: the SHA-256 of the token, per job and attempt.
struct WorkerTokenRecord {
  std::string job_id;
  int attempt = 0;
  std::string sha256;
};

class JobStore {
 public:
  // Opens (creating if needed) the database at `path`; ":memory:" for tests (no ledger). Errors
  // name the path: unreadable, read-only, not a database, or missing/replaced per the ledger.
  static StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path,
                                                  StoreOptions options = {});
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
  // The largest job number handed out so far, by this database or (per the ledger) an earlier
  // one at the same path (job ids are "job-<number>").
  int64_t MaxJobNumber();

  // Worker credentials (hashes only), written in their own transaction.
  void AddWorkerToken(const WorkerTokenRecord& record);
  std::vector<WorkerTokenRecord> LoadWorkerTokens();

  // OK while `path` is still the file opened; an error naming it once it was deleted or replaced
  // (writes would be lost with the unlinked file).
  Status CheckFile() const;
  const std::string& path() const { return path_; }

 private:
  JobStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  void Exec(const char* sql);
  Status CheckIdentity(const StoreOptions& options, bool existed);
  void WriteLedger();

  sqlite3* db_;
  std::string path_;
  bool file_backed_ = false;
  uint64_t dev_ = 0, ino_ = 0;
  std::string instance_;
  int64_t ledger_max_ = 0;  // highest job number the ledger recorded
};

}  // namespace grove::coordinator
