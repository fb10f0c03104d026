#!/usr/bin/env bash
# The embedded model v2's whole recipe in one go: scenes -> VQ tokenizer -> its decoder at twice
# the size on the same codes (128 px) -> transformer -> reranker (on the tokenizer's
# reconstructions) -> one bundle, written where the caller says.
#
#   benchmarks/gpu_train.sh OUT_DIR            # one CUDA GPU: the full recipe, sized for < 10 min
#   benchmarks/gpu_train.sh OUT_DIR tiny cpu   # the same steps at toy size (checks the script)
#
# Every stage is the product's own `dalle` command, so a stage that stops can be rerun with the
# same line plus --resume. The step counts of the full recipe are the CPU recipe's (MODEL_CARD.md)
# with batches 4-8x larger; they are an estimate of what fits in 10 minutes on an H100-class
# GPU, not yet measured there. Wall time per stage is printed and written to OUT_DIR/times.txt.
set -euo pipefail

out=${1:?usage: benchmarks/gpu_train.sh OUT_DIR [full|tiny] [cuda|cpu]}
scale=${2:-full}
device=${3:-cuda}

case "$scale" in
  full)
    scenes=60000 preset=default big=128 big_scenes=20000
    vq=(--steps 3000 --batch-size 128 --lr 2e-3)
    dec=(--steps 2000 --batch-size 128 --lr 1e-3)
    tf=(--steps 6000 --batch-size 128 --lr 1e-3)
    rr=(--steps 2500 --batch-size 256 --lr 1e-3 --set train.warmup=100)
    ;;
  tiny)
    scenes=48 preset=tiny big=64 big_scenes=16
    vq=(--steps 4 --batch-size 8)
    dec=(--steps 4 --batch-size 8)
    tf=(--steps 4 --batch-size 8)
    rr=(--steps 4 --batch-size 8)
    ;;
  *)
    echo "gpu_train.sh: scale must be full or tiny, got '$scale'" >&2
    exit 2
    ;;
esac

mkdir -p "$out"
times="$out/times.txt"
: >"$times"
stage() {  # stage NAME COMMAND...: run it, print and record its wall time
  local name=$1 started
  shift
  started=$(date +%s)
  "$@"
  echo "$name $(($(date +%s) - started)) s" | tee -a "$times"
}

common=(--device "$device" --quiet)
stage scenes dalle data scenes --count "$scenes" --out "$out/scenes" --size 64 --seed 0 --quiet
stage vq dalle train vq --data "$out/scenes" --out "$out/vq" --preset "$preset" "${vq[@]}" \
  "${common[@]}"
stage scenes-big dalle data scenes --count "$big_scenes" --out "$out/scenes-big" --size "$big" \
  --seed 1 --quiet
stage decoder dalle train vq --init "$out/vq/vq.safetensors" --decoder-only --set pool=2 \
  --set image_size="$big" --data "$out/scenes-big" --out "$out/vq-big" "${dec[@]}" "${common[@]}"
stage transformer dalle train transformer --data "$out/scenes" --vae "$out/vq/vq.safetensors" \
  --out "$out/tf" --preset "$preset" "${tf[@]}" "${common[@]}"
stage reranker dalle train reranker --data "$out/scenes" --bundle "$out/tf/model.dalle.safetensors" \
  --out "$out/rr" --reconstructed "${rr[@]}" "${common[@]}"
stage bundle dalle bundle --transformer "$out/tf/model.dalle.safetensors" \
  --reranker "$out/rr/model.dalle.safetensors" --vae "$out/vq-big/vq.safetensors" \
  --name "scenes ${big}px, VQ tokens (gpu_train.sh)" --out "$out/model.dalle.safetensors"

bytes=$(stat -c %s "$out/model.dalle.safetensors")
echo "bundle $out/model.dalle.safetensors: $((bytes / 1024)) KiB" | tee -a "$times"
# issue 17 asks for <= 16 MiB; the default preset's bundle is about 17.5 MiB (MODEL_CARD.md), so
# this is said, not a failure after the whole run
if [ "$bytes" -gt $((16 * 1024 * 1024)) ]; then
  echo "gpu_train.sh: the bundle is $((bytes / 1024)) KiB, over the 16 MiB target" >&2
fi
