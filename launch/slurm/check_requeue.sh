#!/usr/bin/env bash
# Runs launch/slurm/grove.sbatch under a real one-node Slurm (Debian's slurmctld + slurmd, munge)
# on this machine and checks preemption end to end:
#   sbatch (2 ranks) -> the job trains -> scancel -> the workers checkpoint at the step they
#   reached, the Grove job is PREEMPTED -> scontrol requeue -> the script runs again, finds the same
#   Grove job by its request id, resumes it -> SUCCEEDED, every step's loss equal to an
#   uninterrupted run.
# Needs root and `apt-get install slurmctld slurmd slurm-client munge`; a private slurm.conf, state
# and spool under a temporary folder; the coordinator on 127.0.0.1. Not part of ctest (it starts
# system daemons); run it by hand:
#   bash launch/slurm/check_requeue.sh [BUILD_DIR] [DATA_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
DATA=$(cd "${2:-$ROOT/runs/data-brown-8192}" && pwd)
for b in slurmctld slurmd sbatch scancel scontrol munged; do
  command -v "$b" > /dev/null || { echo "check_requeue: $b is missing (apt-get install slurmctld slurmd slurm-client munge)"; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "check_requeue: run as root (it starts slurmctld, slurmd and munged)"; exit 2; }
T=$(mktemp -d /tmp/grove-slurm-XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
  [ -n "${SJOB:-}" ] && scancel "$SJOB" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$T"/grove-*.out "$T/slurmctld.log" "$T/slurmd.log" "$T/coord.log"; do
    [ -f "$f" ] && { echo "--- $f"; tail -n 25 "$f"; }
  done
  exit 1
}

# munge (Slurm's authentication), with its own key and socket.
mkdir -p "$T/munge"
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$T/munge/munge.key"
munged --force --key-file "$T/munge/munge.key" --socket "$T/munge/socket" \
  --pid-file "$T/munge/pid" --log-file "$T/munge/log" --seed-file "$T/munge/seed"
PIDS+=("$(cat "$T/munge/pid")")

HOST=$(hostname -s)
NCPU=$(nproc)
mkdir -p "$T/state" "$T/spool"
cat > "$T/slurm.conf" <<CONF
ClusterName=grovecheck
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket=$T/munge/socket
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=30
MpiDefault=none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU State=UNKNOWN
PartitionName=check Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
printf "CgroupPlugin=cgroup/v1\nCgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n" > "$T/cgroup.conf"
export SLURM_CONF=$T/slurm.conf
slurmctld -D -i -L "$T/slurmctld.log" > /dev/null 2>&1 &
PIDS+=($!)
slurmd -D -L "$T/slurmd.log" > /dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 0.5; done
sinfo -h -o %T | grep -q idle || fail "the Slurm node did not come up"

# The coordinator, on loopback.
echo "token-$RANDOM$RANDOM" > "$T/token"
chmod 600 "$T/token"
"$BUILD/coordinator/grove-coordinator" --listen 127.0.0.1:0 --port-file "$T/port" \
  --db "$T/grove.db" --token-file "$T/token" --data-root "$DATA" --run-root "$T" \
  > "$T/coord.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
[ -s "$T/port" ] || fail "coordinator did not start"
export GROVE_COORDINATOR=127.0.0.1:$(cat "$T/port") GROVE_TOKEN_FILE=$T/token
GROVE=$BUILD/coordinator/grove
field() {  # field JOB EXPR
  "$GROVE" status "$1" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$2" 2>/dev/null
}

STEPS=120
config() {
  python3 - "$1" "$DATA" "$2" "$STEPS" <<'PY'
import json, sys
cfg, data, out, steps = sys.argv[1:]
json.dump({"model": {"vocab_size": 8192, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
           "train": {"batch_size": 16, "seq_len": 32, "steps": int(steps), "warmup_steps": 2,
                     "eval_every": 0, "eval_batches": 1, "checkpoint_every": 1000, "threads": 1},
           "data": {"dir": data}, "out_dir": out}, open(cfg, "w"))
PY
}
config "$T/ref.json" "$T/ref"
mpirun --allow-run-as-root --oversubscribe -np 2 "$BUILD/worker/grove-worker" train \
  --config "$T/ref.json" -q > "$T/ref.log" 2>&1 || fail "reference run"
config "$T/job.json" "$T/out"

cd "$T"
SJOB=$(sbatch --parsable --ntasks=2 --nodes=1 --output="$T/grove-%j.out" \
  --export=ALL,GROVE_ROOT="$ROOT",GROVE_BUILD_DIR="$BUILD",GROVE_COORDINATOR="$GROVE_COORDINATOR",GROVE_TOKEN_FILE="$T/token",OMPI_MCA_rmaps_base_oversubscribe=1 \
  "$ROOT/launch/slurm/grove.sbatch" -- --config "$T/job.json")
echo "sbatch: Slurm job $SJOB"
JOB=""
for _ in $(seq 120); do
  JOB=$(sed -n 's/^==> submitted \(job-[0-9]*\).*/\1/p' "$T/grove-$SJOB.out" 2>/dev/null | head -1 || true)
  [ -n "$JOB" ] && [ "$(field "$JOB" 'int(d.get("last_step", 0))' || echo 0)" -ge 6 ] && break
  sleep 0.5
done
[ -n "$JOB" ] || fail "no Grove job appeared"
echo "Grove job $JOB is training; scancel $SJOB"
scancel "$SJOB"
for _ in $(seq 90); do [ "$(field "$JOB" 'd["state"]')" = PREEMPTED ] && break; sleep 0.5; done
[ "$(field "$JOB" 'd["state"]')" = PREEMPTED ] || fail "after scancel: $(field "$JOB" 'd["state"]')"
echo "after scancel: $(field "$JOB" 'd["reason"]')"
N=$(grep -c '"loss"' "$T/out/metrics.jsonl")
[ "$(cat "$T/out/checkpoints/latest")" = "$(printf 'step_%08d' "$N")" ] || fail "no checkpoint at step $N"
for _ in $(seq 60); do squeue -h -j "$SJOB" 2>/dev/null | grep -q . || break; sleep 0.5; done
scontrol requeue "$SJOB" || fail "scontrol requeue $SJOB"
echo "requeued $SJOB"
for _ in $(seq 240); do [ "$(field "$JOB" 'd["state"]')" = SUCCEEDED ] && break; sleep 0.5; done
[ "$(field "$JOB" 'd["state"]')" = SUCCEEDED ] || fail "after requeue: $(field "$JOB" 'd["state"]')"
python3 - "$T/ref/metrics.jsonl" "$T/out/metrics.jsonl" <<'PY' || fail "losses differ from the uninterrupted run"
import json, sys
def losses(p):
    out = {}
    for d in map(json.loads, open(p)):
        if "loss" in d: out.setdefault(d["step"], []).append(d["loss"])
    return out
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert a == b, "differ"
print(f"{len(a)} steps, losses bit-identical to the uninterrupted run")
PY
echo "PASS: scancel -> checkpoint at step $N, PREEMPTED -> requeue -> SUCCEEDED ($JOB, attempt $(field "$JOB" 'd.get("attempt", 0)'))"
