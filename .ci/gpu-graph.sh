#!/usr/bin/env bash
# The step loops recorded as CUDA graphs (ECHOAI_CUDA_GRAPH=1, cuda_graph.rs) against plain
# launches, beside PyTorch cuDNN in the same call; parity first with graphs on. Carry `.gpu/` as
# for gpu-check.sh.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-graph}"; BIN=.gpu; mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-graph.log") 2>&1
export LD_LIBRARY_PATH="$PWD/$BIN:/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64"
for b in "$BIN"/*.xz; do xz -dkf "$b"; done
chmod +x "$BIN"/echoai "$BIN"/cuda_parity
ECHOAI_CUDA_GRAPH=1 timeout -k 5 60 "$BIN"/cuda_parity --test-threads 1 2>&1 | grep -E "^test |test result|graphs"
bench() { timeout -k 5 40 "$BIN"/echoai bench train --device cuda --iters 10 --no-baseline "$@" 2>&1 | grep -E "fused LSTM|graphs"; }
for size in "128 512" "16 256" "32 512"; do
  set -- $size
  timeout -k 5 40 python3 .ci/torch_lstm_cuda.py --batch "$1" --seq "$2" 2>&1 | grep RESULT
  echo "plain f32: $(bench --batch "$1" --seq "$2")"
  echo "graph f32: $(ECHOAI_CUDA_GRAPH=1 bench --batch "$1" --seq "$2")"
done
echo "== done"
