#!/usr/bin/env bash
# The main job: set up (packages, corpus, build, dataset), start a coordinator on 127.0.0.1, submit
# the demo job and train it with 4 MPI ranks on the Brown corpus, printing one progress line per
# step. The layout (configs/demo.json) is tensor + sequence parallel 2 x context parallel 2 (tree
# attention); the expert grid folds over the same 4 ranks as expert parallel 2 x expert data
# parallel 2, with the LSH-compressed all-to-all after a 50-step warm-up; selective recompute.
# Results: runs/demo/metrics.jsonl and runs/demo/checkpoints/; the job's history stays in the
# coordinator (runs/coordinator/), and its dashboard shows the all-to-all bytes LSH saves.
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
