#!/usr/bin/env bash
# The main job: set up (packages, corpus, build, dataset), then train the demo model on the
# Brown corpus, printing one progress line per step. Results: runs/demo/metrics.jsonl and
# runs/demo/checkpoints/. Run it again to start a fresh demo run (the previous one is moved to
# runs/demo.prev); pass extra overrides through, e.g. launch/quickstart.sh --set train.steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
BUILD_DIR=${GROVE_BUILD_DIR:-build}
if [ -d runs/demo ]; then
  rm -rf runs/demo.prev
  mv runs/demo runs/demo.prev
fi
printf '\n==> training the demo model (configs/demo.json); metrics in runs/demo/metrics.jsonl\n'
"$BUILD_DIR/worker/grove-worker" train --config configs/demo.json "$@"
printf '\nDone. Loss curve: runs/demo/metrics.jsonl; checkpoints: runs/demo/checkpoints/\n'
printf 'Continue training later with: %s/worker/grove-worker train --config configs/demo.json --resume\n' "$BUILD_DIR"
