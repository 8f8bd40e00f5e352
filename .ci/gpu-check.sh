#!/usr/bin/env bash
# The CUDA checks of issue 13, in one call on a machine with an NVIDIA GPU (no Rust needed there).
#
# Build here (docs/CUDA.md), then carry `.gpu/` to the GPU machine and run this from the repo root:
#   CUDA_COMPUTE_CAP=90 cargo build --release --features cuda
#   cargo test --release --features cuda --test cuda_parity --no-run   # prints the test binary
#   LD_LIBRARY_PATH=$CUDA/lib cargo test --release --features cuda --lib cuda   # NVRTC needs no GPU
#   mkdir -p .gpu && cp $TARGET/release/echoai .gpu/ && cp <that test binary> .gpu/cuda_parity
#   (strip and xz them to fit a 64 MiB carry; the script unpacks .gpu/*.xz, and a missing
#   libasound.so.2 can ride along in .gpu/)
#   OUT=/some/folder .ci/gpu-check.sh
# Writes gpu-check.log (everything below), bench.txt (the speed table) and train.jsonl to $OUT.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"
BIN="${BIN:-.gpu}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1

# cuBLAS, cuRAND and NVRTC from the machine's toolkit or PyTorch's wheels; the driver is the machine's.
libs=""
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libcurand.so.10; do
  found=$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" 2>/dev/null | head -1)
  [ -n "$found" ] && libs="$libs:$(dirname "$found")"
done
export LD_LIBRARY_PATH="$PWD/$BIN:${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "== LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
for b in "$BIN"/*.xz; do
  [ -e "$b" ] || continue
  xz -dkf "$b" 2>/dev/null || python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], 'wb'))" "$b"
done
chmod +x "$BIN"/echoai "$BIN"/cuda_parity 2>/dev/null

echo "== nvidia-smi"; nvidia-smi
if [ "${SKIP_PARITY:-0}" = 0 ]; then
echo "== parity (tests/cuda_parity.rs)"
timeout -k 10 240 "$BIN"/cuda_parity --test-threads 1 --nocapture
echo "parity exit: $?"
echo "== parity with CUDA attention composed of candle ops (ECHOAI_CUDA_BAND_ATTENTION=0)"
ECHOAI_CUDA_BAND_ATTENTION=0 timeout -k 10 240 "$BIN"/cuda_parity --test-threads 1 --nocapture
echo "parity (composed attention) exit: $?"
fi

echo "== speed: PyTorch cuDNN and echoai, alternated, same card" | tee "$OUT/bench.txt"
[ "${SKIP_BENCH:-0}" = 1 ] && echo "(skipped: SKIP_BENCH=1)"
[ "${SKIP_BENCH:-0}" = 1 ] || for size in "16 256" "32 512" "128 512"; do
  set -- $size
  for prec in f32 tf32; do
    flag=""; [ "$prec" = tf32 ] && flag="--tf32"
    timeout -k 5 90 python3 .ci/torch_lstm_cuda.py --batch "$1" --seq "$2" $flag 2>&1 | grep RESULT | tee -a "$OUT/bench.txt"
    extra=""; [ "$prec" = f32 ] && extra="--attention"
    timeout -k 5 90 "$BIN"/echoai bench train --device cuda --batch "$1" --seq "$2" --iters 10 --no-baseline $flag $extra 2>&1 \
      | grep -E "bench train|training tokens|forward \+ loss" | tee -a "$OUT/bench.txt"
    if [ "$prec" = f32 ]; then
      echo "(attention composed of candle ops)" | tee -a "$OUT/bench.txt"
      ECHOAI_CUDA_BAND_ATTENTION=0 timeout -k 5 90 "$BIN"/echoai bench train --device cuda --batch "$1" --seq "$2" \
        --iters 10 --no-baseline --attention 2>&1 | grep -E "lstm-attention" | tee -a "$OUT/bench.txt"
    fi
  done
done

echo "== where a step's time goes (--phases synchronises between phases, so these rows run slower)" | tee -a "$OUT/bench.txt"
for size in "16 256" "32 512" "128 512"; do
  set -- $size
  timeout -k 5 90 "$BIN"/echoai bench train --device cuda \
    --batch "$1" --seq "$2" --iters 5 --no-baseline --attention --phases 2>&1 | grep -E "bench train|training tokens|forward \+ loss" | tee -a "$OUT/bench.txt"
done

if [ "${SKIP_TRAIN:-0}" = 1 ]; then echo "== training skipped (SKIP_TRAIN=1)"; echo "== done"; exit 0; fi
echo "== training: default-size lstm-attention on the demo corpus for 2 minutes"
rm -rf /tmp/gpu-run
timeout --foreground -s INT -k 90 120 "$BIN"/echoai train --data assets/corpus --model lstm-attention --device cuda \
  --out /tmp/gpu-run --steps 100000 --validate-every 100 --checkpoint-every 100000 --sample-every 0 --json \
  > "$OUT/train.jsonl"
echo "train exit: $?"
grep -E '"(started|validation|finished|stopped|error)' "$OUT/train.jsonl" | tail -20
tail -1 "$OUT/train.jsonl"
echo "== done"
