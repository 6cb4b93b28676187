#!/usr/bin/env bash
# Jobs stopped the way clusters stop them, end to end with real processes:
#   standalone  SIGTERM to a 1-rank grove-worker and SIGUSR1 to a 2-rank mpirun: each writes a
#               checkpoint at the step it reached and exits 128+signal; --resume continues with
#               losses bit-identical to an uninterrupted run
#   preempt     a coordinator, grove-launch -n 2; SIGTERM to grove-launch: the job is PREEMPTED at
#               the step reached with a checkpoint there; `grove-launch --resume JOB` brings it to
#               SUCCEEDED with every step's loss bit-identical to an uninterrupted run
#   cancel      SIGINT to grove-launch: CANCELLED after a checkpoint; --resume continues it as a
#               new job to SUCCEEDED; resuming again with the same --request-id (a requeued Slurm
#               script) finds that job instead of creating another
#   kill        kill -9 of rank 1 under grove-launch: FAILED within 5 s naming rank 1 and signal 9,
#               grove-launch exits, no process of the job is left, `grove status` lists no rank as
#               running
#   graceout    SIGTERM to rank 0 while rank 1 is frozen (SIGSTOP): rank 0 cannot finish its step or
#               save within its 1 s stop grace; it reports the missed checkpoint before it exits, so
#               the job is PREEMPTED at once (before the coordinator's 3 s heartbeat timeout),
#               naming the last checkpoint, not FAILED by the exit code or the silence
# usage: preemption.sh SCENARIO GROVE_COORDINATOR GROVE GROVE_WORKER DATA_DIR
set -euo pipefail
SCENARIO=$1 COORD=$2 GROVE=$3 WORKER=$4 DATA=$5
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LAUNCH=$ROOT/launch/grove-launch
if [ ! -f "$DATA/train.bin" ]; then
  echo "SKIP: no prepared dataset in $DATA (run launch/setup.sh)"
  exit 77
fi
T=$(mktemp -d /tmp/grove-preempt-XXXXXX)
CPID="" LPID=""
cleanup() {
  [ -n "$LPID" ] && kill -9 "$LPID" 2>/dev/null || true
  # mpirun runs in its own session: a failed scenario ends it and its ranks by the coordinator
  # address only this run uses, so that no process outlives the test.
  [ -s "$T/port" ] && pkill -9 -f -- "--coordinator 127.0.0.1:$(cat "$T/port")( |$)" 2>/dev/null || true
  [ -n "$CPID" ] && kill -9 "$CPID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL ($SCENARIO): $*"
  for f in coord.log launch.log launch2.log run.log; do
    [ -f "$T/$f" ] && { echo "--- $f"; tail -n 25 "$T/$f"; }
  done
  exit 1
}
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl=self,vader OMP_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe -np 2)
[ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root)

STEPS=30
tiny=(--set model.d_model=32 --set model.n_layers=1 --set model.n_heads=2
      --set model.max_seq_len=32 --set train.seq_len=32 --set train.batch_size=2
      --set train.eval_every=0 --set train.eval_batches=1 --set train.steps=$STEPS
      --set train.warmup_steps=2 --set train.checkpoint_every=1000 --set train.threads=1
      --set "data.dir=$DATA")
# Slow the steps down a little so that a signal lands mid-run: a larger batch.
slow=(--set train.batch_size=16)

# losses FILE: "step loss" per training step of a metrics.jsonl (exact decimal of the float).
losses() {
  python3 -c '
import json, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    if "loss" in d: rows.setdefault(d["step"], []).append(repr(d["loss"]))
for s in sorted(rows): print(s, " ".join(rows[s]))' "$1"
}
# same_losses A B: every step once in B, and equal to A's, bit for bit.
same_losses() {
  losses "$1" > "$T/a.txt"
  losses "$2" > "$T/b.txt"
  [ "$(wc -l < "$T/a.txt")" = "$STEPS" ] || fail "reference run has $(wc -l < "$T/a.txt") steps"
  diff "$T/a.txt" "$T/b.txt" > "$T/diff.txt" || { cat "$T/diff.txt" | head; fail "losses differ from the uninterrupted run"; }
}
wait_for_step() {  # wait_for_step METRICS N SECONDS
  local end=$((SECONDS + $3))
  until [ -f "$1" ] && [ "$(grep -c '"loss"' "$1" 2>/dev/null || true)" -ge "$2" ]; do
    [ $SECONDS -lt $end ] || fail "no step $2 in $1 within $3 s"
    sleep 0.1
  done
}

start_coordinator() {
  echo "test-token-$RANDOM$RANDOM" > "$T/token"
  export GROVE_TOKEN_FILE=$T/token
  "$COORD" --listen 127.0.0.1:0 --port-file "$T/port" --db "$T/grove.db" --heartbeat-timeout 3 \
    --registration-timeout 60 --data-root "$DATA" --run-root "$T" >> "$T/coord.log" 2>&1 &
  CPID=$!
  for _ in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
  [ -s "$T/port" ] || fail "coordinator did not start"
  export GROVE_COORDINATOR=127.0.0.1:$(cat "$T/port")
}
job_field() {
  "$GROVE" status "$1" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$2"
}
state() { job_field "$1" 'd.get("state", "")'; }
launch() {  # launch LOG ARGS...: grove-launch -n 2 in the background
  local log=$1
  shift
  # A background job of a script starts with SIGINT ignored; a terminal's launcher would not.
  GROVE_BUILD_DIR=$(dirname "$(dirname "$WORKER")") env --default-signal=INT "$LAUNCH" -n 2 --coordinator "$GROVE_COORDINATOR" \
    --mpirun-arg --oversubscribe "$@" > "$T/$log" 2>&1 &
  LPID=$!
}
wait_launcher() {  # wait_launcher SECONDS -> LRC
  local end=$((SECONDS + $1))
  while kill -0 "$LPID" 2>/dev/null; do
    [ $SECONDS -lt $end ] || fail "grove-launch still running after $1 s"
    sleep 0.2
  done
  LRC=0
  wait "$LPID" || LRC=$?
  LPID=""
}
no_orphans() {  # this scenario's processes only: other tests (ctest -j) also run a job-000001
  if pgrep -f -- "--coordinator $GROVE_COORDINATOR .*--job $1( |$)" > /dev/null; then
    ps -eo pid,args | grep -- "--coordinator $GROVE_COORDINATOR .*--job $1" | grep -v grep
    fail "processes of $1 are left"
  fi
}
endless_job_config() {  # endless_job_config FILE: a tiny job that trains until it is stopped
  python3 - "$1" "$DATA" "$T/out" <<'PY'
import json, sys
cfg, data, out = sys.argv[1:]
json.dump({"model": {"vocab_size": 8192, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
           "train": {"batch_size": 2, "seq_len": 32, "steps": 1000000, "warmup_steps": 2,
                     "eval_every": 0, "eval_batches": 1, "checkpoint_every": 100000, "threads": 1},
           "data": {"dir": data}, "out_dir": out}, open(cfg, "w"))
PY
}
reference() {  # the uninterrupted run at the same layout
  "${MPIRUN[@]}" "$WORKER" train "${tiny[@]}" "${slow[@]}" --set "out_dir=$T/ref" -q > "$T/run.log" 2>&1 ||
    fail "reference run failed"
}

case "$SCENARIO" in
  standalone)
    # One rank, SIGTERM.
    "$WORKER" train "${tiny[@]}" "${slow[@]}" --set "out_dir=$T/one" -q > "$T/run.log" 2>&1 &
    P=$!
    wait_for_step "$T/one/metrics.jsonl" 5 60
    kill -TERM "$P"
    RC=0; wait "$P" || RC=$?
    [ "$RC" = 143 ] || fail "exit code $RC after SIGTERM, want 143"
    AT=$(tail -n 1 "$T/one/checkpoints/latest")
    N=$(grep -c '"loss"' "$T/one/metrics.jsonl")
    [ "$AT" = "$(printf 'step_%08d' "$N")" ] || fail "checkpoint $AT, last step logged $N"
    grep -q "preempted (SIGTERM): stopped at step $N after a checkpoint" "$T/run.log" || fail "no stop message"
    echo "SIGTERM: checkpoint $AT at the step reached"
    "$WORKER" train "${tiny[@]}" "${slow[@]}" --set "out_dir=$T/one" -q --resume >> "$T/run.log" 2>&1 ||
      fail "resume failed"
    "$WORKER" train "${tiny[@]}" "${slow[@]}" --set "out_dir=$T/ref1" -q > /dev/null 2>&1 || fail "reference"
    losses "$T/ref1/metrics.jsonl" > "$T/a.txt"; losses "$T/one/metrics.jsonl" > "$T/b.txt"
    diff "$T/a.txt" "$T/b.txt" > /dev/null || fail "1 rank: resumed losses differ"
    echo "1 rank: $STEPS steps, resumed after step $N, losses bit-identical"
    # Two ranks under mpirun, SIGUSR1 forwarded by mpirun to both.
    "${MPIRUN[@]}" "$WORKER" train "${tiny[@]}" "${slow[@]}" --set "out_dir=$T/two" -q > "$T/run.log" 2>&1 &
    P=$!
    wait_for_step "$T/two/metrics.jsonl" 5 60
    kill -USR1 "$P"
    RC=0; wait "$P" || RC=$?
    [ "$RC" != 0 ] || fail "mpirun exited 0 after SIGUSR1"
    N=$(grep -c '"loss"' "$T/two/metrics.jsonl")
    [ "$(tail -n 1 "$T/two/checkpoints/latest")" = "$(printf 'step_%08d' "$N")" ] || fail "2 ranks: no checkpoint at step $N"
    "${MPIRUN[@]}" "$WORKER" train "${tiny[@]}" "${slow[@]}" --set "out_dir=$T/two" -q --resume >> "$T/run.log" 2>&1 ||
      fail "2 ranks: resume failed"
    reference
    same_losses "$T/ref/metrics.jsonl" "$T/two/metrics.jsonl"
    echo "2 ranks: SIGUSR1 through mpirun, checkpoint at step $N, resumed losses bit-identical"
    ;;
  preempt|cancel)
    # Long enough (seconds, not a fraction of one, on a fast machine) that the ranks are still
    # training when the test has found them and freezes them.
    STEPS=300
    tiny+=(--set train.steps=$STEPS)
    start_coordinator
    reference
    CFG=$T/job.json
    python3 - "$CFG" "$DATA" "$T/out" "$STEPS" <<'PY'
import json, sys
cfg, data, out, steps = sys.argv[1:]
json.dump({"model": {"vocab_size": 8192, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
           "train": {"batch_size": 16, "seq_len": 32, "steps": int(steps), "warmup_steps": 2,
                     "eval_every": 0, "eval_batches": 1, "checkpoint_every": 1000, "threads": 1},
           "data": {"dir": data}, "out_dir": out}, open(cfg, "w"))
PY
    JOB=$("$GROVE" submit -c "$CFG" --world 2 -q)
    launch launch.log --job "$JOB"
    for _ in $(seq 300); do
      [ "$(job_field "$JOB" 'len(d.get("workers", []))' || echo 0)" = 2 ] && break
      sleep 0.2
    done
    PIDS=$(job_field "$JOB" '" ".join(str(w["pid"]) for w in d.get("workers", []))')
    wait_for_step "$T/out/metrics.jsonl" 5 60
    # A fast machine runs the remaining steps before a signal could travel launcher -> mpirun ->
    # ranks: the ranks are frozen until it has arrived, so that it lands mid-run on any machine.
    kill -STOP $PIDS
    SIG=$([ "$SCENARIO" = preempt ] && echo TERM || echo INT)
    kill -$SIG "$LPID"
    SENT=$SECONDS
    for _ in $(seq 50); do grep -q "^==> SIG$SIG: " "$T/launch.log" && break; sleep 0.1; done
    sleep 0.5
    [ "$(grep -c '"loss"' "$T/out/metrics.jsonl")" -lt "$STEPS" ] || fail "the run ended before the signal"
    kill -CONT $PIDS
    wait_launcher 40
    echo "grove-launch exited with $LRC $((SECONDS - SENT)) s after SIG$SIG"
    WANT=$([ "$SCENARIO" = preempt ] && echo PREEMPTED || echo CANCELLED)
    [ "$(state "$JOB")" = "$WANT" ] || fail "state $(state "$JOB"), want $WANT"
    REASON=$(job_field "$JOB" 'd["reason"]')
    echo "reason: $REASON"
    N=$(grep -c '"loss"' "$T/out/metrics.jsonl")
    case "$REASON" in *"at step $N after a checkpoint"*) ;; *) fail "reason does not name step $N" ;; esac
    [ "$(tail -n 1 "$T/out/checkpoints/latest")" = "$(printf 'step_%08d' "$N")" ] || fail "no checkpoint at step $N"
    no_orphans "$JOB"
    launch launch2.log --resume "$JOB" --request-id "requeue-$JOB"
    wait_launcher 120
    [ "$LRC" = 0 ] || fail "grove-launch --resume exited with $LRC"
    NEW=$(sed -n 's/^==> \(job-[0-9]*\) continues .*/\1/p' "$T/launch2.log")
    [ -n "$NEW" ] || fail "no job in the resume launch's output"
    if [ "$SCENARIO" = cancel ]; then
      # The same resume again (a requeued Slurm script) finds the continuing job, not a new one.
      AGAIN=$("$GROVE" resume "$JOB" --request-id "requeue-$JOB" 2>/dev/null)
      [ "$AGAIN" = "$NEW" ] || fail "resuming $JOB again with the same request id gave $AGAIN, want $NEW"
    fi
    [ "$(state "$NEW")" = SUCCEEDED ] || fail "after --resume: $NEW is $(state "$NEW")"
    grep -q "resumed from .*step_$(printf '%08d' "$N")" "$T/launch2.log" || fail "the resumed run did not load step $N"
    same_losses "$T/ref/metrics.jsonl" "$T/out/metrics.jsonl"
    echo "$WANT at step $N, resumed as $NEW to SUCCEEDED: $STEPS steps, losses bit-identical to the uninterrupted run"
    ;;
  kill)
    start_coordinator
    endless_job_config "$T/job.json"
    JOB=$("$GROVE" submit -c "$T/job.json" --world 2 -q)
    launch launch.log --job "$JOB"
    for _ in $(seq 300); do [ "$(job_field "$JOB" 'int(d.get("last_step", 0))' || echo 0)" -ge 5 ] && break; sleep 0.2; done
    PIDS=$(job_field "$JOB" '" ".join(str(w["pid"]) for w in d.get("workers", []))')
    VICTIM=$(job_field "$JOB" 'd["workers"][1]["pid"]')
    kill -9 "$VICTIM"
    KILLED_MS=$(date +%s%3N)
    for _ in $(seq 150); do [ "$(state "$JOB")" = FAILED ] && break; sleep 0.2; done
    # When the coordinator recorded the failure (its clock is this machine's).
    FAILED_MS=$(job_field "$JOB" '[t for t in d["transitions"] if t["to"] == "FAILED"][0]["time_unix_ms"]') ||
      fail "not FAILED after kill -9 ($(state "$JOB"))"
    DELAY_MS=$((FAILED_MS - KILLED_MS))
    echo "FAILED $DELAY_MS ms after kill -9"
    [ "$DELAY_MS" -le 5000 ] || fail "FAILED only $DELAY_MS ms after kill -9 (want <= 5000)"
    REASON=$(job_field "$JOB" 'd["reason"]')
    echo "reason: $REASON"
    case "$REASON" in "rank 1 "*"killed by signal 9"*) ;; *) fail "reason does not name rank 1 and signal 9" ;; esac
    wait_launcher 30
    [ "$LRC" != 0 ] || fail "grove-launch exited 0"
    for p in $PIDS; do kill -0 "$p" 2>/dev/null && fail "worker pid $p still alive"; done
    no_orphans "$JOB"
    "$GROVE" status "$JOB" > "$T/status.txt"
    grep -q " running" "$T/status.txt" && { cat "$T/status.txt"; fail "grove status lists a rank as running"; }
    sed -n '/^RANK/,/^$/p' "$T/status.txt"
    ;;
  graceout)
    start_coordinator
    endless_job_config "$T/job.json"
    JOB=$("$GROVE" submit -c "$T/job.json" --world 2 -q)
    launch launch.log --job "$JOB" --stop-grace 1
    for _ in $(seq 300); do [ "$(job_field "$JOB" 'int(d.get("last_step", 0))' || echo 0)" -ge 5 ] && break; sleep 0.2; done
    R0=$(job_field "$JOB" '[w["pid"] for w in d["workers"] if w.get("rank", 0) == 0][0]')
    R1=$(job_field "$JOB" '[w["pid"] for w in d["workers"] if w.get("rank", 0) == 1][0]')
    kill -STOP "$R1"
    kill -TERM "$R0"
    SENT_MS=$(date +%s%3N)
    for _ in $(seq 100); do [ "$(state "$JOB")" != RUNNING ] && break; sleep 0.1; done
    kill -CONT "$R1" 2>/dev/null || true
    [ "$(state "$JOB")" = PREEMPTED ] || fail "state $(state "$JOB") after the grace ran out, want PREEMPTED"
    AT_MS=$(job_field "$JOB" '[t for t in d["transitions"] if t["to"] == "PREEMPTED"][0]["time_unix_ms"]')
    echo "PREEMPTED $((AT_MS - SENT_MS)) ms after SIGTERM (stop grace 1 s, heartbeat timeout 3 s)"
    [ $((AT_MS - SENT_MS)) -lt 3000 ] || fail "PREEMPTED only $((AT_MS - SENT_MS)) ms after SIGTERM"
    REASON=$(job_field "$JOB" 'd["reason"]')
    echo "reason: $REASON"
    case "$REASON" in *"before its checkpoint was written"*"the last checkpoint is none"*) ;;
      *) fail "reason does not say the checkpoint was missed" ;; esac
    wait_launcher 30
    no_orphans "$JOB"
    ;;
  *) fail "unknown scenario" ;;
esac
echo "PASS ($SCENARIO)"
