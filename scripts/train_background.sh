#!/usr/bin/env bash
# Start, or resume, the continued training of the embedded target (issue 16) in the background.
#
#   scripts/train_background.sh [extra args for python -m specviz.workshop.train]
#       e.g. scripts/train_background.sh --until 08:15 --budget-minutes 110
#
# Everything lives outside the work tree, in $SPECVIZ_TRAIN_DIR (default ~/.cache/specviz/train, from specviz.paths):
#   train.log      the log (appended; each run starts with its config line)
#   metrics.jsonl  one JSON record per logged step and per held-out evaluation
#   ckpt.pt        model + optimizer + data position + RNG + step (resumed by the same command)
#   hf/target/     the latest HF fp32 copy of the target (never written into assets/models)
#   corpus/        token streams + manifest.json (built on the first run)
#   train.pid      the PID of the running trainer
# With --threads 2 nothing else may run: a second process on the two cores (even a 1-thread test run) cut it
# from ~1,150 to 130-500 tokens/s (2026-11-26), far more than the CPU share it took.
# Pause (benchmarks): kill -STOP "$(cat ~/.cache/specviz/train/train.pid)"; resume: kill -CONT ...
# Stop early and save: kill -TERM "$(cat ~/.cache/specviz/train/train.pid)" (it saves a checkpoint, then exits).
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then  # the header above, without its comment marks
  sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
RUN_DIR="${SPECVIZ_TRAIN_DIR:-$("$PYTHON" -m specviz.paths train)}"
mkdir -p "$RUN_DIR"
if [[ -f "$RUN_DIR/train.pid" ]] && kill -0 "$(cat "$RUN_DIR/train.pid")" 2>/dev/null; then
    echo "already running: PID $(cat "$RUN_DIR/train.pid") (log $RUN_DIR/train.log)" >&2
    exit 1
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
setsid nohup nice -n 5 "$PYTHON" -m specviz.workshop.train --continue-target --threads 1 --run-dir "$RUN_DIR" "$@" \
    >>"$RUN_DIR/train.log" 2>&1 </dev/null &
echo $! >"$RUN_DIR/train.pid"
echo "started PID $(cat "$RUN_DIR/train.pid"); log $RUN_DIR/train.log"
