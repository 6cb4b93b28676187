#!/usr/bin/env bash
# Two hosts in one machine: network namespaces joined by a bridge (netns_setup.sh), the
# coordinator in its own namespace, grove-launch and rank 0 on host A, rank 1 started on host B
# by mpirun through an `ip netns exec` launch agent (netns_agent.sh), TCP only. Nothing in the
# root namespace addresses them. Scenarios:
#   train      the job SUCCEEDS and every step's loss equals the single-host run within 1e-5
#   partition  host B is cut off mid-run: the job is FAILED and no process of it is left (workers,
#              mpirun, its remote daemon, the launcher) within 60 s
# Exit 77 (skipped) where network namespaces cannot be created (not root, no CAP_NET_ADMIN).
# usage: two_host.sh SCENARIO GROVE_COORDINATOR GROVE GROVE_WORKER DATA_DIR
set -euo pipefail
SCENARIO=$1 COORD=$2 GROVE=$3 WORKER=$4 DATA=$5
HERE=$(cd "$(dirname "$0")" && pwd)
LAUNCH=$HERE/../../launch/grove-launch
source "$HERE/netns_setup.sh"
if [ ! -f "$DATA/train.bin" ]; then
  echo "SKIP: no prepared dataset in $DATA (run launch/setup.sh)"
  exit 77
fi
P=g2h$$
if ! netns_up "$P" 2>/dev/null; then
  netns_down "$P"
  echo "SKIP: cannot create network namespaces here (needs root / CAP_NET_ADMIN and 'ip netns')"
  exit 77
fi
T=$(mktemp -d /tmp/grove-2host-XXXXXX)
CPID="" LPID=""
cleanup() {
  # Every process still in the test's namespaces (only ours live there), then the namespaces.
  for h in a b c; do
    for pid in $(ip netns pids "$P-$h" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  wait 2>/dev/null || true
  netns_down "$P"
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL ($SCENARIO): $*"
  for f in coord.log launch.log ref.log; do
    [ -f "$T/$f" ] && { echo "--- $f"; tail -n 30 "$T/$f"; }
  done
  exit 1
}
export OMP_NUM_THREADS=1
export GROVE_NETNS_MAP="10.218.0.2=$P-a=hostA 10.218.0.3=$P-b=hostB"
echo "test-token-$RANDOM$RANDOM" > "$T/token"
export GROVE_TOKEN_FILE=$T/token

in_ns() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }
ip netns exec "$P-c" "$COORD" --listen 10.218.0.1:0 --port-file "$T/port" --db "$T/grove.db" \
  --heartbeat-timeout 5 --registration-timeout 60 --data-root "$DATA" --run-root "$T" \
  > "$T/coord.log" 2>&1 &
CPID=$!
for _ in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
[ -s "$T/port" ] || fail "coordinator did not start"
export GROVE_COORDINATOR=10.218.0.1:$(cat "$T/port")
grove() { in_ns c "$GROVE" "$@"; }
job_field() {
  grove status "$1" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$2" 2>/dev/null
}
state() { job_field "$1" 'd.get("state", "")'; }

config() {  # config STEPS OUT_DIR
  python3 - "$T/job.json" "$DATA" "$2" "$1" <<'PY'
import json, sys
cfg, data, out, steps = sys.argv[1:]
json.dump({"model": {"vocab_size": 8192, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
           "train": {"batch_size": 4, "seq_len": 32, "steps": int(steps), "warmup_steps": 2,
                     "eval_every": 0, "eval_batches": 1, "checkpoint_every": 100000, "threads": 1},
           "data": {"dir": data}, "out_dir": out}, open(cfg, "w"))
PY
}
# grove-launch on host A; mpirun starts rank 1 on host B through the agent; TCP only.
launch() {
  in_ns a unshare --uts sh -c 'hostname hostA; exec "$@"' sh \
    env GROVE_BUILD_DIR="$(dirname "$(dirname "$WORKER")")" "$LAUNCH" -n 2 --job "$1" \
    --mpirun-arg --host --mpirun-arg 10.218.0.2:1,10.218.0.3:1 \
    --mpirun-arg --mca --mpirun-arg plm_rsh_agent --mpirun-arg "$HERE/netns_agent.sh" \
    --mpirun-arg --mca --mpirun-arg btl --mpirun-arg tcp,self \
    --mpirun-arg --mca --mpirun-arg btl_tcp_if_include --mpirun-arg "$NETNS_SUBNET" \
    --mpirun-arg --mca --mpirun-arg oob_tcp_if_include --mpirun-arg "$NETNS_SUBNET" \
    --mpirun-arg -x --mpirun-arg GROVE_NETNS_MAP --mpirun-arg -x --mpirun-arg OMP_NUM_THREADS \
    > "$T/launch.log" 2>&1 &
  LPID=$!
}
left() { echo $(ip netns pids "$P-a") $(ip netns pids "$P-b"); }

case "$SCENARIO" in
  train)
    STEPS=20
    config $STEPS "$T/ref"
    # The single-host run: the same layout (dp=2) on this machine's loopback.
    MPIRUN=(mpirun --oversubscribe -np 2 --mca btl self,tcp)
    [ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root)
    "${MPIRUN[@]}" "$WORKER" train --config "$T/job.json" -q > "$T/ref.log" 2>&1 || fail "single-host run"
    config $STEPS "$T/two"
    JOB=$(grove submit -c "$T/job.json" --world 2 -q)
    launch "$JOB"
    LRC=0
    wait "$LPID" || LRC=$?
    LPID=""
    [ "$LRC" = 0 ] || fail "grove-launch exited with $LRC"
    [ "$(state "$JOB")" = SUCCEEDED ] || fail "state $(state "$JOB")"
    HOSTS=$(job_field "$JOB" '",".join(w["host"] for w in d["workers"])')
    [ "$HOSTS" = "hostA,hostB" ] || fail "ranks ran on $HOSTS, want hostA,hostB"
    python3 - "$T/ref/metrics.jsonl" "$T/two/metrics.jsonl" "$STEPS" <<'PY' || fail "losses differ"
import json, sys
def losses(p):
    return {d["step"]: d["loss"] for d in map(json.loads, open(p)) if "loss" in d}
a, b, n = losses(sys.argv[1]), losses(sys.argv[2]), int(sys.argv[3])
assert sorted(a) == sorted(b) == list(range(1, n + 1)), (sorted(a), sorted(b))
worst = max(abs(a[s] - b[s]) for s in a)
print(f"two hosts vs one: {n} steps, max |loss difference| {worst:.3g}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
    ;;
  partition)
    config 1000000 "$T/two"
    JOB=$(grove submit -c "$T/job.json" --world 2 -q)
    launch "$JOB"
    for _ in $(seq 300); do [ "$(job_field "$JOB" 'int(d.get("last_step", 0))' || echo 0)" -ge 5 ] && break; sleep 0.2; done
    [ "$(state "$JOB")" = RUNNING ] || fail "job not running: $(state "$JOB")"
    netns_cut "$P"
    CUT=$SECONDS
    until [ "$(state "$JOB")" = FAILED ] && [ -z "$(left)" ]; do
      [ $((SECONDS - CUT)) -lt 60 ] || { ps -o pid,args -p "$(left | tr ' ' ',')" || true; fail "60 s after the partition: $(state "$JOB"), processes left: $(left)"; }
      sleep 0.5
    done
    echo "partition: FAILED and no process left $((SECONDS - CUT)) s after host B was cut off"
    echo "reason: $(job_field "$JOB" 'd["reason"]')"
    grep -h "cut off\|coordinator's stop\|still running" "$T/launch.log" | head -5 || true
    ;;
  *) fail "unknown scenario" ;;
esac
echo "PASS ($SCENARIO)"
