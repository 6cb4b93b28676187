#include "coordinator/store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "coordinator/auth.h"

namespace grove::coordinator {

namespace {

struct Ledger {
  bool exists = false;
  std::string instance;
  int64_t max_job_number = 0;
};

Ledger ReadLedger(const std::string& path) {
  Ledger l;
  std::ifstream in(path);
  if (!in) return l;
  std::string key;
  while (in >> key) {
    if (key == "instance") in >> l.instance;
    else if (key == "max_job_number") in >> l.max_job_number;
    else in.ignore(1 << 20, '\n');
  }
  l.exists = !l.instance.empty();
  return l;
}

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

StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path,
                                                   StoreOptions options) {
  const bool memory = path == ":memory:";
  bool existed = false;
  struct stat info {};
  if (!memory) {
    existed = ::stat(path.c_str(), &info) == 0 && info.st_size > 0;
    // Created 0600 before SQLite opens it (SQLite would use 0644); the WAL and shared-memory
    // files take the database file's permissions.
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      const int err = errno;
      if (err == EACCES || err == EROFS || err == EPERM)
        return Status::Error("job database " + path + " is not writable (" + std::strerror(err) +
                             "): make it and its folder writable, or pass another --db");
      return Status::Error("cannot open job database " + path + ": " + std::strerror(err));
    }
    ::close(fd);
    if (::stat(path.c_str(), &info) != 0)
      return Status::Error("cannot stat job database " + path + ": " + std::strerror(errno));
  }
  sqlite3* db = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Status::Error("cannot open job database " + path + ": " + msg);
  }
  if (sqlite3_db_readonly(db, "main") == 1) {
    sqlite3_close(db);
    return Status::Error("job database " + path +
                         " is read-only: make it writable (chmod u+w) or pass another --db");
  }
  std::unique_ptr<JobStore> store(new JobStore(db, path));
  store->file_backed_ = !memory;
  store->dev_ = uint64_t(info.st_dev);
  store->ino_ = uint64_t(info.st_ino);
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
    store->Exec(
        "CREATE TABLE IF NOT EXISTS worker_tokens ("
        "  job_id TEXT NOT NULL REFERENCES jobs(id),"
        "  attempt INTEGER NOT NULL,"
        "  sha256 TEXT NOT NULL,"
        "  PRIMARY KEY (job_id, attempt, sha256)) WITHOUT ROWID");
    store->Exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
    if (Status st = store->CheckIdentity(options, existed); !st.ok()) return st;
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("readonly") != std::string::npos)
      return Status::Error("job database " + path +
                           " is read-only (or its folder is): make them writable or pass another "
                           "--db (" + what + ")");
    return Status::Error("job database " + path + ": " + what);
  }
  return store;
}

Status JobStore::CheckIdentity(const StoreOptions& options, bool existed) {
  Statement q(db_, "SELECT value FROM meta WHERE key = 'instance'");
  std::string instance = q.Step() ? q.Text(0) : "";
  if (!file_backed_) {
    instance_ = instance;
    return Status::Ok();
  }
  const std::string ledger_path = path_ + ".ledger";
  const Ledger ledger = ReadLedger(ledger_path);
  Statement n(db_, "SELECT COUNT(*) FROM jobs");
  n.Step();
  const int64_t jobs = n.Int(0);
  if (ledger.exists && instance != ledger.instance) {
    char last[32];
    std::snprintf(last, sizeof last, "job-%06lld", static_cast<long long>(ledger.max_job_number));
    const std::string what =
        instance.empty() ? (existed && jobs > 0 ? "a database without an instance id"
                                                : "a new, empty database")
                         : "another database (instance " + instance + ")";
    if (!options.accept_new_database)
      return Status::Error("job database " + path_ + " is " + what + ", but " + ledger_path +
                           " records database instance " + ledger.instance + " with jobs up to " +
                           last +
                           ": the database was deleted or replaced. Restore it, or start anew "
                           "with --accept-new-database (job numbers continue after " + last +
                           ")");
  }
  if (instance.empty()) {
    instance = RandomHex(16);
    Statement ins(db_, "INSERT INTO meta (key, value) VALUES ('instance', ?1)");
    ins.Bind(1, instance);
    ins.Step();
  }
  instance_ = instance;
  ledger_max_ = ledger.max_job_number;
  WriteLedger();
  return Status::Ok();
}

void JobStore::WriteLedger() {
  if (!file_backed_) return;
  Statement s(db_, "SELECT COALESCE(MAX(number), 0) FROM jobs");
  s.Step();
  ledger_max_ = std::max(ledger_max_, s.Int(0));
  const std::string ledger_path = path_ + ".ledger", tmp = ledger_path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw Error("cannot write " + tmp + ": " + std::strerror(errno));
  std::ostringstream text;
  text << "# grove-coordinator: the job database " << path_ << " (do not delete)\n"
       << "instance " << instance_ << "\nmax_job_number " << ledger_max_ << "\n";
  const std::string body = text.str();
  const bool ok = ::write(fd, body.data(), body.size()) == ssize_t(body.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), ledger_path.c_str()) != 0)
    throw Error("cannot write " + ledger_path + ": " + std::strerror(errno));
}

Status JobStore::CheckFile() const {
  if (!file_backed_) return Status::Ok();
  struct stat info {};
  if (::stat(path_.c_str(), &info) != 0)
    return Status::Error("job database " + path_ +
                         " was deleted while grove-coordinator was running (" +
                         std::strerror(errno) + "); its writes would be lost");
  if (uint64_t(info.st_dev) != dev_ || uint64_t(info.st_ino) != ino_)
    return Status::Error("job database " + path_ +
                         " was replaced by another file while grove-coordinator was running");
  return Status::Ok();
}

void JobStore::AddWorkerToken(const WorkerTokenRecord& record) {
  if (Status st = CheckFile(); !st.ok()) throw Error(st.message());
  Statement s(db_, "INSERT OR IGNORE INTO worker_tokens (job_id, attempt, sha256) VALUES (?1, ?2, ?3)");
  s.Bind(1, record.job_id).Bind(2, int64_t(record.attempt)).Bind(3, record.sha256);
  s.Step();
}

std::vector<WorkerTokenRecord> JobStore::LoadWorkerTokens() {
  std::vector<WorkerTokenRecord> out;
  Statement s(db_, "SELECT job_id, attempt, sha256 FROM worker_tokens");
  while (s.Step()) out.push_back(WorkerTokenRecord{s.Text(0), int(s.Int(1)), s.Text(2)});
  return out;
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
  if (Status st = CheckFile(); !st.ok()) throw Error(st.message());
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
  if (number > ledger_max_) WriteLedger();  // job ids are never handed out twice
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
  return std::max(s.Int(0), ledger_max_);
}

}  // namespace grove::coordinator
