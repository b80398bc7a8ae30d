"""Plain compiled loop, GPT-2 124M (padded vocab), bf16 autocast, fused AdamW: MFU by compile mode (CUDA only).

Variants: BATCH:MODE[:cdt] (cdt = inductor coordinate-descent tuning of pointwise/reduction kernels), e.g.
    PROBE_BUDGET_S=190 python scripts/gpu/mfu_probe.py 64:default 64:max-autotune 64:default:cdt
Writes $OUT/mfu_probe2.json when OUT is set (results/benchmark/gpu-h100-power/ holds the measured one).
"""
import json
import os
import sys
import time

import torch
import torch._inductor.config as inductor_config

from mugpt.core.model import GPT, GPTConfig

PEAK = 989e12  # H100 SXM dense bf16 FLOP/s
T = 1024


def measure(variant: str) -> dict:
    parts = variant.split(":")
    batch, mode, cdt = int(parts[0]), parts[1], "cdt" in parts[2:]
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    inductor_config.coordinate_descent_tuning = cdt
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, width=768, n_layer=12, n_head=12, block_size=T)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = torch.compile(model, mode=mode)
    x = torch.randint(0, 50257, (batch, T + 1), device="cuda")

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            _, loss = compiled(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    n, t0 = 40, time.perf_counter()
    for _ in range(n):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / n
    tps = batch * T / dt
    return dict(variant=variant, ms=1000 * dt, tok_s=tps, mfu=100 * tps * model.flops_per_token() / PEAK,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30, warmup_s=warm, loss=float(loss))


def main() -> None:
    torch.set_float32_matmul_precision("high")
    deadline = time.time() + float(os.environ.get("PROBE_BUDGET_S", "300"))
    results = []
    for variant in sys.argv[1:]:
        if time.time() > deadline:
            print(f"{variant}: skipped (time budget)", flush=True)
            continue
        try:
            r = measure(variant)
        except Exception as e:  # a compile mode that fails here is reported, and the next variant runs
            print(f"{variant}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        results.append(r)
        print(f"{variant}: {r['ms']:.1f} ms/step, {r['tok_s'] / 1e3:.0f}k tok/s, MFU {r['mfu']:.1f}%, "
              f"peak {r['peak_gib']:.1f} GiB, warmup {r['warmup_s']:.0f} s, loss {r['loss']:.3f}", flush=True)
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "mfu_probe2.json"), "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
