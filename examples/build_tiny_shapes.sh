#!/usr/bin/env bash
# Build the shipped tiny-shapes pipeline (sanatool/data/tiny-shapes) from nothing, on a CPU.
#
#   examples/build_tiny_shapes.sh [WORK_DIR] [--install]
#
# Three steps, each seeded, so the same machine, process count and library versions give the
# same bytes:
#   1. render 12000 captioned 32x32 shapes images (evaluation prompts held out);
#   2. train the small AutoencoderDC on them; it comes out inside a tiny pipeline dir with the
#      word-level tokenizer, the tiny Gemma2 text encoder (random) and the Flow-DPM-Solver scheduler;
#   3. train the tiny SanaTransformer2DModel (8 blocks x 128, QK-norm) with flow matching on the
#      cached latents, 1500 steps at a global batch of 64, training the text encoder along
#      (--train-text-encoder): SANA's Gemma arrives pretrained and tells the transformer which
#      colour belongs to which shape; the shapes world's encoder has to learn it here.
# The result is a full SanaPipeline dir in fp16 (about 6 MB). With --install it replaces the copy
# shipped in the package. Timings and the model's scores are in benchmarks/RESULTS.md (22 minutes
# on 2 cores, overall 0.553; --steps 2400 reaches 0.763 in 27-31 minutes).
#
# The transformer trains under torchrun with one process per core (two at most), one thread each:
# on 2 cores that runs 1.75 steps/s against 1.46 for one process with two threads. The VAE, a
# single process, uses the cores as threads.
set -euo pipefail

WORK="build/tiny-shapes"
INSTALL=0
for arg in "$@"; do
  case "$arg" in
    --install) INSTALL=1 ;;
    *) WORK="$arg" ;;
  esac
done
mkdir -p "$WORK"
START=$(date +%s)
CORES=$(nproc)
PROCS=$(( CORES >= 2 ? 2 : 1 ))

OMP_NUM_THREADS=1 sanatool data shapes -o "$WORK/data" --n 12000 --seed 0 --force

OMP_NUM_THREADS=$PROCS sanatool train-vae --data "$WORK/data" -o "$WORK/vae" \
  --steps 1500 --batch-size 32 --lr 1e-3 --seed 0 --dtype fp16 --force

TRAIN=(train --preset tiny --components "$WORK/vae" --data "$WORK/data" -o "$WORK/tiny-shapes"
  --steps 1500 --batch-size $(( 64 / PROCS )) --optimizer adamw --lr 1e-3 --warmup-steps 50
  --lr-schedule cosine --ema 0.999 --caption-dropout 0.1 --precision fp32 --dtype fp16 --seed 0
  --train-text-encoder --cache-dir "$WORK/cache" --save-every 500 --force)
if [ "$PROCS" -gt 1 ]; then
  OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node "$PROCS" -m sanatool "${TRAIN[@]}"
else
  OMP_NUM_THREADS=1 sanatool "${TRAIN[@]}"
fi

echo "built $WORK/tiny-shapes in $(( $(date +%s) - START )) s" >&2
if [ "$INSTALL" = 1 ]; then
  TARGET="$(python -c 'import sanatool.io.modeldir as c; print(c.builtin_root() / "tiny-shapes")')"
  rm -rf "$TARGET"
  # Copy, not hard-link: the package must own its files. Training logs stay in the build dir.
  cp -r "$WORK/tiny-shapes" "$TARGET"
  rm -f "$TARGET/loss.jsonl" "$TARGET/loss.png"
  echo "installed into $TARGET" >&2
fi
