#!/usr/bin/env bash
# Train the embedded family on a lent GPU in one lease (issue 16): the target continued in bf16 on the
# corpus with the 256 -> 2,048 curriculum, then the drafter, sorted drafter and Kangaroo adapter distilled
# and refined on-policy from it, each phase's steps fitted to its seconds so the lr schedules end on time.
#
# Here, first: pack the corpus that travels (the 64 MiB limit: the working tree takes ~45 MB):
#   mkdir -p .corpus && echo /.corpus/ >> .git/info/exclude
#   for f in train heldout heldout_stdlib; do xz -T2 -6 -c CORPUS/$f.npy > .corpus/$f.npy.xz; done
#   cp CORPUS/manifest.json .corpus/
# Then the device tool: run(command="LEASE_SECONDS=555 bash scripts/gpu_family.sh", carry=[".corpus"], timeout_s=590).
# What comes back under $OUT: the logs, and family.tar in 15 MB parts (cat family.tar.part-* | tar x):
# a drop-in for assets/models (SPECVIZ_EMBEDDED_DIR=DIR), or target.tar (fp32) if the students failed.
# TARGET_SECONDS=0: students only, from the shipped target (assets/models/target travels with the tree),
# e.g. TARGET_SECONDS=0 DRAFTER_LAYERS=2 DISTILL_SECONDS=150 REFINE_SECONDS=330 for a 2-layer drafter.
# UL_SECONDS=150: an unlikelihood fine-tune of the target (specviz.workshop.unlikelihood, 256 greedy continuations
# per step) before the students, against its greedy loops (issue 16's repeated 4-gram share). UL_FREEZE=2 (the
# default) keeps the embedding/head, final norm and layers 0-1 as they are: the Kangaroo exit's state and the
# grafted drafter's body stay valid, and only the students' upper parts must follow (0 = train everything).
set -uo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then  # the header above, without its comment marks
  sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
OUT=${OUT:-gpu-family}
CORPUS_PACK=${CORPUS_PACK:-.corpus}
TARGET_SECONDS=${TARGET_SECONDS:-285}
DISTILL_SECONDS=${DISTILL_SECONDS:-70}
REFINE_SECONDS=${REFINE_SECONDS:-130}
PY=${PY:-python3}
WORK=${WORK:-$($PY -m specviz.paths gpu)}  # run folders and the unpacked corpus
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu AMP= with small *_TOKENS and seconds: a dry run of this script here
AMP=${AMP-bf16}
TARGET_TOKENS=${TARGET_TOKENS:-131072}
STUDENT_TOKENS=${STUDENT_TOKENS:-65536}
THREADS=${THREADS:-8}
DRAFTER_LAYERS=${DRAFTER_LAYERS:-1}  # 2: a drafter that can copy (induction needs two layers), from the target's first two
UL_SECONDS=${UL_SECONDS:-0}
FINISH_MINUTES=${FINISH_MINUTES:-1.2}  # the students' held-out measure, calibration and save (0.3-0.7 min on an H100)
UL_BATCH=${UL_BATCH:-256}
UL_MLE_BATCH=${UL_MLE_BATCH:-64}
UL_FREEZE=${UL_FREEZE:-2}
UL_LR=${UL_LR:-1e-4}  # the CPU runs' lr; a 256-row batch is far less noisy than their 8 rows
UL_ANCHOR=${UL_ANCHOR:-0}  # > 0: KL to the starting target on the greedy text's unpenalized tokens (--anchor-weight)
UL_OBJECTIVE=${UL_OBJECTIVE:-unlikelihood}  # or ditto: pseudo-repetition penalization, no greedy text per step (--objective)
POOL_STEPS=${POOL_STEPS:-8}  # on-policy rows per generate call, in steps' worth (onpolicy.OnPolicyPool)
POOL_REUSE=${POOL_REUSE:-2}
DISTILL_STEPS=100000; [ "$DISTILL_SECONDS" = 0 ] && DISTILL_STEPS=0  # 0 s: refine the shipped students only
STUDENT_MINUTES=$(awk "BEGIN { print ($DISTILL_SECONDS + $REFINE_SECONDS) / 60 + 6 }")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONFAULTHANDLER=1
mkdir -p "$OUT" "$WORK/corpus"
start=$(date +%s)
stamp() { echo "== $(date +%T) +$(( $(date +%s) - start )) s: $*" | tee -a "$OUT/summary.txt"; }

stamp "environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$OUT/summary.txt"

stamp "unpack corpus"
for f in "$CORPUS_PACK"/*.npy.xz; do xz -dc -T0 "$f" > "$WORK/corpus/$(basename "$f" .xz)" || exit 1; done
cp "$CORPUS_PACK/manifest.json" "$WORK/corpus/"

TARGET_DIR=assets/models/target
if [ "$TARGET_SECONDS" -gt 0 ]; then
stamp "target: ${TARGET_SECONDS} s"
$PY -m specviz.workshop.train --continue-target --device "$DEVICE" --amp "$AMP" --corpus "$WORK/corpus" --run-dir "$WORK/train" \
  --init assets/models/target --tokens-per-step "$TARGET_TOKENS" --peak-lr 1.5e-3 --warmup-steps 30 --total-tokens 2000000000 --fit-to-budget \
  --budget-minutes "$(awk "BEGIN { print $TARGET_SECONDS / 60 }")" --reserve-seconds 12 --eval-minutes 1 --ckpt-minutes 1000 \
  --threads "$THREADS" > "$OUT/target.log" 2>&1
rc=$?
stamp "target done (rc $rc)"
grep -E "eval step|fit to budget|done:" "$OUT/target.log" | tail -n 8 | tee -a "$OUT/summary.txt"
[ -f "$WORK/train/hf/target/config.json" ] || { tail -n 40 "$OUT/target.log"; exit 1; }
cp "$WORK/train/metrics.jsonl" "$OUT/target-metrics.jsonl"
# a safety net while the students train: the target alone (fp32), dropped again once the family is packed
(cd "$WORK/train/hf" && tar cf "$WORK/target.tar" target) && split -b 13M -d "$WORK/target.tar" "$OUT/target.tar.part-"
TARGET_DIR="$WORK/train/hf/target"
else
stamp "target: the shipped one ($TARGET_DIR), students only"
fi

if [ "$UL_SECONDS" -gt 0 ]; then
  stamp "unlikelihood: ${UL_SECONDS} s from $TARGET_DIR"
  $PY -m specviz.workshop.unlikelihood --device "$DEVICE" --amp "$AMP" --target "$TARGET_DIR" --corpus "$WORK/corpus" --out "$WORK/ul" \
    --steps 100000 --seconds "$UL_SECONDS" --ul-batch "$UL_BATCH" --mle-batch "$UL_MLE_BATCH" --eval-every 25 \
    --freeze-layers "$UL_FREEZE" --lr "$UL_LR" --anchor-weight "$UL_ANCHOR" --objective "$UL_OBJECTIVE" \
    --threads "$THREADS" > "$OUT/unlikelihood.log" 2>&1
  rc=$?
  stamp "unlikelihood done (rc $rc)"
  grep -E "eval step|seconds|done" "$OUT/unlikelihood.log" | tail -n 6 | tee -a "$OUT/summary.txt"
  [ -f "$WORK/ul/target/config.json" ] && TARGET_DIR="$WORK/ul/target"
fi

# LEASE_SECONDS (whole seconds): the call's own limit. The students' budget then ends 30 s before it, and
# --finish-at-deadline ends their training FINISH_MINUTES before that budget, so they finish, save and are
# packed even when the phases ran slower than planned (a killed call brings back no weights). Their clock
# starts after Python and the teacher have loaded (a few seconds, inside the 30 s).
if [ "${LEASE_SECONDS:-0}" -gt 0 ]; then
  STUDENT_MINUTES=$(awk "BEGIN { m = ($LEASE_SECONDS - $(( $(date +%s) - start )) - 30) / 60; print (m < $STUDENT_MINUTES ? m : $STUDENT_MINUTES) }")
fi
if awk "BEGIN { exit !($STUDENT_MINUTES < $FINISH_MINUTES + 0.5) }"; then
  stamp "students skipped: ${STUDENT_MINUTES} min left, under ${FINISH_MINUTES} min of finishing + 0.5 of training"
else
  stamp "students: distill ${DISTILL_SECONDS} s, refine ${REFINE_SECONDS} s, at most ${STUDENT_MINUTES} min"
  $PY -m specviz.workshop.students --device "$DEVICE" --amp "$AMP" --target "$TARGET_DIR" --corpus "$WORK/corpus" \
    --out "$WORK/family" --warm-from assets/models --tokens-per-step "$STUDENT_TOKENS" --distill-steps "$DISTILL_STEPS" --refine-steps 100000 \
    --distill-seconds "$DISTILL_SECONDS" --refine-seconds "$REFINE_SECONDS" --warmup-steps 10 --drafter-layers "$DRAFTER_LAYERS" --pool-steps "$POOL_STEPS" --pool-reuse "$POOL_REUSE" \
    --budget-minutes "$STUDENT_MINUTES" --finish-at-deadline --finish-minutes "$FINISH_MINUTES" --threads "$THREADS" \
    > "$OUT/students.log" 2>&1
  rc=$?
  stamp "students done (rc $rc)"
  grep -E "held-out|fit to|phase .* finished|deadline|report" "$OUT/students.log" | tail -n 12 | tee -a "$OUT/summary.txt"
fi

if [ -f "$WORK/family/students-report.json" ]; then
  (cd "$WORK/family" && tar cf "$WORK/family.tar" --exclude ckpt.pt --exclude students.log .) \
    && rm -f "$OUT"/target.tar.part-* && split -b 15M -d "$WORK/family.tar" "$OUT/family.tar.part-"
else
  [ -f "$OUT/students.log" ] && tail -n 40 "$OUT/students.log"
  if [ "$TARGET_DIR" != assets/models/target ] && ! ls "$OUT"/target.tar.part-* >/dev/null 2>&1; then
    # no students: bring back the trained (or fine-tuned) target alone
    (cd "$(dirname "$TARGET_DIR")" && tar cf "$WORK/target.tar" "$(basename "$TARGET_DIR")") \
      && split -b 13M -d "$WORK/target.tar" "$OUT/target.tar.part-"
  fi
fi
stamp "packed"
ls -la "$OUT"
