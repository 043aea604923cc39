#!/usr/bin/env bash
# Score every block, prune the least important ones, then heal the pruned model by fine-tuning
# (SANA 1.5 model depth pruning).
#
#   examples/importance_prune_finetune.sh [MODEL] [WORKDIR]
#
# MODEL is a SanaPipeline dir or builtin:tiny-shapes (the default, 8 blocks). KEEP is how many
# blocks survive. The importance file records the model's fingerprint, so it cannot be applied
# to another model by mistake, and pruning can be redone at any depth without scoring again.
set -euo pipefail

MODEL=${1:-builtin:tiny-shapes}
WORK=${2:-runs/prune}
KEEP=${KEEP:-6}
STEPS=${STEPS:-100}
DATA=${DATA:-$WORK/data}
mkdir -p "$WORK"

[ -d "$DATA" ] || sanatool data shapes -o "$DATA" --n 2000

# Block importance over calibration prompts × sampler timesteps (JSON + heatmap PNG).
sanatool importance "$MODEL" -o "$WORK/importance.json" --force

# Keep the KEEP highest-scoring blocks, in their original order.
PRUNED=$(sanatool prune "$MODEL" --keep "$KEEP" --importance "$WORK/importance.json" -o "$WORK/pruned" --force)

# The naive baseline for comparison: keep the first KEEP blocks.
sanatool prune "$MODEL" --keep "$KEEP" --strategy tail -o "$WORK/pruned-tail" --force > /dev/null

# Heal the pruned model.
HEALED=$(sanatool finetune "$PRUNED" --data "$DATA" -o "$WORK/pruned-ft" --steps "$STEPS" --optimizer came8bit --force)

sanatool info "$HEALED"
