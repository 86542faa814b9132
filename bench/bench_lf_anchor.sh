#!/usr/bin/env bash
# Training speed against LLaMA-Factory 0.9.5 on the same work, side by side in one run of the shared anchor
# (../shared/bench/lf-anchor/run_anchor.sh, kept there): 512 DynaHate rows, SmolLM2-135M 4-bit nf4 QLoRA r 8,
# batch 8, 64 steps, bf16, threads pinned. Two variants: gradient checkpointing on (LLaMA-Factory's default)
# and off (its best setting for a 135M model); in each, LLaMA-Factory then hatetune's trainer
# (bench/lf_anchor_trainer.py: shared-prefix packing, length grouping). Ratios are within one round.
# Run it with nothing else on the machine. Results: bench/results_lf_anchor/<variant>.md (+ raw JSON).
#
#   bash bench/bench_lf_anchor.sh                  # both variants, ROUNDS=1
#   VARIANTS=nogc ROUNDS=2 bash bench/bench_lf_anchor.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ANCHOR="${ANCHOR:-$ROOT/../shared/bench/lf-anchor/run_anchor.sh}"
if [[ ! -f "$ANCHOR" ]]; then
  echo "skipped: the LLaMA-Factory anchor is not here ($ANCHOR)"
  exit 0
fi
export WORK="${WORK:-$HOME/.cache/lf-anchor}"
[[ -x "$WORK/venv/bin/llamafactory-cli" ]] || bash "$ANCHOR" setup
OUT_ROOT="$ROOT/bench/results_lf_anchor"
mkdir -p "$OUT_ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
for variant in ${VARIANTS:-gc nogc}; do
  if [[ "$variant" == gc ]]; then lf_args=""; ours="--gc"; else lf_args="disable_gradient_checkpointing=true"; ours=""; fi
  OUT="$WORK/anchor-hatetune-$variant-$(date +%Y%m%d-%H%M%S)" \
  ROUNDS="${ROUNDS:-1}" LF_ARGS="$lf_args ${LF_ARGS:-}" OTHER_NAME=hatetune \
  OTHER_CMD="cd '$ROOT' && '$PY' bench/lf_anchor_trainer.py --model \"\$MODEL_DIR\" --data \"\$DATA_DIR/dynahate512.json\" --out \"\$OTHER_OUT\" $ours ${OURS_ARGS:-}" \
  OTHER_METRICS='$OTHER_OUT/metrics.json' \
    bash "$ANCHOR" | tee "$OUT_ROOT/$variant.log"
  last=$(ls -td "$WORK"/anchor-hatetune-"$variant"-* | head -1)
  cp "$last/table.md" "$OUT_ROOT/$variant.md"
  cp "$last/env.txt" "$OUT_ROOT/$variant.env.txt"
  for rec in "$last"/round*/*.json; do cp "$rec" "$OUT_ROOT/$variant.$(basename "$(dirname "$rec")").$(basename "$rec")"; done
done
