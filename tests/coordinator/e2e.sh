#!/usr/bin/env bash
# End-to-end runs: a real grove-coordinator on loopback, real `mpirun grove-worker` ranks, the
# grove CLI. One scenario per invocation (one ctest entry each):
#   e2e.sh SCENARIO COORDINATOR GROVE WORKER LOAD_CLIENT DATA_DIR HEARTBEAT_LOAD
# Scenarios: success, kill, cancel, restart (of the coordinator), relaunch (grove-launch re-runs
# failed workers from their checkpoint), refusals (roles, paths, CLI output), load, heartbeat
# (GetJob p99 while maximal heartbeats arrive), dbloss (the database deleted under it).
# The coordinator confines jobs to --data-root DATA_DIR and --run-root (the test's folder); the
# workers get their attempt's credential from `grove worker-token`, in the environment.
set -euo pipefail
SCENARIO=$1 COORD=$2 GROVE=$3 WORKER=$4 LOAD=$5 DATA=$6 HB_LOAD=${7:-}
NP=${GROVE_E2E_NP:-2}
LAUNCH=$(cd "$(dirname "$0")/../.." && pwd)/launch/grove-launch
HB_TIMEOUT=3
if [ ! -f "$DATA/train.bin" ]; then
  echo "SKIP: no prepared dataset in $DATA (run launch/setup.sh)"
  exit 77
fi
T=$(mktemp -d /tmp/grove-e2e-XXXXXX)
CPID="" MPID=""
cleanup() {
  # Only the processes this script started, by pid.
  [ -n "$MPID" ] && kill -9 "$MPID" 2>/dev/null || true
  [ -n "$CPID" ] && kill -9 "$CPID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL ($SCENARIO): $*"
  echo "--- coordinator log"; tail -n 30 "$T/coord.log" 2>/dev/null || true
  echo "--- mpirun log"; tail -n 30 "$T/mpirun.log" 2>/dev/null || true
  exit 1
}
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
echo "test-token-$RANDOM$RANDOM" > "$T/token"
export GROVE_TOKEN_FILE=$T/token

PORT=0
start_coordinator() {
  rm -f "$T/port"
  "$COORD" --listen "127.0.0.1:$PORT" --port-file "$T/port" --db "$T/grove.db" \
    --data-root "$DATA" --run-root "$T" "$@" \
    --heartbeat-timeout $HB_TIMEOUT --registration-timeout 60 >> "$T/coord.log" 2>&1 &
  CPID=$!
  for _ in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
  [ -s "$T/port" ] || fail "coordinator did not start"
  PORT=$(cat "$T/port")
  export GROVE_COORDINATOR=127.0.0.1:$PORT
}

# jq-free JSON access: field PATH of `grove status JOB --json` (a Python expression on d).
job_field() {
  "$GROVE" status "$1" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$2"
}
state() { job_field "$1" 'd.get("state", "")'; }
step() { job_field "$1" 'int(d.get("last_step", 0))'; }
wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -lt $end ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}
is_state() { [ "$(state "$1")" = "$2" ]; }
at_step() { [ "$(step "$1")" -ge "$2" ]; }

# write_config STEPS CHECKPOINT_EVERY [BATCH SEQ]: a tiny model (batch 2 x 32 by default: a step
# takes 2-30 ms). The scenarios that act on a running job at a given step pass a larger batch, so
# the job is still running when they act, however fast the machine.
write_config() {
  local batch=${3:-2} seq=${4:-32}
  cat > "$T/job.json" <<JSON
{"model": {"vocab_size": 8192, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": $seq},
 "train": {"batch_size": $batch, "seq_len": $seq, "steps": $1, "warmup_steps": 2, "eval_every": 0,
           "eval_batches": 2, "checkpoint_every": $2, "threads": 1},
 "data": {"dir": "$DATA"}, "out_dir": "$T/out"}
JSON
}
submit() { "$GROVE" submit -c "$T/job.json" --world "$1" -q "${@:2}"; }
launch() {  # launch JOB NP: the job's worker credential reaches the ranks in the environment
  GROVE_WORKER_TOKEN=$("$GROVE" worker-token "$1") || fail "no worker credential for $1"
  GROVE_WORKER_TOKEN=$GROVE_WORKER_TOKEN mpirun --allow-run-as-root --oversubscribe \
    --mca btl self,vader -np "$2" -x GROVE_WORKER_TOKEN \
    "$WORKER" train --coordinator "$GROVE_COORDINATOR" --job "$1" -q --stop-grace 3 \
    > "$T/mpirun.log" 2>&1 &
  MPID=$!
}
wait_mpirun() {  # wait_mpirun SECONDS -> sets MRC
  local end=$((SECONDS + $1))
  while kill -0 "$MPID" 2>/dev/null; do
    [ $SECONDS -lt $end ] || fail "mpirun still running after $1 s"
    sleep 0.2
  done
  MRC=0
  wait "$MPID" || MRC=$?
  MPID=""
}
worker_pids() { job_field "$1" '" ".join(str(w["pid"]) for w in d.get("workers", []))'; }
metric_steps() {  # distinct steps with a recorded metric
  "$GROVE" logs "$1" --json | python3 -c '
import json, sys
steps = {int(json.loads(l)["metric"]["step"]) for l in sys.stdin if "\"metric\"" in l}
print(len(steps))'
}

start_coordinator
case "$SCENARIO" in
  success)
    write_config 40 20
    JOB=$(submit "$NP")
    launch "$JOB" "$NP"
    wait_mpirun 120
    [ "$MRC" = 0 ] || fail "mpirun exited with $MRC"
    [ "$(state "$JOB")" = SUCCEEDED ] || fail "state $(state "$JOB"), want SUCCEEDED"
    [ "$(step "$JOB")" = 40 ] || fail "last_step $(step "$JOB"), want 40"
    [ "$(metric_steps "$JOB")" = 40 ] || fail "metrics for $(metric_steps "$JOB") steps, want 40"
    [ -d "$T/out/checkpoints/step_00000040" ] || fail "no final checkpoint"
    # The coordinator recorded every checkpoint the workers wrote (step, path, time).
    CKPTS=$(job_field "$JOB" '",".join(str(c["step"]) for c in d.get("checkpoints", []))')
    [ "$CKPTS" = "20,40" ] || fail "checkpoints recorded: '$CKPTS', want 20,40"
    LAST=$(job_field "$JOB" 'd["checkpoints"][-1]["path"]')
    [ -d "$LAST" ] || fail "recorded checkpoint path $LAST does not exist"
    "$GROVE" checkpoint inspect "$LAST" | grep -q "lm_head" || fail "grove checkpoint inspect"
    "$GROVE" status "$JOB"
    "$GROVE" checkpoint inspect "$LAST" | head -8
    ;;
  kill)
    write_config 1000000 100000
    JOB=$(submit "$NP")
    launch "$JOB" "$NP"
    wait_until 60 "step 5" at_step "$JOB" 5
    PIDS=$(worker_pids "$JOB")
    VICTIM=$(job_field "$JOB" 'd["workers"][1]["pid"]')
    kill -9 "$VICTIM"
    KILLED_AT=$SECONDS
    wait_until $((HB_TIMEOUT + 5)) "FAILED" is_state "$JOB" FAILED
    echo "FAILED $((SECONDS - KILLED_AT)) s after kill -9 (timeout $HB_TIMEOUT s)"
    REASON=$(job_field "$JOB" 'd["reason"]')
    echo "reason: $REASON"
    case "$REASON" in *"rank "*"no heartbeat"*|*"rank "*"exited with code"*) ;;
      *) fail "reason does not name the silent rank: $REASON" ;; esac
    wait_mpirun 30
    [ "$MRC" != 0 ] || fail "mpirun exited 0 after a rank was killed"
    # mpirun's abort reaches the surviving rank as SIGTERM: it tries its checkpoint and exits
    # within its stop grace (3 s here), stuck as it is in a collective with the dead rank.
    for p in $PIDS; do
      end=$((SECONDS + 8))
      while kill -0 "$p" 2>/dev/null; do
        [ $SECONDS -lt $end ] || fail "worker pid $p still alive 8 s after mpirun exited"
        sleep 0.2
      done
    done
    if ps -eo args | grep -v grep | grep -q -- "--job $JOB"; then fail "orphan worker of $JOB"; fi
    ;;
  cancel)
    write_config 1000000 100000
    JOB=$(submit "$NP")
    launch "$JOB" "$NP"
    wait_until 60 "step 5" at_step "$JOB" 5
    "$GROVE" cancel "$JOB" --reason "e2e test" --wait --timeout 30
    wait_mpirun 30
    [ "$MRC" = 0 ] || fail "mpirun exited with $MRC after a cancel"
    [ "$(state "$JOB")" = CANCELLED ] || fail "state $(state "$JOB"), want CANCELLED"
    REASON=$(job_field "$JOB" 'd["reason"]')
    case "$REASON" in *"final checkpoint"*) ;; *) fail "reason: $REASON" ;; esac
    FINAL=$(job_field "$JOB" 'min(int(w.get("step", 0)) for w in d["workers"])')
    CKPT=$(printf '%s/out/checkpoints/step_%08d' "$T" "$FINAL")
    [ -d "$CKPT" ] || fail "no checkpoint at the final step $FINAL ($(ls "$T/out/checkpoints"))"
    echo "cancelled at step $FINAL with checkpoint $(basename "$CKPT")"
    ;;
  restart)
    write_config 400 100 8 128
    JOB=$(submit "$NP" --name restart-test)
    launch "$JOB" "$NP"
    wait_until 60 "step 10" at_step "$JOB" 10
    BEFORE=$(job_field "$JOB" '[(t["from"] if "from" in t else "", t["to"], t["reason"]) for t in d["transitions"]]')
    kill -9 "$CPID"
    wait "$CPID" 2>/dev/null || true
    CPID=""
    sleep 1.5
    start_coordinator  # same port, same database
    [ "$(job_field "$JOB" 'd["spec"]["name"]')" = restart-test ] || fail "job lost"
    AFTER=$(job_field "$JOB" '[(t["from"] if "from" in t else "", t["to"], t["reason"]) for t in d["transitions"]][:2]')
    [ "$AFTER" = "$BEFORE" ] || fail "history changed: $BEFORE -> $AFTER"
    wait_mpirun 120
    [ "$MRC" = 0 ] || fail "mpirun exited with $MRC"
    [ "$(state "$JOB")" = SUCCEEDED ] || fail "state $(state "$JOB") after the restart"
    [ "$(metric_steps "$JOB")" = 400 ] || fail "metrics for $(metric_steps "$JOB") steps, want 400"
    "$GROVE" logs "$JOB" --no-metrics > "$T/events.log"
    grep -q "coordinator restarted" "$T/events.log" || fail "no restart event"
    "$GROVE" jobs
    ;;
  relaunch)
    # grove-launch re-runs the workers when a rank dies and the job has restarts left; they
    # resume from the last checkpoint and the job completes.
    write_config 300 50 8 128
    JOB=$(submit "$NP" --max-restarts 1)
    GROVE_BUILD_DIR=$(dirname "$(dirname "$WORKER")") "$LAUNCH" -n "$NP" --job "$JOB" \
      --mpirun-arg --oversubscribe --mpirun-arg --mca --mpirun-arg btl --mpirun-arg self,vader \
      > "$T/mpirun.log" 2>&1 &
    MPID=$!
    wait_until 60 "step 60" at_step "$JOB" 60
    kill -9 "$(job_field "$JOB" 'd["workers"][1]["pid"]')"
    wait_until 30 "RESTARTING" is_state "$JOB" RESTARTING
    wait_mpirun 150
    [ "$MRC" = 0 ] || fail "grove-launch exited with $MRC"
    [ "$(state "$JOB")" = SUCCEEDED ] || fail "state $(state "$JOB")"
    [ "$(job_field "$JOB" 'd["attempt"]')" = 1 ] || fail "attempt $(job_field "$JOB" 'd["attempt"]')"
    grep -q "resumed from" "$T/mpirun.log" || fail "the second attempt did not resume"
    [ "$(metric_steps "$JOB")" = 300 ] || fail "metrics for $(metric_steps "$JOB") steps"
    "$GROVE" status "$JOB" | tail -n 6
    ;;
  refusals)
    write_config 20 0
    JOB=$(submit 2)
    WT=$("$GROVE" worker-token "$JOB")
    # Wrong world size.
    if GROVE_WORKER_TOKEN=$WT mpirun --allow-run-as-root -np 1 -x GROVE_WORKER_TOKEN "$WORKER" \
      train --coordinator "$GROVE_COORDINATOR" --job "$JOB" -q > "$T/w1.log" 2>&1; then
      fail "a world of 1 joined a world-2 job"
    fi
    grep -q "world_size=2" "$T/w1.log" || fail "no world size in: $(cat "$T/w1.log")"
    # Another job with this job's credential.
    if GROVE_WORKER_TOKEN=$WT mpirun --allow-run-as-root -np 1 -x GROVE_WORKER_TOKEN "$WORKER" \
      train --coordinator "$GROVE_COORDINATOR" --job job-999999 -q > "$T/w2.log" 2>&1; then
      fail "joined another job"
    fi
    grep -q "PERMISSION_DENIED" "$T/w2.log" || fail "no PERMISSION_DENIED in: $(cat "$T/w2.log")"
    # The user token is no worker credential.
    if mpirun --allow-run-as-root -np 2 "$WORKER" train --coordinator "$GROVE_COORDINATOR" \
      --job "$JOB" -q > "$T/w4.log" 2>&1; then fail "a user token registered workers"; fi
    grep -q "PERMISSION_DENIED.*GROVE_WORKER_TOKEN" "$T/w4.log" || fail "$(cat "$T/w4.log")"
    # Paths outside the roots name the field; nothing is created.
    if "$GROVE" submit -c "$T/job.json" --set out_dir=/etc/grove-e2e 2> "$T/p1.log"; then
      fail "out_dir=/etc accepted"
    fi
    grep -q "INVALID_ARGUMENT: spec.config_json: out_dir '/etc/grove-e2e' is outside" "$T/p1.log" ||
      fail "$(cat "$T/p1.log")"
    if "$GROVE" submit -c "$T/job.json" --set data.dir=$T/../.. 2> "$T/p2.log"; then
      fail "data.dir outside the data root accepted"
    fi
    grep -q "data.dir" "$T/p2.log" || fail "$(cat "$T/p2.log")"
    # The CLI shows names as text: escapes are printed, not sent to the terminal.
    NAMED=$("$GROVE" submit -c "$T/job.json" --world 2 -q --name $'evil\e[2J\nFAKE-ROW')
    "$GROVE" jobs > "$T/jobs.txt"
    if grep -q $'\e' "$T/jobs.txt"; then fail "an escape byte reached the terminal"; fi
    grep -q 'evil\\x1b\[2J\\x0aFAKE-ROW' "$T/jobs.txt" || fail "$(cat "$T/jobs.txt")"
    [ "$(grep -c . "$T/jobs.txt")" = 3 ] || fail "a name forged a row: $(cat "$T/jobs.txt")"
    [ "$("$GROVE" jobs --state pending --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["jobs"]))')" = 2 ] ||
      fail "--state pending"
    # --json checkpoint and cancel --wait print one JSON document each.
    "$GROVE" --json cancel "$NAMED" --wait | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["state"]=="CANCELLED", d' ||
      fail "--json cancel --wait is not one JSON document"
    if "$GROVE" --json checkpoint "$JOB" 2> "$T/ck.log"; then fail "checkpoint of a PENDING job"; fi
    grep -q "FAILED_PRECONDITION" "$T/ck.log" || fail "$(cat "$T/ck.log")"
    # Wrong token: the worker and the CLI are refused, and nothing changed.
    if GROVE_TOKEN=wrong mpirun --allow-run-as-root -np 2 -x GROVE_TOKEN "$WORKER" train \
      --coordinator "$GROVE_COORDINATOR" --job "$JOB" -q > "$T/w3.log" 2>&1; then
      fail "a worker with a wrong token joined"
    fi
    grep -q "UNAUTHENTICATED" "$T/w3.log" || fail "no UNAUTHENTICATED in: $(cat "$T/w3.log")"
    if GROVE_TOKEN=wrong "$GROVE" cancel "$JOB" 2> "$T/c.log"; then fail "cancel with a bad token"; fi
    grep -q UNAUTHENTICATED "$T/c.log" || fail "no UNAUTHENTICATED in: $(cat "$T/c.log")"
    [ "$(state "$JOB")" = PENDING ] || fail "state changed to $(state "$JOB")"
    [ "$(job_field "$JOB" 'len(d.get("workers", []))')" = 0 ] || fail "a refused worker is listed"
    # Inconsistent specs name the field.
    if "$GROVE" submit -c "$T/job.json" --world 3 --tp 2 2> "$T/s.log"; then fail "tp=2 on 3 ranks"; fi
    grep -q "INVALID_ARGUMENT: spec.parallel.tp=2" "$T/s.log" || fail "$(cat "$T/s.log")"
    if "$GROVE" submit -c "$T/job.json" --world 1 --memory-gib 0.001 2> "$T/m.log"; then
      fail "accepted a job that does not fit"
    fi
    grep -q "per device at tp=1" "$T/m.log" || fail "$(cat "$T/m.log")"
    [ "$("$GROVE" jobs --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("jobs", [])))')" = 2 ] ||
      fail "rejected submits created jobs"
    cat "$T/w1.log" "$T/w2.log" "$T/w4.log" "$T/p1.log" "$T/s.log" "$T/m.log"
    ;;
  load)
    write_config 1000000 100000
    JOB=$(submit 1)
    launch "$JOB" 1
    wait_until 60 "step 3" at_step "$JOB" 3
    "$LOAD" --coordinator "$GROVE_COORDINATOR" --job "$JOB" --clients "${GROVE_LOAD_CLIENTS:-1000}" \
      --seconds "${GROVE_LOAD_SECONDS:-8}" | tee "$T/load.json"
    is_state "$JOB" RUNNING || fail "the job stopped during the load test: $(state "$JOB")"
    "$GROVE" cancel "$JOB" --wait --timeout 30 > /dev/null
    wait_mpirun 30
    ;;
  heartbeat)
    # A healthy job trains while maximal legal heartbeats of another job arrive back to back.
    write_config 1000000 100000
    JOB=$(submit 1)
    launch "$JOB" 1
    wait_until 60 "step 3" at_step "$JOB" 3
    "$HB_LOAD" --coordinator "$GROVE_COORDINATOR" --job "$JOB" --data-dir "$DATA" \
      --out-dir "$T/hb" --seconds "${GROVE_HB_SECONDS:-8}" --max-p99-ms 100 | tee "$T/hb.json" ||
      fail "heartbeat load: $(cat "$T/hb.json")"
    is_state "$JOB" RUNNING || fail "the healthy job stopped: $(state "$JOB")"
    "$GROVE" cancel "$JOB" --wait --timeout 30 > /dev/null
    wait_mpirun 30
    ;;
  dbloss)
    # The database deleted under a running coordinator: it stops, naming the file; a restart on
    # a fresh file is refused; accepted on request, job numbers continue.
    write_config 20 0
    submit 1 > /dev/null
    J2=$(submit 1)
    rm -f "$T/grove.db" "$T/grove.db-wal" "$T/grove.db-shm"
    if submit 1 2> "$T/s.log"; then fail "a submit after the database was deleted succeeded"; fi
    grep -q "was deleted" "$T/s.log" || fail "$(cat "$T/s.log")"
    for _ in $(seq 50); do kill -0 "$CPID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$CPID" 2>/dev/null; then fail "the coordinator runs on without its database"; fi
    CRC=0
    wait "$CPID" || CRC=$?
    CPID=""
    [ "$CRC" != 0 ] || fail "the coordinator exited 0"
    grep -q "grove.db was deleted" "$T/coord.log" || fail "no reason in the log"
    if "$COORD" --db "$T/grove.db" --listen 127.0.0.1:0 --data-root "$DATA" --run-root "$T" \
      > "$T/c2.log" 2>&1; then fail "started on a fresh database"; fi
    grep -q "accept-new-database" "$T/c2.log" || fail "$(cat "$T/c2.log")"
    start_coordinator --accept-new-database
    J3=$(submit 1)
    [ "$J3" = job-000003 ] || fail "job id $J3 after $J2: ids reused"
    [ "$(stat -c %a "$T/grove.db")" = 600 ] || fail "database mode $(stat -c %a "$T/grove.db")"
    ;;
  *)
    fail "unknown scenario"
    ;;
esac
echo "PASS ($SCENARIO)"
