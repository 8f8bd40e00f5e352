#!/usr/bin/env python3
"""PyTorch cuDNN's training speed on the reference model, for `echoai bench train --device cuda`.

Model (DESIGN.md's reference): Embedding(390, E) -> LSTM(E -> H, 2 layers, batch_first) -> Linear(H, 390),
cross-entropy on the next id, AdamW. Each step ends with `loss.item()` (a synchronisation), as
echoai's bench synchronises after each step. `--tf32` allows TF32 in cuDNN and in matmuls (PyTorch's
default for cuDNN); without it both are off, which is what echoai's f32 does.
Prints one line beginning with RESULT.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

VOCAB = 390


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = nn.ModuleDict({
        "emb": nn.Embedding(VOCAB, a.embed),
        "lstm": nn.LSTM(a.embed, a.hidden, num_layers=2, batch_first=True),
        "out": nn.Linear(a.hidden, VOCAB),
    }).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    times = []
    for it in range(a.warmup + a.iters):
        data = torch.randint(0, VOCAB, (a.batch, a.seq + 1), device=dev)
        x, y = data[:, :-1], data[:, 1:]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        h, _ = model["lstm"](model["emb"](x))
        logits = model["out"](h)
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        opt.step()
        loss.item()
        if it >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    prec = "tf32" if a.tf32 else "f32"
    print(f"RESULT torch {torch.__version__} {torch.cuda.get_device_name()} {prec} batch {a.batch} seq {a.seq} "
          f"step_ms={med * 1e3:.2f} tokens_per_s={a.batch * a.seq / med:.0f}")


if __name__ == "__main__":
    main()
