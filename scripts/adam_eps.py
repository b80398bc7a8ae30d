"""Does Adam's ε matter under µP? `python scripts/adam_eps.py [overrides]` (config: conf/adam_eps.yaml).

Trains the experiment's GPT at each width, with Adam's ε fixed (scale_eps=false) and scaled as µP's gradients
(scale_eps=true), and prints per parameter group the median sqrt(v̂) and the share of entries whose step ε damps
by more than 10%. Example: python scripts/adam_eps.py widths=[256,1024] steps=100
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from mugpt.config import compose_training_config, register_configs, script_option
from mugpt.core.optim import eps_share
from mugpt.core.recipe import Recipe, train_step
from mugpt.data.windows import load_tokens, sample_batches


def run(cfg: DictConfig) -> list[dict]:
    steps, batch = script_option(cfg, "steps", int, positive=True), script_option(cfg, "batch_size", int, positive=True)
    train_cfg = compose_training_config([f"+experiment={cfg.recipe}", "output_dir=unused"])
    if cfg.eps is not None:
        train_cfg.optim.eps = script_option(cfg, "eps", float, positive=True)
    tokens = load_tokens(train_cfg.data.tokenizer)
    vocab = 256 if train_cfg.data.tokenizer == "byte" else 50257
    batches = sample_batches(tokens, steps, batch, train_cfg.model.block_size, seed=int(cfg.seed))
    rows = []
    for width in cfg.widths:
        for scale in cfg.scale_eps:
            params = {**OmegaConf.to_container(train_cfg.parametrization, resolve=True), "name": "mup",
                      "scale_eps": bool(scale)}
            recipe = Recipe.from_config({**train_cfg.model, "width": int(width)}, params, train_cfg.optim,
                                        vocab_size=vocab)
            torch.manual_seed(int(cfg.seed))
            model = recipe.build_model()
            optimizer, scheduler = recipe.build_optimizer(model, steps)
            for x, y in batches:
                out = train_step(model, optimizer, scheduler, [(x, y)], grad_clip=recipe.grad_clip,
                                 autocast_dtype=torch.bfloat16 if cfg.bf16 else None)
            for r in eps_share(optimizer):
                rows.append({"width": int(width), "scale_eps": bool(scale), "train_loss": round(out.loss.item(), 4),
                             **r})
                print(f"width {width:>5} scale_eps={str(bool(scale)):<5} {r['group']:<24} eps {r['eps']:.2e} "
                      f"median sqrt(v) {r['median_sqrt_v']:.2e} damped>10%: {100 * r['damped_fraction']:.2f}% "
                      f"(train loss {out.loss.item():.3f})", flush=True)
    return rows


@hydra.main(version_base="1.3", config_path="../conf", config_name="adam_eps")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(script_option(cfg, "threads", int, positive=True))
    try:
        rows = run(cfg)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "adam_eps.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'adam_eps.csv'}")


if __name__ == "__main__":
    register_configs()
    main()
