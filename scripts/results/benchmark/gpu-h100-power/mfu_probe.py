"""Plain compiled loop, GPT-2 124M (padded vocab), bf16 autocast, fused AdamW: MFU by compile mode.
Variants: BATCH:MODE[:cdt]  (cdt = inductor coordinate-descent tuning of pointwise/reduction kernels)."""
import os, sys, time, json, torch
import torch._inductor.config as ind
from mugpt.model import GPT, GPTConfig
torch.set_float32_matmul_precision("high")
PEAK = 989e12
deadline = time.time() + float(os.environ.get("PROBE_BUDGET_S", "300"))
results = []
for variant in sys.argv[1:]:
    if time.time() > deadline:
        print(f"{variant}: skipped (time budget)", flush=True); continue
    parts = variant.split(":")
    B, mode, cdt = int(parts[0]), parts[1], "cdt" in parts[2:]
    T = 1024
    torch._dynamo.reset(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    ind.coordinate_descent_tuning = cdt
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, width=768, n_layer=12, n_head=12, block_size=T)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_fn = torch.compile(model, mode=mode)
    x = torch.randint(0, 50257, (B, T + 1), device="cuda")
    def step():
        with torch.autocast("cuda", torch.bfloat16):
            _, loss = step_fn(x[:, :-1], x[:, 1:])
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    t0 = time.perf_counter()
    try:
        for _ in range(5): step()
    except Exception as e:
        print(f"{variant}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True); continue
    torch.cuda.synchronize(); warm = time.perf_counter() - t0
    n = 40; t0 = time.perf_counter()
    for _ in range(n): loss = step()
    torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / n
    tps = B * T / dt
    r = dict(variant=variant, ms=1000 * dt, tok_s=tps, mfu=100 * tps * model.flops_per_token() / PEAK,
             peak_gib=torch.cuda.max_memory_allocated() / 2**30, warmup_s=warm, loss=float(loss))
    results.append(r)
    print(f"{variant}: {r['ms']:.1f} ms/step, {tps/1e3:.0f}k tok/s, MFU {r['mfu']:.1f}%, peak {r['peak_gib']:.1f} GiB, "
          f"warmup {warm:.0f} s, loss {r['loss']:.3f}", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "mfu_probe2.json"), "w") as f:
            json.dump(results, f, indent=1)
    del model, opt, step_fn
