// grove: the command line of the coordinator.
//   grove submit --config configs/demo.json --world 4 [--set train.steps=50] [--memory-gib 24]
//   grove jobs | grove status JOB | grove watch JOB | grove logs JOB | grove cancel JOB
//   grove plan --model CONFIG --cluster CLUSTER [--gpus N]   (no coordinator: the cost model)
//   grove calibrate --bench FILE --config CONFIG --step-ms MS --out FILE
// Human-readable tables by default; --json prints protobuf JSON (one object, or one event per
// line for watch/logs). Every call has a deadline (--timeout); watch reconnects on its own.
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/sharded_checkpoint.h"
#include "planner/calibrate.h"
#include "planner/cluster.h"
#include "planner/search.h"
#include "proto/client.h"
#include "spec/train_config.h"

namespace {

namespace v1 = grove::v1;
using grove::rpc::StateName;

struct Common {
  grove::rpc::ClientOptions client;
  std::string token_file;
  double timeout_s = 10;
  bool json = false;
  bool silent = false;  // Stream() prints nothing (cancel --wait)
};

int Fail(const std::string& message) {
  std::fprintf(stderr, "grove: error: %s\n", message.c_str());
  return 2;
}

class Client {
 public:
  static grove::StatusOr<Client> Create(Common& c) {
    auto token = grove::rpc::ResolveToken(c.client.token, c.token_file);
    if (!token.ok()) return token.status();
    c.client.token = token.value();
    c.client.deadline = std::chrono::milliseconds(int64_t(c.timeout_s * 1000));
    auto channel = grove::rpc::MakeChannel(c.client);
    if (!channel.ok()) return channel.status();
    return Client(c.client, channel.value());
  }

  template <typename Req, typename Resp, typename Method>
  grpc::Status Call(Method method, const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    grove::rpc::PrepareContext(&ctx, options_.token, options_.deadline);
    return ((*stub_).*method)(&ctx, req, resp);
  }
  v1::Coordinator::Stub& stub() { return *stub_; }
  const grove::rpc::ClientOptions& options() const { return options_; }

 private:
  Client(grove::rpc::ClientOptions o, std::shared_ptr<grpc::Channel> ch)
      : options_(std::move(o)), stub_(v1::Coordinator::NewStub(ch)) {}
  grove::rpc::ClientOptions options_;
  std::shared_ptr<v1::Coordinator::Stub> stub_;
};

int RpcFail(const std::string& what, const grpc::Status& st, const Common& c) {
  const std::string hint = grove::rpc::ConnectionHint(st, c.client);
  return Fail(what + ": " + grove::rpc::DescribeStatus(st) + (hint.empty() ? "" : " (" + hint + ")"));
}

// Text from the coordinator as the terminal shows it: control characters (and C1 controls,
// DEL) become \xNN escapes, so a job name or message cannot move the cursor, change colours or
// forge table rows.
std::string Clean(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const bool c1 = c == 0xc2 && i + 1 < s.size() &&
                    static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
                    static_cast<unsigned char>(s[i + 1]) <= 0x9f;
    if (c < 0x20 || c == 0x7f || c1 || c == '\\') {
      char buf[8];
      const unsigned char v = c1 ? static_cast<unsigned char>(s[++i]) : c;
      if (c == '\\') {
        out += "\\\\";
        continue;
      }
      std::snprintf(buf, sizeof buf, "\\x%02x", v);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

std::string ToJson(const google::protobuf::Message& m, bool pretty = true) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = pretty;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  if (!pretty && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  std::time_t t = unix_ms / 1000;
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string FormatAge(int64_t unix_ms) {
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  int64_t s = std::max<int64_t>(0, (now - unix_ms) / 1000);
  char buf[32];
  if (s < 120)
    std::snprintf(buf, sizeof buf, "%llds", (long long)s);
  else if (s < 7200)
    std::snprintf(buf, sizeof buf, "%lldm", (long long)(s / 60));
  else
    std::snprintf(buf, sizeof buf, "%lldh", (long long)(s / 3600));
  return buf;
}

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string FormatGiBDouble(double bytes) {
  const double g = bytes / (1024.0 * 1024.0 * 1024.0);
  return Fmt(g < 10 ? "%.2f GiB" : "%.1f GiB", g);
}

// A plain text table: columns padded to their widest cell.
void PrintTable(const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(header.size());
  for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (size_t i = 0; i < r.size(); ++i) {
      s += r[i];
      if (i + 1 < r.size()) s += std::string(w[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", s.c_str());
  };
  line(header);
  for (const auto& r : rows) line(r);
}

std::string LayoutText(const v1::Layout& l) {
  return "tp" + std::to_string(l.tp()) + " cp" + std::to_string(l.cp()) + " ep" +
         std::to_string(l.ep()) + " dp" + std::to_string(l.dp()) + " " + l.recompute();
}

std::string EventText(const v1::JobEvent& e) {
  std::string head = FormatTime(e.time_unix_ms()) + "  #" + std::to_string(e.revision()) + "  ";
  if (e.has_transition())
    return head + StateName(e.transition().from()) + " -> " + StateName(e.transition().to()) +
           ": " + Clean(e.transition().reason());
  if (e.has_metric()) {
    const auto& m = e.metric();
    std::string s = head + "step " + std::to_string(m.step()) + "  loss " + Fmt("%.4f", m.loss()) +
                    "  lr " + Fmt("%.2e", m.lr()) + "  " + Fmt("%.0f", m.tokens_per_s()) +
                    " tok/s  " + Fmt("%.0f", m.step_ms()) + " ms";
    if (m.has_val_loss()) s += "  val " + Fmt("%.4f", m.val_loss());
    if (m.has_mfu()) s += "  MFU " + Fmt("%.1f", 100 * m.mfu()) + "%";
    if (m.has_a2a_bytes_sent() && m.has_a2a_bytes_uncompressed() && m.a2a_bytes_uncompressed() > 0)
      s += "  a2a " + Fmt("%.2f", m.a2a_bytes_sent() / 1048576.0) + "/" +
           Fmt("%.2f", m.a2a_bytes_uncompressed() / 1048576.0) + " MiB";
    return s;
  }
  return head + Clean(e.message());
}

// ---- submit ---------------------------------------------------------------------------------

struct SubmitArgs {
  std::string config_path, name, request_id, recompute;
  std::vector<std::string> overrides;
  int world = 1, tp = 0, cp = 0, ep = 0, dp = 0, ranks_per_host = 0, max_restarts = 0;
  double memory_gib = 0;
  bool quiet = false;
};

std::string RandomId() {
  std::random_device rd;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%08x%08x%08x", rd(), rd(), rd());
  return buf;
}

int Submit(Common& c, const SubmitArgs& a) {
  auto config = grove::LoadTrainConfig(a.config_path, a.overrides);
  if (!config.ok()) return Fail(config.status().message());
  // The coordinator takes absolute paths only (it checks them against its --data-root and
  // --run-root): relative ones are taken from this working directory.
  for (std::string* path : {&config.value().data.dir, &config.value().out_dir})
    if (!path->empty() && (*path)[0] != '/')
      *path = std::filesystem::absolute(*path).lexically_normal().string();
  // A recompute mode the user wrote down is kept; otherwise the planner chooses.
  std::string recompute = a.recompute;
  if (recompute.empty()) {
    bool explicit_mode = false;
    for (const auto& kv : a.overrides) explicit_mode |= kv.rfind("train.recompute=", 0) == 0;
    if (!a.config_path.empty()) {
      std::ifstream in(a.config_path);
      auto j = nlohmann::json::parse(in, nullptr, false, true);
      explicit_mode |= j.is_object() && j.contains("train") && j["train"].is_object() &&
                       j["train"].contains("recompute");
    }
    if (explicit_mode) recompute = recompute_name(config.value().train.recompute);
  }
  v1::SubmitJobRequest req;
  req.set_request_id(a.request_id.empty() ? RandomId() : a.request_id);
  v1::JobSpec* spec = req.mutable_spec();
  spec->set_name(a.name);
  spec->set_config_json(config.value().ToJson().dump());
  spec->set_max_restarts(a.max_restarts);
  // A layout written in the config's parallel section is kept unless a flag overrides it.
  const grove::ParallelOptions& cp = config.value().parallel;
  v1::ParallelSpec* p = spec->mutable_parallel();
  p->set_world_size(a.world);
  p->set_tp(a.tp > 0 ? a.tp : (cp.tp != 1 ? cp.tp : 0));
  p->set_cp(a.cp > 0 ? a.cp : (cp.cp != 1 ? cp.cp : 0));
  p->set_ep(a.ep > 0 ? a.ep : (cp.ep != 1 ? cp.ep : 0));
  p->set_dp(a.dp > 0 ? a.dp : cp.dp);
  p->set_recompute(recompute);
  p->set_device_memory_gib(a.memory_gib);
  p->set_ranks_per_host(a.ranks_per_host);

  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  v1::SubmitJobResponse resp;
  grpc::Status st;
  // Retries reuse the request id, so a submit that reached the server is not duplicated.
  for (int attempt = 0; attempt < 4; ++attempt) {
    resp.Clear();
    st = client.value().Call(&v1::Coordinator::Stub::SubmitJob, req, &resp);
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE &&
        st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500 << attempt));
  }
  if (!st.ok()) return RpcFail("submit", st, c);
  const v1::Job& job = resp.job();
  if (c.json) {
    std::printf("%s\n", ToJson(resp).c_str());
  } else if (a.quiet) {
    std::printf("%s\n", job.id().c_str());
  } else {
    std::printf("%s %s (%s)\n", resp.existing() ? "existing job" : "submitted", job.id().c_str(),
                StateName(job.state()).c_str());
    std::printf("layout: %s\n", Clean(job.layout().explanation()).c_str());
    std::printf("launch: mpirun -np %d grove-worker train --coordinator %s --job %s\n",
                job.layout().world_size(), c.client.address.c_str(), job.id().c_str());
  }
  return 0;
}

// ---- jobs / status --------------------------------------------------------------------------

int Jobs(Common& c, const std::vector<std::string>& states, int limit) {
  if (limit < 0) return Fail("--limit must be >= 0");
  v1::ListJobsRequest req;
  const int want = limit == 0 ? 100 : limit;
  for (const auto& name : states) {
    std::string s = name;
    for (char& ch : s) ch = char(std::toupper(static_cast<unsigned char>(ch)));
    v1::JobState st;
    if (!v1::JobState_Parse(s, &st) || st == v1::JOB_STATE_UNSPECIFIED)
      return Fail("--state " + s +
                  " is not a job state (PENDING, RUNNING, RESTARTING, SUCCEEDED, FAILED, "
                  "CANCELLED)");
    req.add_states(st);
  }
  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  // Pages of at most 1000 jobs (and 1 MiB) until --limit jobs or the last page.
  v1::ListJobsResponse resp;
  while (resp.jobs_size() < want) {
    req.set_limit(std::min(1000, want - resp.jobs_size()));
    v1::ListJobsResponse page;
    grpc::Status st = client.value().Call(&v1::Coordinator::Stub::ListJobs, req, &page);
    if (!st.ok()) return RpcFail("jobs", st, c);
    for (auto& j : *page.mutable_jobs()) *resp.add_jobs() = std::move(j);
    if (page.next_page_token().empty()) break;
    req.set_page_token(page.next_page_token());
  }
  if (c.json) {
    std::printf("%s\n", ToJson(resp).c_str());
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& j : resp.jobs())
    rows.push_back({Clean(j.id()), j.spec().name().empty() ? "-" : Clean(j.spec().name()),
                    StateName(j.state()),
                    std::to_string(j.layout().world_size()), LayoutText(j.layout()),
                    std::to_string(j.last_step()) + "/" + std::to_string(j.total_steps()),
                    j.last_step() > 0 ? Fmt("%.4f", j.last_loss()) : "-",
                    j.last_step() > 0 ? Fmt("%.0f", j.tokens_per_s()) : "-",
                    FormatAge(j.created_unix_ms())});
  PrintTable({"ID", "NAME", "STATE", "WORLD", "LAYOUT", "STEP", "LOSS", "TOK/S", "AGE"}, rows);
  return 0;
}

int Status(Common& c, const std::string& id) {
  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  v1::GetJobRequest req;
  req.set_job_id(id);
  v1::Job j;
  grpc::Status st = client.value().Call(&v1::Coordinator::Stub::GetJob, req, &j);
  if (!st.ok()) return RpcFail("status " + id, st, c);
  if (c.json) {
    std::printf("%s\n", ToJson(j).c_str());
    return 0;
  }
  std::printf("job:       %s%s\n", Clean(j.id()).c_str(),
              j.spec().name().empty() ? "" : (" (" + Clean(j.spec().name()) + ")").c_str());
  std::printf("state:     %s%s\n", StateName(j.state()).c_str(),
              j.cancel_requested() && !grove::rpc::IsTerminal(j.state()) ? " (cancelling)" : "");
  std::printf("reason:    %s\n", Clean(j.reason()).c_str());
  std::printf("layout:    %s\n", Clean(j.layout().explanation()).c_str());
  std::printf("progress:  step %lld of %lld, loss %.4f, %.0f tokens/s\n", (long long)j.last_step(),
              (long long)j.total_steps(), j.last_loss(), j.tokens_per_s());
  std::printf("attempt:   %d (max restarts %d)\n", j.attempt(), j.spec().max_restarts());
  std::printf("created:   %s\n\n", FormatTime(j.created_unix_ms()).c_str());
  std::vector<std::vector<std::string>> rows;
  for (const auto& w : j.workers())
    rows.push_back({std::to_string(w.rank()), Clean(w.host()), std::to_string(w.pid()),
                    Clean(w.devices()), std::to_string(w.step()),
                    FormatAge(w.last_heartbeat_unix_ms()) + " ago",
                    w.exit_signal() != 0 ? "killed by signal " + std::to_string(w.exit_signal())
                    : w.exited()         ? "exited " + std::to_string(w.exit_code())
                    : grove::rpc::IsTerminal(j.state()) ? "ended without reporting"
                                                        : "running"});
  if (!rows.empty()) {
    PrintTable({"RANK", "HOST", "PID", "DEVICES", "STEP", "HEARTBEAT", "STATUS"}, rows);
    std::printf("\n");
  }
  rows.clear();
  for (const auto& t : j.transitions())
    rows.push_back({FormatTime(t.time_unix_ms()), StateName(t.from()) + " -> " + StateName(t.to()),
                    Clean(t.reason())});
  PrintTable({"TIME", "TRANSITION", "REASON"}, rows);
  rows.clear();
  for (const auto& ck : j.checkpoints())
    rows.push_back({FormatTime(ck.time_unix_ms()), std::to_string(ck.step()), Clean(ck.path())});
  if (!rows.empty()) {
    std::printf("\n");
    PrintTable({"TIME", "CHECKPOINT STEP", "PATH"}, rows);
  }
  return 0;
}

// `grove checkpoint inspect PATH`: the index of a distributed checkpoint, read from disk (no
// coordinator needed).
int InspectCheckpoint(const std::string& path) {
  auto table = grove::ckpt::Inspect(path);
  if (!table.ok()) return Fail(table.status().message());
  std::printf("%s", table.value().c_str());
  return 0;
}

// ---- watch / logs ---------------------------------------------------------------------------

// Streams events until the job is terminal (follow) or the history is exhausted. Reconnects on
// UNAVAILABLE / DEADLINE_EXCEEDED from the last revision seen. Returns the last state seen.
int Stream(Common& c, const std::string& id, bool follow, bool metrics, bool quiet_messages,
           v1::JobState* last_state) {
  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  int64_t after = 0;
  int failures = 0;
  while (true) {
    grpc::ClientContext ctx;
    // A rolling deadline: long enough for a quiet job, short enough to notice a lost server.
    grove::rpc::PrepareContext(&ctx, client.value().options().token, std::chrono::seconds(60));
    v1::WatchJobRequest req;
    req.set_job_id(id);
    req.set_after_revision(after);
    req.set_follow(follow);
    req.set_include_metrics(metrics);
    auto reader = client.value().stub().WatchJob(&ctx, req);
    v1::JobEvent e;
    while (reader->Read(&e)) {
      failures = 0;
      after = e.revision();
      *last_state = e.state();
      if (c.silent || (quiet_messages && e.has_message())) continue;
      if (c.json)
        std::printf("%s\n", ToJson(e, false).c_str());
      else
        std::printf("%s\n", EventText(e).c_str());
      std::fflush(stdout);
    }
    grpc::Status st = reader->Finish();
    if (st.ok()) return 0;
    const bool retry = st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                       st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!retry || ++failures > 60) return RpcFail("watch " + id, st, c);
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      if (failures == 1) std::fprintf(stderr, "grove: coordinator unavailable; reconnecting...\n");
      std::this_thread::sleep_for(std::chrono::seconds(1));
    } else {
      failures = 0;  // a quiet period, not an error
    }
  }
}

int Watch(Common& c, const std::string& id) {
  v1::JobState last = v1::JOB_STATE_UNSPECIFIED;
  if (int rc = Stream(c, id, /*follow=*/true, /*metrics=*/true, /*quiet_messages=*/false, &last);
      rc != 0)
    return rc;
  if (!c.json) std::printf("job %s: %s\n", id.c_str(), StateName(last).c_str());
  return last == v1::SUCCEEDED ? 0 : 1;
}

int Cancel(Common& c, const std::string& id, const std::string& reason, bool wait) {
  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  v1::CancelJobRequest req;
  req.set_job_id(id);
  req.set_reason(reason);
  v1::Job j;
  grpc::Status st = client.value().Call(&v1::Coordinator::Stub::CancelJob, req, &j);
  if (!st.ok()) return RpcFail("cancel " + id, st, c);
  if (wait && !grove::rpc::IsTerminal(j.state())) {
    v1::JobState last = j.state();
    // Follow the events silently: the answer is the final job, one JSON document with --json.
    Common quiet = c;
    quiet.silent = true;
    if (int rc = Stream(quiet, id, true, false, true, &last); rc != 0) return rc;
    v1::GetJobRequest g;
    g.set_job_id(id);
    st = client.value().Call(&v1::Coordinator::Stub::GetJob, g, &j);
    if (!st.ok()) return RpcFail("status " + id, st, c);
  }
  if (c.json)
    std::printf("%s\n", ToJson(j).c_str());
  else
    std::printf("%s: %s%s\n", j.id().c_str(), StateName(j.state()).c_str(),
                grove::rpc::IsTerminal(j.state())
                    ? (" (" + Clean(j.reason()) + ")").c_str()
                    : " (cancel requested; workers checkpoint and exit at their next step)");
  return 0;
}

int Checkpoint(Common& c, const std::string& id) {
  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  v1::CheckpointJobRequest req;
  req.set_job_id(id);
  v1::Job j;
  grpc::Status st = client.value().Call(&v1::Coordinator::Stub::CheckpointJob, req, &j);
  if (!st.ok()) return RpcFail("checkpoint " + id, st, c);
  if (c.json)
    std::printf("%s\n", ToJson(j).c_str());
  else
    std::printf("%s: checkpoint #%lld requested\n", Clean(id).c_str(),
                (long long)j.checkpoint_seq());
  return 0;
}

// `grove worker-token JOB [--out FILE]`: a worker credential for the job's current attempt
// (docs/coordinator.md). Printed alone on stdout for `GROVE_WORKER_TOKEN=$(grove worker-token
// JOB)`, or written to FILE (0600); with --json the whole answer.
int WorkerToken(Common& c, const std::string& id, const std::string& out) {
  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  v1::IssueWorkerTokenRequest req;
  req.set_job_id(id);
  v1::IssueWorkerTokenResponse resp;
  grpc::Status st = client.value().Call(&v1::Coordinator::Stub::IssueWorkerToken, req, &resp);
  if (!st.ok()) return RpcFail("worker-token " + id, st, c);
  if (!out.empty()) {
    const std::string tmp = out + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return Fail("cannot write " + tmp + ": " + std::strerror(errno));
    const std::string body = resp.worker_token() + "\n";
    const bool ok = ::write(fd, body.data(), body.size()) == ssize_t(body.size());
    ::close(fd);
    if (!ok || std::rename(tmp.c_str(), out.c_str()) != 0)
      return Fail("cannot write " + out + ": " + std::strerror(errno));
    if (!c.json) return 0;
  }
  if (c.json)
    std::printf("%s\n", ToJson(resp).c_str());
  else
    std::printf("%s\n", resp.worker_token().c_str());
  return 0;
}

// The job to launch to continue `id` after any stop: a PREEMPTED (or still live) job continues
// itself; a FAILED or CANCELLED one gets a new job with the same spec that resumes from the
// latest checkpoint in its out_dir. Prints that job's id.
int Resume(Common& c, const std::string& id, std::string request_id) {
  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  v1::GetJobRequest g;
  g.set_job_id(id);
  v1::Job old;
  grpc::Status st = client.value().Call(&v1::Coordinator::Stub::GetJob, g, &old);
  if (!st.ok()) return RpcFail("resume " + id, st, c);
  if (old.state() == v1::SUCCEEDED)
    return Fail("job " + id + " SUCCEEDED (" + old.reason() + "); there is nothing to resume");
  if (!grove::rpc::IsTerminal(old.state())) {
    // Launching it again is the next attempt (PREEMPTED resumes from its checkpoint).
    std::printf("%s\n", old.id().c_str());
    return 0;
  }
  v1::SubmitJobRequest req;
  req.set_request_id(request_id.empty() ? RandomId() : request_id);
  *req.mutable_spec() = old.spec();
  req.mutable_spec()->set_resume(true);
  v1::SubmitJobResponse resp;
  st = client.value().Call(&v1::Coordinator::Stub::SubmitJob, req, &resp);
  if (!st.ok()) return RpcFail("resume " + id, st, c);
  if (c.json)
    std::printf("%s\n", ToJson(resp).c_str());
  else
    std::printf("%s\n", resp.job().id().c_str());
  std::fprintf(stderr, "grove: %s continues %s (%s) from the latest checkpoint in its out_dir\n",
               resp.job().id().c_str(), id.c_str(), StateName(old.state()).c_str());
  return 0;
}

// A launcher's report of how a rank's process ended (mpirun/srun saw it); the coordinator ignores
// it when the rank reported its own exit.
struct RankExit {
  int rank = -1, attempt = 0, code = 0, signal = 0, pid = 0;
  std::string host, message;
};
int ReportRankExit(Common& c, const std::string& id, const RankExit& r) {
  // A worker RPC of the job's attempt: the launcher's worker credential, when it has one.
  if (auto worker_token = grove::rpc::ResolveWorkerToken();
      worker_token.ok() && !worker_token.value().empty())
    c.client.token = worker_token.value();
  auto client = Client::Create(c);
  if (!client.ok()) return Fail(client.status().message());
  v1::ReportExitRequest req;
  req.set_job_id(id);
  req.set_rank(r.rank);
  req.set_attempt(r.attempt);
  req.set_exit_code(r.code);
  req.set_exit_signal(r.signal);
  req.set_host(r.host);
  req.set_pid(r.pid);
  req.set_message(r.message.substr(0, 4000));
  req.set_from_launcher(true);
  v1::ReportExitResponse resp;
  grpc::Status st = client.value().Call(&v1::Coordinator::Stub::ReportExit, req, &resp);
  if (!st.ok()) return RpcFail("report-exit " + id, st, c);
  if (!c.json) std::printf("%s: %s\n", id.c_str(), StateName(resp.state()).c_str());
  return 0;
}

// ---- plan / calibrate (no coordinator: docs/planning.md) -------------------------------------

struct PlanArgs {
  std::string config_path, cluster, precision, recompute;
  std::vector<std::string> overrides;
  int gpus = 0, top = 10, global_batch = 0, tp = 0, cp = 0, ep = 0, dp = 0, pp = 1, pp_virtual = 1;
  double lsh_ratio = 0, expert_imbalance = 1.0, memory_gib = 0;
  bool shard_optimizer = false;
};

std::string ClusterDir() {
  if (const char* d = std::getenv("GROVE_CLUSTER_DIR"); d && *d) return d;
  return GROVE_DEFAULT_CLUSTER_DIR;
}

std::string Seconds(double s) {
  return s >= 1 ? Fmt("%.3g s", s) : s >= 1e-3 ? Fmt("%.3g ms", s * 1e3) : Fmt("%.3g us", s * 1e6);
}

// The workload of a training config as the cost model reads it; errors name the flag.
grove::StatusOr<grove::planner::Workload> WorkloadOf(const grove::TrainConfig& config,
                                                     const PlanArgs& a,
                                                     const grove::planner::ClusterSpec& cluster) {
  namespace pl = grove::planner;
  pl::Workload w;
  w.model = config.model;
  w.seq_len = config.train.seq_len;
  w.cp_attention = config.parallel.cp_attention;
  grove::Precision p = config.train.precision;
  if (!a.precision.empty()) {
    auto parsed = grove::parse_precision(a.precision, "--precision");
    if (!parsed.ok()) return parsed.status();
    p = parsed.value();
  }
  if (p == grove::Precision::kAuto)
    p = cluster.device.peak_bf16 > 0 ? grove::Precision::kBf16 : grove::Precision::kFp32;
  w.precision = p;
  if (config.model.moe.num_experts > 0 && config.model.moe.lsh.enabled) {
    if (a.lsh_ratio < 1)
      return grove::Status::Error(
          "model.moe.lsh.enabled: give --lsh-ratio R, the compression ratio measured in a run "
          "(metrics.jsonl, moe.lsh.compression_ratio)");
    w.lsh_ratio = a.lsh_ratio;
  } else if (a.lsh_ratio > 0) {
    return grove::Status::Error("--lsh-ratio needs model.moe.lsh.enabled=true (an MoE model)");
  }
  if (a.expert_imbalance < 1) return grove::Status::Error("--expert-imbalance must be >= 1");
  w.expert_imbalance = a.expert_imbalance;
  w.shard_optimizer = a.shard_optimizer;
  return w;
}

nlohmann::json PredictionJson(const grove::planner::Prediction& p) {
  nlohmann::json parts = nlohmann::json::object();
  for (const auto& part : p.parts) parts[part.name] = part.seconds;
  const auto& l = p.layout;
  return {{"layout",
           {{"tp", l.tp}, {"cp", l.cp}, {"ep", l.ep}, {"dp", l.dp},
            {"recompute", grove::recompute_name(l.recompute)}, {"sequence_parallel", l.sp && l.tp > 1},
            {"micro_batch", l.micro_batch}, {"grad_accum", l.grad_accum}}},
          {"step_s", p.step_s},
          {"tokens_per_s", p.tokens_per_s},
          {"mfu", p.mfu},
          {"model_flops", p.model_flops},
          {"memory_bytes",
           {{"total", p.memory.total}, {"activations", p.memory.activations},
            {"moe_buffers", p.memory.moe_buffers}, {"parameters", p.memory.parameters},
            {"gradients", p.memory.gradients}, {"optimizer", p.memory.optimizer}}},
          {"parts_s", parts},
          {"dp_reduction_total_s", p.dp_reduction_total_s}};
}

int Plan(const Common& c, const PlanArgs& a) {
  namespace pl = grove::planner;
  auto config = grove::LoadTrainConfig(a.config_path, a.overrides);
  if (!config.ok()) return Fail(config.status().message());
  auto cluster = pl::LoadClusterOrPreset(a.cluster, ClusterDir());
  if (!cluster.ok()) return Fail(cluster.status().message());
  const pl::ClusterSpec& cl = cluster.value();
  auto workload = WorkloadOf(config.value(), a, cl);
  if (!workload.ok()) return Fail(workload.status().message());
  pl::SearchRequest r;
  r.workload = workload.value();
  r.world = a.gpus > 0 ? a.gpus : (cl.max_nodes > 0 ? cl.devices_per_node * cl.max_nodes : 0);
  if (r.world < 1)
    return Fail("--gpus N is needed: cluster " + cl.name + " has no fixed size (max_nodes 0)");
  const grove::TrainOptions& t = config.value().train;
  if (a.global_batch > 0) {  // the global batch is kept, the micro-batch searched
    r.split = pl::BatchSplit::kFree;
    r.global_batch = a.global_batch;
  } else {  // Grove's config: train.batch_size per micro-batch (over dp), grad_accum of them
    r.split = pl::BatchSplit::kFixedGlobalMicroBatch;
    r.global_micro_batch = t.batch_size;
    r.global_batch = t.batch_size * t.grad_accum;
  }
  r.tp = a.tp, r.cp = a.cp, r.ep = a.ep, r.dp = a.dp;
  r.pp = a.pp, r.pp_virtual = a.pp_virtual;
  if (!a.recompute.empty()) {
    auto rc = grove::parse_recompute(a.recompute, "--recompute");
    if (!rc.ok()) return Fail(rc.status().message());
    r.recompute = rc.value();
  }
  r.sp = config.value().parallel.sequence_parallel;
  r.memory_limit_bytes = a.memory_gib * 1024.0 * 1024.0 * 1024.0;
  r.max_results = a.top;
  auto found = pl::SearchLayouts(r, cl);
  if (!found.ok()) return Fail(found.status().message());
  const pl::SearchResult& res = found.value();
  if (c.json) {
    nlohmann::json out = {{"cluster", cl.name},
                          {"world", r.world},
                          {"precision", grove::precision_name(r.workload.precision)},
                          {"global_batch", r.global_batch},
                          {"seq_len", r.workload.seq_len},
                          {"considered", res.considered},
                          {"rejected_memory", res.rejected_memory},
                          {"layouts", nlohmann::json::array()}};
    for (const auto& p : res.ranked) out["layouts"].push_back(PredictionJson(p));
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("cluster %s, %d devices, %s; global batch %d x %d tokens; %d layouts valid, %d over "
              "memory\n",
              cl.name.c_str(), r.world, grove::precision_name(r.workload.precision),
              r.global_batch, r.workload.seq_len, res.considered, res.rejected_memory);
  std::vector<std::vector<std::string>> rows;
  int rank = 0;
  auto share = [](const pl::Prediction& p, const char* name) {
    return Fmt("%.1f", 100.0 * p.part(name) / p.step_s);
  };
  for (const auto& p : res.ranked) {
    const double compute = p.part("gemm") + p.part("attention") + p.part("memory-bound") +
                           p.part("recompute") + p.part("optimizer");
    rows.push_back({std::to_string(++rank), p.layout.str(), Seconds(p.step_s),
                    Fmt("%.4g", p.tokens_per_s), Fmt("%.1f%%", 100 * p.mfu),
                    FormatGiBDouble(p.memory.total), Fmt("%.1f", 100 * compute / p.step_s),
                    share(p, "tp collectives"), share(p, "cp attention"), share(p, "ep all-to-all"),
                    share(p, "dp reduction")});
  }
  PrintTable({"#", "LAYOUT", "STEP", "TOK/S", "MFU", "MEM/DEV", "COMPUTE%", "TP%", "CP%", "A2A%",
              "DP%"},
             rows);
  std::printf("(shares of the step: compute incl. recompute and optimizer; TP/CP/A2A blocking "
              "collectives; DP the gradient sum not hidden behind the backward)\n");
  return 0;
}

struct CalibrateArgs {
  std::string bench, config_path, out, name = "cpu-this-machine";
  std::vector<std::string> overrides;
  double step_ms = 0, memory_gib = 0, latency_us = 0;
  double cores = 0;
};

int Calibrate(const CalibrateArgs& a) {
  namespace pl = grove::planner;
  std::ifstream in(a.bench);
  if (!in) return Fail("cannot read --bench " + a.bench);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto samples = pl::ParseBenchLines(text);
  if (!samples.ok()) return Fail(a.bench + ": " + samples.status().message());
  auto config = grove::LoadTrainConfig(a.config_path, a.overrides);
  if (!config.ok()) return Fail(config.status().message());
  const double cores = a.cores > 0 ? a.cores : double(std::thread::hardware_concurrency());
  double memory_gib = a.memory_gib;
  if (memory_gib <= 0) {
    std::ifstream mi("/proc/meminfo");
    std::string key;
    double kb = 0;
    while (mi >> key >> kb)
      if (key == "MemTotal:") break;
    memory_gib = kb / (1024.0 * 1024.0);
  }
  if (memory_gib <= 0) return Fail("--memory-gib is needed (no /proc/meminfo)");
  pl::Workload w;
  w.model = config.value().model;
  w.seq_len = config.value().train.seq_len;
  w.precision = grove::Precision::kFp32;
  pl::Layout l;  // one rank: the whole micro-batch
  l.micro_batch = config.value().train.batch_size;
  l.grad_accum = config.value().train.grad_accum;
  l.recompute = config.value().train.recompute;
  auto cluster = pl::CalibrateCpuCluster(samples.value(), w, l, a.step_ms / 1e3, cores,
                                         memory_gib, a.name, a.latency_us * 1e-6);
  if (!cluster.ok()) return Fail(cluster.status().message());
  const std::string body = pl::ClusterToJson(cluster.value()).dump(2) + "\n";
  const std::string tmp = a.out + ".tmp";
  {
    std::ofstream o(tmp);
    o << body;
    if (!o) return Fail("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), a.out.c_str()) != 0)
    return Fail("cannot write " + a.out + ": " + std::strerror(errno));
  std::printf("%s", body.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"grove: submit and track Grove training jobs"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand
  Common c;
  if (const char* env = std::getenv("GROVE_COORDINATOR"); env && *env) c.client.address = env;
  app.add_option("--coordinator", c.client.address,
                 "coordinator host:port (env GROVE_COORDINATOR; default 127.0.0.1:7070)");
  app.add_option("--token-file", c.token_file,
                 "bearer token file (or GROVE_TOKEN / GROVE_TOKEN_FILE)");
  app.add_option("--tls-ca", c.client.tls_ca_file, "PEM CA of the coordinator's certificate");
  app.add_option("--tls-server-name", c.client.tls_server_name,
                 "name to check in the coordinator's certificate");
  app.add_option("--tls-cert", c.client.tls_cert_file,
                 "PEM client certificate, for a coordinator that requires one (mutual TLS)");
  app.add_option("--tls-key", c.client.tls_key_file, "PEM private key of --tls-cert");
  app.add_option("--timeout", c.timeout_s, "deadline of each call in seconds")
      ->check(CLI::PositiveNumber);
  app.add_flag("--json", c.json, "machine-readable output");

  SubmitArgs sa;
  auto* submit = app.add_subcommand("submit", "submit a training job");
  submit->add_option("--config,-c", sa.config_path, "TrainConfig JSON file")->required();
  submit->add_option("--set", sa.overrides, "override a config key: section.key=value");
  submit->add_option("--world,-n", sa.world, "number of MPI ranks")->check(CLI::PositiveNumber);
  submit->add_option("--tp", sa.tp, "tensor parallel size (default: planned)");
  submit->add_option("--cp", sa.cp, "context parallel size (default 1)");
  submit->add_option("--ep", sa.ep, "expert parallel size (default 1)");
  submit->add_option("--dp", sa.dp, "data parallel size (default: world / (tp*cp))");
  submit->add_option("--recompute", sa.recompute,
                     "none | selective | full (default: the config's, else planned)");
  submit->add_option("--memory-gib", sa.memory_gib, "memory per device in GiB (0 = no limit)");
  submit->add_option("--ranks-per-host", sa.ranks_per_host, "devices per host (default: world)");
  submit->add_option("--name", sa.name, "job name");
  submit->add_option("--max-restarts", sa.max_restarts, "restarts from checkpoint on failure");
  submit->add_option("--request-id", sa.request_id, "idempotency key (default: random)");
  submit->add_flag("--quiet,-q", sa.quiet, "print only the job id");

  std::vector<std::string> states;
  int limit = 0;
  auto* jobs = app.add_subcommand("jobs", "list jobs, newest first");
  jobs->add_option("--state", states, "only jobs in these states");
  jobs->add_option("--limit", limit, "at most this many (default 100)");

  std::string id, reason;
  bool wait = false, follow = false, no_metrics = false;
  auto* status = app.add_subcommand("status", "a job's state, layout, workers and transitions");
  status->add_option("job", id, "job id")->required();
  auto* watch = app.add_subcommand("watch", "follow a job live (loss, tokens/s, transitions)");
  watch->add_option("job", id, "job id")->required();
  auto* logs = app.add_subcommand("logs", "a job's event log (transitions, workers, metrics)");
  logs->add_option("job", id, "job id")->required();
  logs->add_flag("--follow,-f", follow, "keep streaming until the job ends");
  logs->add_flag("--no-metrics", no_metrics, "leave out per-step metrics");
  auto* cancel = app.add_subcommand("cancel", "stop a job after a final checkpoint");
  cancel->add_option("job", id, "job id")->required();
  cancel->add_option("--reason", reason, "recorded with the cancellation");
  cancel->add_flag("--wait", wait, "wait until the job is CANCELLED");
  auto* checkpoint = app.add_subcommand(
      "checkpoint", "ask a running job to checkpoint now (grove checkpoint JOB), or inspect one");
  checkpoint->add_option("job", id, "job id");
  std::string ckpt_path;
  auto* inspect = checkpoint->add_subcommand("inspect", "print a checkpoint's index as a table");
  inspect->add_option("path", ckpt_path, "checkpoint directory (step_XXXXXXXX)")->required();
  std::string token_out;
  auto* worker_token = app.add_subcommand(
      "worker-token", "(launchers) a worker credential for the job's current attempt");
  worker_token->add_option("job", id, "job id")->required();
  worker_token->add_option("--out", token_out, "write it to this file (0600) instead of stdout");
  std::string resume_request_id;
  auto* resume = app.add_subcommand(
      "resume", "continue a stopped job from its latest checkpoint; prints the job to launch");
  resume->add_option("job", id, "job id")->required();
  resume->add_option("--request-id", resume_request_id, "idempotency key (default: random)");
  RankExit rank_exit;
  auto* report_exit = app.add_subcommand(
      "report-exit", "(launchers) report how a rank's process ended, as mpirun saw it");
  report_exit->add_option("job", id, "job id")->required();
  report_exit->add_option("--rank", rank_exit.rank, "MPI world rank")->required();
  report_exit->add_option("--attempt", rank_exit.attempt, "the job's attempt it ran in")
      ->required();
  report_exit->add_option("--code", rank_exit.code, "exit code (when it exited)");
  report_exit->add_option("--signal", rank_exit.signal, "the signal that killed it");
  report_exit->add_option("--host", rank_exit.host, "where it ran");
  report_exit->add_option("--pid", rank_exit.pid, "its process id");
  report_exit->add_option("--message", rank_exit.message, "what else the launcher knows");
  PlanArgs pa;
  auto* plan = app.add_subcommand(
      "plan", "rank layouts by predicted step time on a cluster (cost model; no coordinator)");
  plan->add_option("--model,-m,--config", pa.config_path, "TrainConfig JSON (model and train)")
      ->required();
  plan->add_option("--cluster", pa.cluster, "cluster file or preset name (configs/clusters)")
      ->required();
  plan->add_option("--gpus,-n", pa.gpus, "devices (default: the cluster's size)");
  plan->add_option("--set", pa.overrides, "override a config key: section.key=value");
  plan->add_option("--top", pa.top, "show this many layouts (0 = all)")->check(CLI::NonNegativeNumber);
  plan->add_option("--global-batch", pa.global_batch,
                   "sequences per step; the micro-batch is then searched (default: the "
                   "config's batch_size x grad_accum, micro-batch fixed)");
  plan->add_option("--tp", pa.tp, "fix tensor parallel");
  plan->add_option("--cp", pa.cp, "fix context parallel");
  plan->add_option("--ep", pa.ep, "fix expert parallel");
  plan->add_option("--dp", pa.dp, "fix data parallel");
  plan->add_option("--recompute", pa.recompute, "fix none | selective | full");
  plan->add_option("--pp", pa.pp,
                   "pipeline stages, 1F1B (only to evaluate published configurations: Grove "
                   "trains with pp = 1)");
  plan->add_option("--pp-virtual", pa.pp_virtual, "interleaved virtual stages per device");
  plan->add_option("--precision", pa.precision, "fp32 | bf16 (default: bf16 where the device has it)");
  plan->add_option("--memory-gib", pa.memory_gib, "memory per device (default: the cluster's)");
  plan->add_option("--lsh-ratio", pa.lsh_ratio,
                   "LSH compression ratio measured in a run (needs model.moe.lsh.enabled)");
  plan->add_option("--expert-imbalance", pa.expert_imbalance,
                   "most loaded expert-parallel rank over the mean (default 1)");
  plan->add_flag("--shard-optimizer", pa.shard_optimizer,
                 "AdamW state sharded over data parallel (a distributed optimizer; Grove: no)");
  CalibrateArgs ca;
  auto* calibrate = app.add_subcommand(
      "calibrate", "write this machine's cluster description from benchmark output and a step");
  calibrate->add_option("--bench", ca.bench,
                        "JSON lines of bench_sgemm, bench_attention and comm_bench")
      ->required();
  calibrate->add_option("--config,-c", ca.config_path, "the config the step ran (one rank)")
      ->required();
  calibrate->add_option("--set", ca.overrides, "override a config key: section.key=value");
  calibrate->add_option("--step-ms", ca.step_ms, "measured step time of that 1-rank run")
      ->required()
      ->check(CLI::PositiveNumber);
  calibrate->add_option("--out", ca.out, "cluster file to write")->required();
  calibrate->add_option("--cores", ca.cores,
                        "compute capacity the ranks share, in cores (concurrent single-thread "
                        "GEMMs' summed throughput over one's alone; default: all cores)");
  calibrate->add_option("--memory-gib", ca.memory_gib, "memory (default: MemTotal)");
  calibrate->add_option("--name", ca.name, "the cluster's name");
  calibrate->add_option("--step-latency-us", ca.latency_us,
                        "latency of a blocking collective inside a training step (a multi-rank "
                        "run's all-to-all time per call); default: comm_bench's fit")
      ->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);

  try {
    if (plan->parsed()) return Plan(c, pa);
    if (calibrate->parsed()) return Calibrate(ca);
    if (submit->parsed()) return Submit(c, sa);
    if (jobs->parsed()) return Jobs(c, states, limit);
    if (status->parsed()) return Status(c, id);
    if (watch->parsed()) return Watch(c, id);
    if (cancel->parsed()) return Cancel(c, id, reason, wait);
    if (inspect->parsed()) return InspectCheckpoint(ckpt_path);
    if (worker_token->parsed()) return WorkerToken(c, id, token_out);
    if (checkpoint->parsed()) {
      if (id.empty()) return Fail("grove checkpoint: give a job id, or `inspect PATH`");
      return Checkpoint(c, id);
    }
    if (resume->parsed()) return Resume(c, id, resume_request_id);
    if (report_exit->parsed()) return ReportRankExit(c, id, rank_exit);
    if (logs->parsed()) {
      v1::JobState last = v1::JOB_STATE_UNSPECIFIED;
      return Stream(c, id, follow, !no_metrics, false, &last);
    }
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
  return 0;
}
