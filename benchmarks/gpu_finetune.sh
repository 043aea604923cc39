#!/usr/bin/env bash
# CUDA peak memory of one fine-tuning step of SANA 1.5 1.6B and 4.8B in each mode, beside the
# --dry-run estimate (issue 18). One GPU (H100 80 GB / H200), under 8 minutes: random bf16 weights
# from `sanatool init`, then benchmarks/finetune_memory.py runs each mode in its own process
# (torch.cuda.max_memory_allocated over one Trainer step; batch 1, 1024 px, CAME-8bit, bf16 autocast).
# A mode whose estimate does not fit the GPU's free memory is skipped and says so.
#
#   bash benchmarks/gpu_finetune.sh            # WORK=/tmp/gpu_finetune by default
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK=${WORK:-/tmp/gpu_finetune}
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for preset in sana1.5-1.6b sana1.5-4.8b; do
  if [ ! -d "$WORK/$preset" ]; then
    python -m sanatool init --preset "$preset" --dtype bf16 -o "$WORK/$preset" >/dev/null
  fi
  python benchmarks/finetune_memory.py --device cuda --preset "$preset" --model-dir "$WORK/$preset" \
    --modes full,full-nockpt,lora-bf16,lora-int8,lora-nf4 --out "$WORK/$preset.json" 2>"$WORK/$preset.log" \
    || { tail -20 "$WORK/$preset.log"; exit 1; }
  grep -E "skipped|failed" "$WORK/$preset.log" || true
  echo
done
