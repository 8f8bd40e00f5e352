#!/usr/bin/env bash
# Training speed against PyTorch, alternated (docs/BENCHMARKS.md, issue 14): per round and size,
# ../shared/bench/torch_lstm.py (2 threads) first, then `bench train` of each binary given, so
# every ratio compares runs of the same minute on a noisy host.
#   PYTHON=/path/to/python-with-torch .ci/ab-vs-torch.sh ROUNDS target/release/echoai [other...]
# Sizes: ref (16x256, E256 H512), bundled (16x256, E128 H256), cli (32x512, E256 H512).
set -u
ROUNDS=${1:?rounds}; shift
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-$(cd "$(dirname "$0")/.." && pwd)/../shared/bench/torch_lstm.py}
for r in $(seq "$ROUNDS"); do
  for size in ref bundled cli; do
    case $size in
      ref) b=16; s=256; e=256; h=512 ;;
      bundled) b=16; s=256; e=128; h=256 ;;
      cli) b=32; s=512; e=256; h=512 ;;
    esac
    t=$("$PYTHON" "$TORCH" train --threads 2 --batch $b --seq $s --embed $e --hidden $h 2>/dev/null \
      | grep -o "tokens_per_s=[0-9]*" | cut -d= -f2)
    line="r$r $size torch ${t:-?}"
    for bin in "$@"; do
      out=$("$bin" bench train --batch $b --seq $s --embed $e --hidden $h --no-baseline \
        --iters "${ITERS:-5}" --phases 2>&1)
      tok=$(echo "$out" | grep -o "fused LSTM *[0-9]*" | grep -o "[0-9]*$")
      bw=$(echo "$out" | grep -o "backward [0-9.]*" | grep -o "[0-9.]*$")
      ratio=$(python3 -c "print(round(${tok:-0} / ${t:-1}, 2))" 2>/dev/null)
      line="$line | $(basename "$bin") ${tok:-?} (${ratio:-?}) bw ${bw:-?}"
    done
    echo "$line"
  done
done
