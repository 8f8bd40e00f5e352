#!/usr/bin/env bash
# The row-block lanes of cuda_lanes.rs measured on a GPU: parity, then 128 x 512 with 1, 2 and 4
# lanes beside PyTorch cuDNN in the same call. Carry `.gpu/` as for gpu-check.sh.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-lanes}"; BIN=.gpu; mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-lanes.log") 2>&1
export LD_LIBRARY_PATH="$PWD/$BIN:/usr/local/cuda/targets/x86_64-linux/lib:/usr/local/nvidia/lib64"
for b in "$BIN"/*.xz; do xz -dkf "$b"; done
chmod +x "$BIN"/echoai "$BIN"/cuda_parity
timeout -k 5 120 "$BIN"/cuda_parity --test-threads 1 2>&1 | grep -E "^test |test result"
bench() { timeout -k 5 60 "$BIN"/echoai bench train --device cuda --batch 128 --seq 512 --iters 10 --no-baseline "$@" 2>&1 | grep -E "fused LSTM"; }
for round in 1 2; do
  timeout -k 5 60 python3 .ci/torch_lstm_cuda.py --batch 128 --seq 512 2>&1 | grep RESULT
  for lanes in 1 2 4; do echo "lanes $lanes f32: $(ECHOAI_CUDA_LSTM_LANES=$lanes bench)"; done
  timeout -k 5 60 python3 .ci/torch_lstm_cuda.py --batch 128 --seq 512 --tf32 2>&1 | grep RESULT
  for lanes in 1 2; do echo "lanes $lanes tf32: $(ECHOAI_CUDA_LSTM_LANES=$lanes bench --tf32)"; done
done
echo "== done"
