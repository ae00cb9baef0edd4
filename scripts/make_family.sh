#!/usr/bin/env bash
# The next embedded family from the continued target, end to end (issue 16). Every step is resumable and
# skipped once its output exists, so the same command carries it across sessions:
#
#   scripts/make_family.sh [--until HH:MM] [--threads N]
#
#   1. snapshot   $RUN_DIR/hf/target -> $FAMILY_TARGET, once the training has reached its planned tokens
#                 (skipped when $FAMILY_TARGET exists: SPECVIZ_FAMILY_TARGET may name a fine-tuned target)
#   2. students   python -m specviz.workshop.students (drafter, sorted drafter, adapter, VocabTrim ranking) -> $FAMILY;
#                 exit 75 means it stopped at --until: run this script again to resume
#   3. quality    python -m specviz.workshop.quality on the family -> $FAMILY/quality.json (255 windows of 256 tokens: they
#                 tile the whole old stdlib split, 65 k tokens; the new split evenly sampled)
#   4. learn      the Learn tab's bench summary (README's command) -> $FAMILY/bench-summary.json
#   5. card       python -m specviz.workshop.card -> $FAMILY/README.md
#
# It never writes assets/models: review the card, check the size (under 45 MB), then copy the family in
# once (`rsync -a --delete --exclude ckpt.pt --exclude students.log "$FAMILY"/ assets/models/`) and re-run
# README's tables (`python scripts/remeasure_readme.py --out DIR`). Nothing else may run meanwhile: two
# processes on two cores slow a 2-thread job several-fold, and steps 3-4 are timings.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then  # the header above, without its comment marks
  sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
# defaults under ~/.cache/specviz (specviz.paths: $XDG_CACHE_HOME/specviz when that is set)
RUN_DIR="${SPECVIZ_TRAIN_DIR:-$(python -m specviz.paths train)}"
FAMILY="${SPECVIZ_FAMILY_DIR:-$(python -m specviz.paths family)}"
# the frozen teacher (students also stage an fp16 copy inside $FAMILY); SPECVIZ_FAMILY_TARGET names another one,
# e.g. an unlikelihood fine-tune of the snapshot (python -m specviz.workshop.unlikelihood ... --out DIR: DIR/target)
FAMILY_TARGET="${SPECVIZ_FAMILY_TARGET:-${FAMILY}-target}"
SPEC_BENCH="${SPEC_BENCH:-$(python -m specviz.paths)/spec_bench_question.jsonl}"  # Spec-Bench's question.jsonl
UNTIL="" THREADS=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --until) UNTIL="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="$THREADS"
if [[ -f "$RUN_DIR/train.pid" ]] && kill -0 "$(cat "$RUN_DIR/train.pid")" 2>/dev/null; then
    echo "the target is still training (PID $(cat "$RUN_DIR/train.pid")): wait for it, or stop it with kill -TERM" >&2
    exit 1
fi

if [[ ! -d "$FAMILY_TARGET" ]]; then
    tokens=$(python -c "import json;print(json.load(open('$RUN_DIR/hf/target/specviz.json'))['continued']['tokens'])")
    planned=$(grep -o '"total_tokens": [0-9]*' "$RUN_DIR/train.log" | tail -1 | grep -o '[0-9]*$')
    if (( tokens < planned )); then
        echo "the target has $tokens of its $planned planned tokens: resume scripts/train_background.sh first" >&2
        exit 1
    fi
    cp -r "$RUN_DIR/hf/target" "$FAMILY_TARGET"
    echo "1. snapshot: $FAMILY_TARGET ($tokens tokens)"
fi

if [[ ! -f "$FAMILY/students-report.json" ]]; then
    set +e
    python -m specviz.workshop.students --target "$FAMILY_TARGET" --corpus "$RUN_DIR/corpus" --out "$FAMILY" \
        --warm-from assets/models --threads "$THREADS" ${UNTIL:+--until "$UNTIL"}
    code=$?
    set -e
    if (( code == 75 )); then echo "2. students stopped early (checkpointed): run this script again"; exit 75; fi
    (( code == 0 )) || exit "$code"
fi
echo "2. students: $FAMILY/students-report.json"

export SPECVIZ_EMBEDDED_DIR="$FAMILY"
if [[ ! -f "$FAMILY/quality.json" ]]; then
    python -m specviz.workshop.quality --target embedded --corpus "$RUN_DIR/corpus" --windows 255 --spec-bench "$SPEC_BENCH" \
        --per-category 5 --threads "$THREADS" --json "$FAMILY/quality.json.tmp" --quiet
    mv "$FAMILY/quality.json.tmp" "$FAMILY/quality.json"
fi
echo "3. quality: $FAMILY/quality.json"

if [[ ! -f "$FAMILY/bench-summary.json" ]]; then
    learn=$(python scripts/remeasure_readme.py --list | grep -- '--json assets/models/bench-summary.json' | sed 's/^ *[0-9]*  //')
    args=${learn#python -m specviz.bench }
    eval "python -m specviz.bench ${args/assets\/models\/bench-summary.json/$FAMILY/bench-summary.json} --out $FAMILY/learn.csv"
    python -m specviz.paths --scrub "$FAMILY/bench-summary.json"  # the command it records names no machine's folder
fi
echo "4. learn: $FAMILY/bench-summary.json"

[[ -f "$FAMILY/first-training-stats.json" ]] || cp assets/models/training-stats.json "$FAMILY/first-training-stats.json"
python -m specviz.workshop.card --family "$FAMILY" --train-dir "$RUN_DIR" --quality "$FAMILY/quality.json" \
    --first "$FAMILY/first-training-stats.json"
du -sh --exclude ckpt.pt --exclude students.log "$FAMILY"
echo "5. card: $FAMILY/README.md; review it, then copy the family into assets/models (see the header)"
