#!/usr/bin/env bash
# The dashboard against a real coordinator on loopback with a real training job (mpirun -np 2
# grove-worker, tiny model) and a second job fed synthetic MoE figures by dashboard_feeder:
#   dashboard.sh SCENARIO COORDINATOR GROVE WORKER FEEDER DATA_DIR OUT_DIR
# The synthetic job covers what the trainer does not report yet (MFU, device memory).
# Scenarios:
#   browser  headless chromium (playwright-core): refused without the token, shows the job, the
#            loss curve grows while it runs, MoE panels; screenshots in OUT_DIR
#   metrics  /metrics parsed with prometheus_client and compared with GetJob, while the job runs
#            and after it ended
# Exit 77 (skipped) without the prepared dataset.
set -euo pipefail
SCENARIO=$1 COORD=$2 GROVE=$3 WORKER=$4 FEEDER=$5 DATA=$6 OUT=$7
HERE=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$DATA/train.bin" ]; then
  echo "SKIP: no prepared dataset in $DATA (run launch/setup.sh)"
  exit 77
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
T=$(mktemp -d /tmp/grove-dash-XXXXXX)
CPID="" MPID="" FPID="" JOB=""
cleanup() {
  # Only the processes this script started, by pid. A live job is cancelled first (while the
  # coordinator can still tell its workers), so no worker outlives the test.
  if [ -n "$MPID" ] && kill -0 "$MPID" 2>/dev/null; then
    [ -n "$JOB" ] && timeout 40 "$GROVE" cancel "$JOB" --wait --timeout 30 > /dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$MPID" 2>/dev/null || break; sleep 0.2; done
    kill -TERM "$MPID" 2>/dev/null || true
    sleep 1
  fi
  for p in $FPID $MPID $CPID; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL (dashboard $SCENARIO): $*"
  echo "--- coordinator log"; tail -n 30 "$T/coord.log" 2>/dev/null || true
  echo "--- mpirun log"; tail -n 30 "$T/mpirun.log" 2>/dev/null || true
  exit 1
}
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
echo "dash-token-$RANDOM$RANDOM" > "$T/token"
export GROVE_TOKEN_FILE=$T/token

# With this machine's cluster description, so the page shows the predicted step time.
"$COORD" --listen 127.0.0.1:0 --port-file "$T/port" --http 127.0.0.1:0 \
  --http-port-file "$T/http-port" --db "$T/grove.db" --heartbeat-timeout 5 \
  --data-root "$DATA" --run-root "$T" \
  --cluster "$(dirname "$0")/../../configs/clusters/cpu-this-machine.json" \
  --registration-timeout 60 > "$T/coord.log" 2>&1 &
CPID=$!
for _ in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
[ -s "$T/port" ] || fail "coordinator did not start"
export GROVE_COORDINATOR=127.0.0.1:$(cat "$T/port")
URL=http://127.0.0.1:$(cat "$T/http-port")

job_field() {  # job_field JOB PYTHON_EXPR_ON_d
  "$GROVE" status "$1" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$2"
}
wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -lt $end ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}
at_step() { [ "$(job_field "$1" 'int(d.get("last_step", 0))')" -ge "$2" ]; }
is_state() { [ "$(job_field "$1" 'd.get("state", "")')" = "$2" ]; }
wait_pid() {  # wait_pid PID SECONDS
  local end=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    [ $SECONDS -lt $end ] || fail "pid $1 still running after $2 s"
    sleep 0.2
  done
  wait "$1" || true
}

# A real job: a tiny MoE model (block 2 of 2 has 4 experts, top-2, LSH-compressed all-to-all
# after a 2-step warm-up) with expert parallelism over the 2 ranks; long enough to run while it is
# watched, cancelled at the end. Evaluations every 5 steps give validation points.
cat > "$T/job.json" <<JSON
{"model": {"vocab_size": 8192, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32,
           "moe": {"num_experts": 4, "top_k": 2, "every": 2, "lsh": {"enabled": true, "warmup_steps": 2}}},
 "train": {"batch_size": 2, "seq_len": 32, "steps": 100000, "warmup_steps": 2, "eval_every": 5,
           "eval_batches": 1, "checkpoint_every": 0, "threads": 1},
 "data": {"dir": "$DATA"}, "out_dir": "$T/out"}
JSON
sed 's/"steps": 100000/"steps": 60/' "$T/job.json" > "$T/moe.json"
JOB=$("$GROVE" submit -c "$T/job.json" --world 2 --ep 2 --name dashboard-live -q)
MOE_JOB=$("$GROVE" submit -c "$T/moe.json" --world 1 --name synthetic-moe -q)
# Each job's workers get its attempt's credential in the environment.
GROVE_WORKER_TOKEN=$("$GROVE" worker-token "$JOB") mpirun --allow-run-as-root --oversubscribe \
  --mca btl self,vader -np 2 -x GROVE_WORKER_TOKEN \
  "$WORKER" train --coordinator "$GROVE_COORDINATOR" --job "$JOB" -q > "$T/mpirun.log" 2>&1 &
MPID=$!
GROVE_WORKER_TOKEN=$("$GROVE" worker-token "$MOE_JOB") \
  "$FEEDER" --coordinator "$GROVE_COORDINATOR" --job "$MOE_JOB" --steps 60 --interval-ms 20 \
  > "$T/feeder.log" 2>&1 &
FPID=$!
wait_until 60 "step 3 of $JOB" at_step "$JOB" 3
wait_pid "$FPID" 30
FPID=""
is_state "$MOE_JOB" SUCCEEDED || fail "the synthetic job is $(job_field "$MOE_JOB" 'd["state"]')"

case "$SCENARIO" in
  browser)
    NODE_DIR=$HERE/web
    [ -d "$NODE_DIR/node_modules/playwright-core" ] ||
      fail "playwright-core is not installed in $NODE_DIR (run launch/setup.sh)"
    [ -x "${GROVE_CHROMIUM:-/usr/bin/chromium}" ] || fail "no chromium (run launch/setup.sh)"
    (cd "$NODE_DIR" && timeout 150 node dashboard_test.mjs "$URL" "$(cat "$T/token")" "$JOB" \
      "$MOE_JOB" "$OUT") || fail "browser checks"
    ls -l "$OUT/dashboard.png" "$OUT/dashboard-moe.png"
    ;;
  metrics)
    wait_until 30 "step 8 of $JOB" at_step "$JOB" 8
    /usr/bin/python3 "$HERE/metrics_check.py" running "$URL" "$GROVE" "$JOB" ||
      fail "/metrics while running"
    "$GROVE" cancel "$JOB" --reason "dashboard test done" --wait --timeout 30 > /dev/null
    wait_pid "$MPID" 30
    MPID=""
    /usr/bin/python3 "$HERE/metrics_check.py" final "$URL" "$GROVE" "$JOB" "$MOE_JOB" ||
      fail "/metrics after the jobs ended"
    /usr/bin/python3 "$HERE/metrics_check.py" a2a "$URL" "$GROVE" "$JOB" "$T/out/metrics.jsonl" ||
      fail "the job's all-to-all bytes"
    ;;
  *)
    fail "unknown scenario"
    ;;
esac
if [ -n "$MPID" ]; then
  "$GROVE" cancel "$JOB" --reason "dashboard test done" --wait --timeout 30 > /dev/null
  wait_pid "$MPID" 30
  MPID=""
fi
# `grove watch` still follows jobs: replay the finished synthetic one.
"$GROVE" watch "$MOE_JOB" > "$T/watch.log" 2>&1 || fail "grove watch: $(tail -3 "$T/watch.log")"
grep -q "SUCCEEDED" "$T/watch.log" || fail "grove watch did not show SUCCEEDED: $(tail -3 "$T/watch.log")"
grep -q "MFU 30.*a2a" "$T/watch.log" || fail "grove watch shows no MFU / all-to-all: $(tail -3 "$T/watch.log")"
echo "PASS (dashboard $SCENARIO)"
