#!/usr/bin/env bash
# The main job: set up (packages, corpus, build, dataset), start a coordinator on 127.0.0.1, submit
# the demo job and train it with 4 MPI ranks (tensor + sequence parallel 2 x data parallel 2) on
# the Brown corpus, printing one progress line per step. Results: runs/demo/metrics.jsonl and
# runs/demo/checkpoints/; the job's history stays in the coordinator (runs/coordinator/).
# Run it again for a fresh demo run (the previous one is moved to runs/demo.prev); extra submit
# options pass through, e.g. launch/quickstart.sh --set train.steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
BUILD_DIR=${GROVE_BUILD_DIR:-build}
if [ -d runs/demo ]; then
  rm -rf runs/demo.prev
  mv runs/demo runs/demo.prev
fi
printf '\n==> coordinator + 4 MPI ranks (launch/grove-launch) training configs/demo.json\n'
printf '    watch live from another shell: %s/coordinator/grove watch <job id>\n' "$BUILD_DIR"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} GROVE_BUILD_DIR="$BUILD_DIR" launch/grove-launch -n 4 \
  --local-coordinator --coordinator "127.0.0.1:${GROVE_PORT:-7070}" --mpirun-arg --oversubscribe \
  -- --config configs/demo.json --name demo "$@"
printf '\nDone. Loss curve: runs/demo/metrics.jsonl; checkpoints: runs/demo/checkpoints/\n'
printf 'Job history: %s/coordinator/grove jobs (with the coordinator running: launch/grove-launch --local-coordinator ...)\n' "$BUILD_DIR"
