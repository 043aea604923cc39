#!/usr/bin/env bash
# Build the shipped tiny-shapes pipeline (sanatool/data/tiny-shapes) from nothing, on a CPU.
#
#   examples/build_tiny_shapes.sh [WORK_DIR] [--install]
#
# Four steps, each seeded, so the same machine and thread count give the same bytes:
#   1. render 4000 captioned 32x32 shapes images (evaluation prompts held out), and 8000 more;
#   2. train the small AutoencoderDC on the first set; it comes out inside a tiny pipeline dir with
#      the word-level tokenizer, the tiny Gemma2 text encoder and the Flow-DPM-Solver scheduler;
#   3. train the tiny SanaTransformer2DModel (8 blocks x 128, QK-norm) with flow matching on the
#      cached latents and caption embeddings, using that pipeline's encoders (1000 steps);
#   4. continue it for 1500 steps at half the learning rate on the fresh 8000 renders (`finetune`:
#      the provenance chain records both runs).
# The result is a full SanaPipeline dir in fp16 (about 6 MB). With --install it replaces the
# copy shipped in the package. Timings are in benchmarks/RESULTS.md.
#
# One thread per step, pinned: the bytes are then reproducible on any machine with the same CPU
# kind and library versions, and these models are too small for a second thread to pay off (on
# the shared 2-core build machine one thread ran 3-10x faster than two, which spent their time
# synchronising while other processes held the second core).
export OMP_NUM_THREADS=1
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

sanatool data shapes -o "$WORK/data" --n 4000 --seed 0 --force
sanatool data shapes -o "$WORK/data2" --n 8000 --seed 1 --force

sanatool train-vae --data "$WORK/data" -o "$WORK/vae" \
  --steps 1500 --batch-size 32 --lr 1e-3 --seed 0 --dtype fp16 --force

sanatool train --preset tiny --components "$WORK/vae" --data "$WORK/data" -o "$WORK/stage1" \
  --steps 1000 --batch-size 64 --optimizer adamw --lr 1e-3 --warmup-steps 50 --lr-schedule cosine \
  --ema 0.999 --caption-dropout 0.1 --precision fp32 --dtype fp16 --seed 0 \
  --cache-dir "$WORK/cache" --save-every 250 --force

sanatool finetune "$WORK/stage1" --data "$WORK/data2" -o "$WORK/tiny-shapes" \
  --steps 1500 --batch-size 64 --optimizer adamw --lr 5e-4 --warmup-steps 50 --lr-schedule cosine \
  --ema 0.999 --caption-dropout 0.1 --precision fp32 --dtype fp16 --seed 1 \
  --cache-dir "$WORK/cache2" --save-every 250 --force

echo "built $WORK/tiny-shapes in $(( $(date +%s) - START )) s" >&2
if [ "$INSTALL" = 1 ]; then
  TARGET="$(python -c 'import sanatool.checkpoint as c; print(c.builtin_root() / "tiny-shapes")')"
  rm -rf "$TARGET"
  # Copy, not hard-link: the package must own its files. Training logs stay in the build dir.
  cp -r "$WORK/tiny-shapes" "$TARGET"
  rm -f "$TARGET/loss.jsonl" "$TARGET/loss.png"
  echo "installed into $TARGET" >&2
fi
