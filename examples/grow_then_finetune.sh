#!/usr/bin/env bash
# Grow a model deeper, then fine-tune it (SANA 1.5 model growth with partial-retain init).
#
#   examples/grow_then_finetune.sh [MODEL] [WORKDIR]
#
# MODEL is a SanaPipeline dir or builtin:tiny-shapes (the default, 8 blocks). The grown model
# starts out computing exactly what MODEL computes: the new blocks are identities until
# fine-tuning teaches them something. For the paper's 1.6B → 4.8B recipe use
# DEPTH=60 SOURCE_LAYERS=18 with a SANA 1.5 1.6B pipeline dir and your own data in DATA.
set -euo pipefail

MODEL=${1:-builtin:tiny-shapes}
WORK=${2:-runs/grow}
DEPTH=${DEPTH:-12}
SOURCE_LAYERS=${SOURCE_LAYERS:-}
STEPS=${STEPS:-100}
DATA=${DATA:-$WORK/data}
mkdir -p "$WORK"

# Training images with captions (the shapes world); skipped when DATA already exists.
[ -d "$DATA" ] || sanatool data shapes -o "$DATA" --n 2000

# What grow will do, without writing anything.
sanatool grow "$MODEL" --to "$DEPTH" ${SOURCE_LAYERS:+--source-layers "$SOURCE_LAYERS"} -o "$WORK/grown" --force --dry-run

# Grow: kept blocks are copied byte for byte, new ones appended as identities.
GROWN=$(sanatool grow "$MODEL" --to "$DEPTH" ${SOURCE_LAYERS:+--source-layers "$SOURCE_LAYERS"} -o "$WORK/grown" --force)

# Fine-tune the grown model; CAME-8bit keeps the optimizer state small.
TUNED=$(sanatool finetune "$GROWN" --data "$DATA" -o "$WORK/grown-ft" --steps "$STEPS" --optimizer came8bit --force)

sanatool info "$TUNED"
