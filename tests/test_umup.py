"""u-µP (parametrization=umup) against its promises and rules: unit-scale activations at init, unit-scaling's Adam
learning rates and lr-independent decay, training, what it runs and what it refuses, and the project without it."""

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from mugpt.core.model import GPTConfig
from mugpt.core.parametrization import get_parametrization
from mugpt.core.recipe import Recipe
from mugpt.errors import ConfigError
from mugpt.studies.coord_check import probed_modules
from mugpt.training.train import check_config, train

pytest.importorskip("unit_scaling")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on a busy 2-core machine

VOCAB = 256
UMUP = ["parametrization=umup", "model.tie_embeddings=false", "optim.lr=0.25", "optim.weight_decay=1e-4"]


def config(width: int = 32, **kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=VOCAB, block_size=16, width=width, n_layer=2, n_head=2,
                               tie_embeddings=False), **kw})


def umup(**options):
    return get_parametrization({"name": "umup", **options})


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(seed))
    return x, torch.roll(x, -1, dims=1)


def rms(t: torch.Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


def grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    _, loss = model(x, y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------ scales
@pytest.mark.parametrize("width", [32, 64])
def test_activations_have_unit_rms_at_init(width):
    """Unit scaling's promise, measured where the coordinate check measures (the embedding output, each block's
    residual output): RMS within a factor 1.35 of 1 (|ln RMS| < 0.3) at both widths. The logits are the
    exception u-µP makes on purpose: its readout is µP's W h / width, so their RMS is 1/sqrt(width) (within 10%),
    and the loss starts at ln(vocab)."""
    torch.manual_seed(0)
    model = umup().build_model(config(width))
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
             for name, m in probed_modules(model).items()]
    with torch.no_grad():
        _, loss = model(*batch())
    for h in hooks:
        h.remove()
    streams = {name: rms(out) for name, out in outputs.items() if name == "embedding" or name.endswith("residual")}
    assert len(streams) == 3
    for name, value in streams.items():
        assert abs(math.log(value)) < 0.3, (width, name, value)
    assert rms(outputs["logits"]) * math.sqrt(width) == pytest.approx(1.0, rel=0.1)
    assert loss.item() == pytest.approx(math.log(VOCAB), abs=0.05)


def test_weights_are_unit_variance_and_width_independent():
    """u-µP draws every weight N(0, 1) (the scale is in the ops), LayerNorm gains 1 and biases 0; model.init_std is
    ignored."""
    torch.manual_seed(0)
    model = umup().build_model(config(64, init_std=0.5))
    for name in ("tok_emb.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.proj.weight", "lm_head.weight"):
        assert model.get_parameter(name).std().item() == pytest.approx(1.0, rel=0.05), name
    assert torch.all(model.blocks[0].ln_1.weight == 1) and torch.all(model.blocks[0].attn.qkv.bias == 0)


# ------------------------------------------------------------------------------------ learning rates
def expected_multiplier(name: str, width: int, n_layer: int, mlp_ratio: int = 4) -> float:
    """u-µP's Adam rule, written out from the paper/package's formula rather than by calling it: matrices and
    tables lr / sqrt(fan_in) (a table's fan_in is the width), the readout and vectors lr, and everything inside the
    blocks × n_layer^-1/2."""
    depth = n_layer ** -0.5 if name.startswith("blocks.") else 1.0
    if name == "lm_head.weight" or not name.endswith("weight") or ".ln_" in name or name.startswith("ln_f"):
        return depth
    fan_in = mlp_ratio * width if name.endswith("mlp.proj.weight") else width
    return depth / math.sqrt(fan_in)


@pytest.mark.parametrize("n_layer", [2, 4])
def test_group_learning_rates_follow_unit_scalings_adam_rule(n_layer):
    base, lr = 32, 0.5
    per_width = {}
    for width in (base, 2 * base, 4 * base):
        model = umup().build_model(config(width, n_layer=n_layer))
        groups = umup().param_groups(model, lr=lr, weight_decay=0.0)
        names = [n for g in groups for n in g["param_names"]]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each parameter once
        for g in groups:
            assert set(g) == {"name", "kind", "decay", "parametrization", "params", "param_names", "lr", "lr_mult",
                              "weight_decay", "eps_mult"}
            assert g["parametrization"] == "umup" and g["eps_mult"] == 1.0
            for name in g["param_names"]:
                assert g["lr_mult"] == pytest.approx(expected_multiplier(name, width, n_layer), rel=1e-12), name
                assert g["lr"] == pytest.approx(lr * g["lr_mult"], rel=1e-12)
        per_width[width] = {n: g["lr"] for g in groups for n in g["param_names"]}
        assert len({(g["kind"], g["lr_mult"], g["decay"]) for g in groups}) == len(groups)  # one group per key
    # 2x and 4x the width: hidden matrices and tables by 1/sqrt(2) and 1/2; the readout and vectors unchanged
    for name, lr_base in per_width[base].items():
        matrix = name.endswith("weight") and ".ln_" not in name and not name.startswith(("ln_f", "lm_head"))
        for m in (2, 4):
            assert per_width[m * base][name] == pytest.approx(lr_base / math.sqrt(m) if matrix else lr_base), name


def test_weight_decay_is_lr_independent():
    """lr_group · weight_decay_group = optim.weight_decay for every decayed group (the package's
    independent_weight_decay), whatever the lr: one AdamW step with zero gradients shrinks every decayed weight
    by exactly the factor 1 - weight_decay, and leaves vectors alone."""
    wd = 0.01
    model = umup().build_model(config(64))
    for lr in (0.05, 2.0):
        groups = umup().param_groups(model, lr=lr, weight_decay=wd)
        for g in groups:
            assert g["lr"] * g["weight_decay"] == pytest.approx(wd if g["decay"] else 0.0, rel=1e-12)
            assert g["decay"] == (g["kind"] != "vector")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(umup().param_groups(model, lr=0.3, weight_decay=wd))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - wd if p.ndim >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0, msg=name)


# ------------------------------------------------------------------------------------------ training
def test_a_few_adam_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    rule = umup()
    model = rule.build_model(config(64))
    optimizer = torch.optim.AdamW(rule.param_groups(model, lr=0.25, weight_decay=0.0), betas=(0.9, 0.95))
    x, y = batch()
    losses = []
    for _ in range(10):
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_loss_is_the_mean_cross_entropy_of_the_returned_logits():
    """The returned logits carry the loss softmax multiplier, so sampling and F.cross_entropy see the trained
    distribution; the loss value is the mean over valid positions (ignored -1 targets left out)."""
    torch.manual_seed(0)
    model = umup(loss_softmax_mult=3.0).build_model(config())
    x, y = batch()
    y[0, :5] = -1
    with torch.no_grad():
        logits, loss = model(x, y)
    expected = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_chunked_loss_gives_the_full_paths_loss_and_unit_scaled_gradients():
    """loss_impl=chunked never holds all logits; its loss and every parameter's gradient equal the full path's
    (unit-scaled, not mean-loss, gradients), with non-default multipliers and ignored targets."""
    options = dict(loss_softmax_mult=2.0, attn_softmax_mult=0.5, residual_mult=1.5)
    x, y = batch()
    y[0, :3] = -1
    torch.manual_seed(0)
    full_loss, full = grads(umup(**options).build_model(config()), x, y)
    torch.manual_seed(0)
    chunked_loss, chunked = grads(umup(**options).build_model(config(loss_impl="chunked", loss_chunk=24)), x, y)
    assert chunked_loss == pytest.approx(full_loss, rel=1e-5)
    for name, g in full.items():
        torch.testing.assert_close(chunked[name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=name)


def test_activation_checkpointing_recomputes_exactly():
    x, y = batch()
    torch.manual_seed(0)
    loss, plain = grads(umup().build_model(config()), x, y)
    torch.manual_seed(0)
    loss_ckpt, ckpt = grads(umup().build_model(config(activation_checkpointing=True)), x, y)
    assert loss_ckpt == loss
    for name, g in plain.items():
        assert torch.equal(ckpt[name], g), name


@pytest.mark.slow  # inductor compiles forward and backward on the CPU: about 30 s
def test_torch_compile_gives_the_eager_loss_and_gradients():
    x, y = batch()
    torch.manual_seed(0)
    loss, eager = grads(umup().build_model(config()), x, y)
    torch.manual_seed(0)
    model = umup().build_model(config())
    torch._dynamo.reset()
    compiled = torch.compile(model)
    _, compiled_loss = compiled(x, y)
    compiled_loss.backward()
    torch._dynamo.reset()
    assert compiled_loss.item() == pytest.approx(loss, rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-4, atol=1e-5 * eager[name].abs().max().item())


def test_generate_from_a_single_token_and_survive_deepcopy():
    """A one-token context (an empty prompt's start token) would make unit-scaling's causal-attention scale rule
    take log(1)/1 = 0 and fail; the model attends non-causally there (the same function). deepcopy keeps the
    parameter tags the learning-rate rule reads."""
    torch.manual_seed(0)
    rule = umup()
    model = rule.build_model(config()).eval()
    out = model.generate(torch.zeros(2, 1, dtype=torch.long), max_new_tokens=20, temperature=0.0)
    assert out.shape == (2, 21) and int(out.max()) < VOCAB
    twin = copy.deepcopy(model)
    x, _ = batch()
    with torch.no_grad():
        assert torch.equal(twin(x)[0], model(x)[0])
    assert twin.blocks[0].attn.qkv.weight.mup_scaling_depth == 2
    lrs = [(g["name"], g["lr"]) for g in rule.param_groups(twin, 1.0, 0.0)]
    assert lrs == [(g["name"], g["lr"]) for g in rule.param_groups(model, 1.0, 0.0)]


def test_train_py_parametrization_umup_completes(make_cfg):
    from mugpt.studies.inspection import load_run, sample_text

    cfg = make_cfg(*UMUP)
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 20
    assert math.isfinite(summary["val_loss"]) and summary["val_loss"] < math.log(VOCAB) - 1.0
    run = load_run(cfg.output_dir, device="cpu")  # rebuilt as training built it, the checkpoint loaded
    assert type(run.model).__name__ == "UnitScaledGPT"
    assert len(sample_text(run, "", 8, temperature=0.0)[0]) > 0


# ------------------------------------------------------------------------------------------- refusals
def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "parametrization" in message
    return message


@pytest.mark.parametrize("overrides, match", [
    (["model.norm=post"], r"model.norm=post is not supported: .*pre-norm"),
    (["optim=sgd"], r"parametrization=umup: the 'sgd' optimizer family is not supported: .*Adam"),
    (["optim=muon"], r"parametrization=umup: the 'muon' optimizer family is not supported"),
    (["compile=default", "activation_checkpointing=blocks"],
     r"compile=default with activation_checkpointing=blocks is not supported: .*use one of the two"),
    (["+parametrization.base_width=64"], r"parametrization.base_width: not an option of parametrization=umup"),
    (["parametrization.residual_mult=0"], r"parametrization.residual_mult must be a positive number"),
])
def test_training_config_check_refuses_in_one_line(make_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match) as exc:
        check_config(make_cfg(*UMUP, *overrides))
    one_line(exc)


def test_umup_unties_the_default_models_embeddings(make_cfg):
    """u-µP needs untied embeddings: `parametrization=umup` with the default (tied) model is accepted, and the
    model built for it is untied, by the config check's route and by the Recipe's."""
    cfg = make_cfg("parametrization=umup", "optim.lr=0.25")
    assert cfg.model.tie_embeddings  # the model group's default
    check_config(cfg)
    recipe = Recipe.from_config(cfg.model, cfg.parametrization, cfg.optim, vocab_size=256)
    model = recipe.build_model()
    assert not recipe.model.tie_embeddings and not model.config.tie_embeddings
    assert model.lm_head.weight is not model.tok_emb.weight
    assert not umup().build_model(config(tie_embeddings=True)).config.tie_embeddings  # the Python route too


@pytest.mark.parametrize("written, refused", [("model.tie_embeddings=true", True),
                                              ("model.tie_embeddings=false", False), ("model.width=64", False)])
def test_umup_refuses_tied_embeddings_written_on_the_command_line(make_cfg, written, refused):
    """A contradiction the user wrote (Hydra's record of the command line) is one line, not silently undone."""
    from omegaconf import open_dict

    cfg = make_cfg("parametrization=umup", "optim.lr=0.25", written)
    with open_dict(cfg):
        cfg.hydra = {"overrides": {"task": ["parametrization=umup", "optim.lr=0.25", written]}}
    if not refused:
        check_config(cfg)
        return
    with pytest.raises(ConfigError, match=r"^parametrization=umup needs model.tie_embeddings=false, but the command "
                                          r"line sets model.tie_embeddings=true") as exc:
        check_config(cfg)
    one_line(exc)


def test_training_config_check_accepts_what_runs(make_cfg):
    for overrides in ([], ["model.loss_impl=chunked"], ["activation_checkpointing=blocks"], ["compile=default"],
                      ["optim=adam"], ["optim=adafactor"],
                      ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]):
        check_config(make_cfg(*UMUP, *overrides))


def test_model_options_it_cannot_build_are_refused(make_cfg):
    """What the config check reaches only on a GPU (there check_kernels refuses first): the fused loss and fp8; and
    SP/µP's own multipliers on the model."""
    rule = umup()
    for options, match in ((dict(loss_impl="fused"), r"model.loss_impl=fused is not supported: .*chunked"),
                           (dict(attn_scale=0.1), r"model.attn_scale=0.1 is SP/µP's multiplier"),
                           (dict(branch_mult=0.5), r"model.branch_mult=0.5 is SP/µP's multiplier")):
        with pytest.raises(ValueError, match=match) as exc:
            rule.build_model(config(**options))
        one_line(exc)
    with pytest.raises(ValueError, match=r"precision=fp8 \(and fp8-emulated\) is not supported: .*Float8Linear") as exc:
        rule.check_run(config(), make_cfg(*UMUP, "precision=fp8"))
    one_line(exc)


def test_fsdp_shards_the_unit_scaled_blocks():
    from mugpt.core.unit_scaled import UnitScaledBlock
    from mugpt.training.distributed import block_classes

    assert UnitScaledBlock in block_classes()


@pytest.mark.slow  # a fresh interpreter importing torch; u-µP's refusals in-process: the tests above
def test_without_unit_scaling_sp_and_mup_run_and_umup_is_refused_in_one_line():
    """A fresh interpreter in which `import unit_scaling` fails: the project imports, SP and µP build, train a
    step and shard as before, and parametrization=umup is an ImportError naming the extra."""
    code = """
import importlib.util, sys
sys.modules["unit_scaling"] = None  # import unit_scaling raises ImportError
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (None if name.split(".")[0] == "unit_scaling"
                                                      else find_spec(name, package))
import torch
import mugpt.training.train, mugpt.training.module  # noqa: F401
from mugpt.training.distributed import block_classes
from mugpt.core.model import Block, GPTConfig
from mugpt.core.parametrization import get_parametrization
from mugpt.core.recipe import Recipe
assert block_classes() == {Block}
cfg = GPTConfig(vocab_size=64, block_size=8, width=32, n_layer=1, n_head=2)
for options in ({"name": "sp"}, {"name": "mup", "base_width": 32}):
    rule = get_parametrization(options)
    model = rule.build_model(cfg)
    x = torch.randint(0, 64, (2, 8))
    model(x, x)[1].backward()
    torch.optim.AdamW(rule.param_groups(model, 1e-3, 0.1)).step()
try:
    get_parametrization({"name": "umup"})
except ImportError as exc:
    print(exc)
assert "unit_scaling" not in sys.modules or sys.modules["unit_scaling"] is None
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ("parametrization=umup needs Graphcore's unit-scaling package: pip install "
                                  "'mugpt[umup]' (unit-scaling>=0.3.5)")


# ------------------------------------------------------------------------------------------ FSDP (torch)
def _fsdp_worker(rank: int, processes: int, port: int, out_dir: str) -> None:
    """The sharding trainer=fsdp sets up (the unit-scaled blocks as units, original parameters kept), on gloo."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from mugpt.training.distributed import block_classes

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)
    try:
        torch.manual_seed(0)
        rule = umup()
        fsdp = FSDP(rule.build_model(config(64)), use_orig_params=True, device_id=torch.device("cpu"),
                    auto_wrap_policy=ModuleWrapPolicy(block_classes()))
        groups = rule.param_groups(fsdp, lr=0.1, weight_decay=0.0)
        x, y = batch()
        shard = slice(4 * rank, 4 * rank + 4)
        loss = fsdp(x[shard], y[shard])[1]
        loss.backward()
        torch.optim.AdamW(groups, eps=1e-3).step()
        with FSDP.state_dict_type(fsdp, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=False)):
            state = fsdp.state_dict()
        torch.save({"state": state, "loss": float(loss), "lrs": {n: g["lr"] for g in groups for n in g["param_names"]},
                    "shapes": {n: tuple(q.shape) for n, q in fsdp.named_parameters()}}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_keeps_unit_scalings_learning_rates_and_step(tmp_path):
    """Sharded flat parameters have lost their tags: every parameter still gets its single-device u-µP lr, each
    rank's loss is the one-process loss on its half batch, and one sharded step (FSDP averages the ranks'
    gradients) equals one step on the mean of the two half-batch losses."""
    from test_distributed import _spawn

    _spawn(_fsdp_worker, tmp_path)
    torch.manual_seed(0)
    rule = umup()
    model = rule.build_model(config(64))
    groups = rule.param_groups(model, lr=0.1, weight_decay=0.0)
    x, y = batch()
    halves = [model(x[s], y[s])[1] for s in (slice(0, 4), slice(4, 8))]
    ((halves[0] + halves[1]) / 2).backward()
    torch.optim.AdamW(groups, eps=1e-3).step()
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert any(len(s) == 1 for n, s in saved["shapes"].items() if n.endswith("attn.qkv.weight"))
        assert saved["lrs"] == {n: g["lr"] for g in groups for n in g["param_names"]}
        assert saved["loss"] == pytest.approx(halves[rank].item(), rel=1e-5)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(saved["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
