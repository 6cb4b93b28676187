#include "coordinator/store.h"

namespace grove::coordinator {

namespace {

constexpr int kKindTransition = 0, kKindMetric = 1, kKindMessage = 2;

int EventKind(const grove::v1::JobEvent& e) {
  if (e.has_transition()) return kKindTransition;
  if (e.has_metric()) return kKindMetric;
  return kKindMessage;
}

}  // namespace

Statement::Statement(sqlite3* db, const char* sql) : db_(db) {
  if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK)
    throw Error(std::string("sqlite: cannot prepare '") + sql + "': " + sqlite3_errmsg(db));
}

Statement::~Statement() {
  sqlite3_finalize(stmt_);
}

Statement& Statement::Bind(int index, int64_t v) {
  sqlite3_bind_int64(stmt_, index, v);
  return *this;
}

Statement& Statement::Bind(int index, const std::string& v) {
  sqlite3_bind_text(stmt_, index, v.data(), int(v.size()), SQLITE_TRANSIENT);
  return *this;
}

Statement& Statement::BindBlob(int index, const std::string& v) {
  sqlite3_bind_blob(stmt_, index, v.data(), int(v.size()), SQLITE_TRANSIENT);
  return *this;
}

bool Statement::Step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  throw Error(std::string("sqlite: ") + sqlite3_errmsg(db_) + " in '" + sqlite3_sql(stmt_) + "'");
}

void Statement::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

int64_t Statement::Int(int col) const {
  return sqlite3_column_int64(stmt_, col);
}

std::string Statement::Text(int col) const {
  const auto* p = sqlite3_column_text(stmt_, col);
  return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : "";
}

std::string Statement::Blob(int col) const {
  const void* p = sqlite3_column_blob(stmt_, col);
  return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : "";
}

StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Status::Error("cannot open job database " + path + ": " + msg);
  }
  std::unique_ptr<JobStore> store(new JobStore(db));
  try {
    sqlite3_busy_timeout(db, 5000);
    store->Exec("PRAGMA journal_mode=WAL");
    store->Exec("PRAGMA synchronous=NORMAL");
    store->Exec("PRAGMA foreign_keys=ON");
    store->Exec(
        "CREATE TABLE IF NOT EXISTS jobs ("
        "  number INTEGER PRIMARY KEY,"
        "  id TEXT NOT NULL UNIQUE,"
        "  request_id TEXT UNIQUE,"
        "  state INTEGER NOT NULL,"
        "  created_ms INTEGER NOT NULL,"
        "  job BLOB NOT NULL)");
    store->Exec(
        "CREATE TABLE IF NOT EXISTS events ("
        "  job_id TEXT NOT NULL REFERENCES jobs(id),"
        "  revision INTEGER NOT NULL,"
        "  kind INTEGER NOT NULL,"
        "  step INTEGER,"
        "  event BLOB NOT NULL,"
        "  PRIMARY KEY (job_id, revision)) WITHOUT ROWID");
    store->Exec("CREATE INDEX IF NOT EXISTS events_by_kind ON events(job_id, kind, step)");
    store->Exec(
        "CREATE TABLE IF NOT EXISTS workers ("
        "  job_id TEXT NOT NULL REFERENCES jobs(id),"
        "  attempt INTEGER NOT NULL,"
        "  rank INTEGER NOT NULL,"
        "  worker BLOB NOT NULL,"
        "  PRIMARY KEY (job_id, attempt, rank)) WITHOUT ROWID");
  } catch (const Error& e) {
    return Status::Error("job database " + path + ": " + e.what());
  }
  return store;
}

JobStore::~JobStore() {
  sqlite3_close_v2(db_);
}

void JobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw Error(std::string("sqlite: ") + msg + " in '" + sql + "'");
  }
}

void JobStore::Commit(const grove::v1::Job& job, const std::vector<grove::v1::JobEvent>& events,
                      const std::vector<grove::v1::WorkerInfo>& workers) {
  grove::v1::Job row = job;
  row.clear_transitions();
  row.clear_workers();
  const int64_t number = std::stoll(job.id().substr(job.id().find('-') + 1));
  Exec("BEGIN IMMEDIATE");
  try {
    Statement j(db_,
                "INSERT INTO jobs (number, id, request_id, state, created_ms, job) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id) DO UPDATE SET "
                "state = excluded.state, job = excluded.job");
    j.Bind(1, number).Bind(2, job.id()).Bind(4, int64_t(job.state()));
    if (!job.request_id().empty()) j.Bind(3, job.request_id());
    j.Bind(5, job.created_unix_ms()).BindBlob(6, row.SerializeAsString());
    j.Step();
    if (!events.empty()) {
      Statement e(db_,
                  "INSERT INTO events (job_id, revision, kind, step, event) "
                  "VALUES (?1, ?2, ?3, ?4, ?5)");
      for (const auto& ev : events) {
        e.Reset();
        e.Bind(1, job.id()).Bind(2, ev.revision()).Bind(3, int64_t(EventKind(ev)));
        if (ev.has_metric()) e.Bind(4, ev.metric().step());
        e.BindBlob(5, ev.SerializeAsString());
        e.Step();
      }
    }
    if (!workers.empty()) {
      Statement w(db_,
                  "INSERT OR REPLACE INTO workers (job_id, attempt, rank, worker) "
                  "VALUES (?1, ?2, ?3, ?4)");
      for (const auto& wi : workers) {
        w.Reset();
        w.Bind(1, job.id()).Bind(2, int64_t(wi.attempt())).Bind(3, int64_t(wi.rank()));
        w.BindBlob(4, wi.SerializeAsString());
        w.Step();
      }
    }
    Exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::vector<grove::v1::Job> JobStore::LoadJobs() {
  std::vector<grove::v1::Job> jobs;
  Statement s(db_, "SELECT job FROM jobs ORDER BY number");
  while (s.Step()) {
    grove::v1::Job job;
    if (!job.ParseFromString(s.Blob(0))) throw Error("job database: a jobs row does not parse");
    jobs.push_back(std::move(job));
  }
  Statement t(db_, "SELECT event FROM events WHERE job_id = ?1 AND kind = 0 ORDER BY revision");
  Statement w(db_, "SELECT worker FROM workers WHERE job_id = ?1 AND attempt = ?2 ORDER BY rank");
  for (auto& job : jobs) {
    t.Reset();
    t.Bind(1, job.id());
    while (t.Step()) {
      grove::v1::JobEvent e;
      if (!e.ParseFromString(t.Blob(0)))
        throw Error("job database: an event of " + job.id() + " does not parse");
      *job.add_transitions() = e.transition();
    }
    w.Reset();
    w.Bind(1, job.id()).Bind(2, int64_t(job.attempt()));
    while (w.Step())
      if (!job.add_workers()->ParseFromString(w.Blob(0)))
        throw Error("job database: a worker of " + job.id() + " does not parse");
  }
  return jobs;
}

std::vector<grove::v1::JobEvent> JobStore::Events(const std::string& job_id, int64_t after,
                                                  bool include_metrics, int limit) {
  Statement s(db_, include_metrics ? "SELECT event FROM events WHERE job_id = ?1 AND revision > ?2 "
                                     "ORDER BY revision LIMIT ?3"
                                   : "SELECT event FROM events WHERE job_id = ?1 AND revision > ?2 "
                                     "AND kind != 1 ORDER BY revision LIMIT ?3");
  s.Bind(1, job_id).Bind(2, after).Bind(3, int64_t(limit));
  std::vector<grove::v1::JobEvent> out;
  while (s.Step()) {
    out.emplace_back();
    if (!out.back().ParseFromString(s.Blob(0)))
      throw Error("job database: an event of " + job_id + " does not parse");
  }
  return out;
}

std::vector<grove::v1::StepMetric> JobStore::Metrics(const std::string& job_id, int64_t after_step,
                                                     int limit) {
  Statement s(db_,
              "SELECT event FROM events WHERE job_id = ?1 AND kind = 1 AND step > ?2 "
              "ORDER BY step, revision LIMIT ?3");
  s.Bind(1, job_id).Bind(2, after_step).Bind(3, int64_t(limit));
  std::vector<grove::v1::StepMetric> out;
  while (s.Step()) {
    grove::v1::JobEvent e;
    if (!e.ParseFromString(s.Blob(0)))
      throw Error("job database: an event of " + job_id + " does not parse");
    out.push_back(e.metric());
  }
  return out;
}

int64_t JobStore::MaxJobNumber() {
  Statement s(db_, "SELECT COALESCE(MAX(number), 0) FROM jobs");
  s.Step();
  return s.Int(0);
}

}  // namespace grove::coordinator
