"""model.loss_impl: the chunked loss equals the full one (loss and every gradient, SP and µP, tied and untied),
the fused kernel's µP contract, and the GPU-only options refused in one line where they cannot run."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_if
from mugpt.core.model import GPTConfig
from mugpt.core.parametrization import GPT2_INIT, get_parametrization
from mugpt.training.train import train

V = 300  # not a multiple of 64: padded to 320, the padding columns must not change the loss either


def build(parametrization: str, tie: bool, loss_impl: str, **kw):
    torch.manual_seed(0)
    options = {"name": parametrization,
               **({"base_width": 32, **GPT2_INIT, "output_mult": 2.0} if parametrization == "mup" else {})}
    config = GPTConfig(**{"vocab_size": V, "block_size": 16, "width": 64, "n_layer": 2, "n_head": 4,
                          "tie_embeddings": tie, "loss_impl": loss_impl, **kw})
    return get_parametrization(options).build_model(config)


def batch():
    x = torch.randint(0, V, (3, 17), generator=torch.Generator().manual_seed(1))
    y = x[:, 1:].clone()
    y[0, :3] = -1  # ignored positions count in neither the sum nor the mean
    return x[:, :-1], y


@pytest.mark.parametrize("parametrization", ["sp", "mup"])
@pytest.mark.parametrize("tie", [True, False])
def test_chunked_loss_and_gradients_equal_the_full_loss(parametrization, tie):
    x, y = batch()
    results = {}
    for impl in ("full", "chunked"):
        model = build(parametrization, tie, impl, loss_chunk=7)  # 48 positions in chunks of 7: a ragged last one
        logits, loss = model(x, y)
        assert (logits is None) == (impl == "chunked")  # chunked never materialises all logits
        loss.backward()
        results[impl] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (full_loss, full_grads), (chunked_loss, chunked_grads) = results["full"], results["chunked"]
    torch.testing.assert_close(chunked_loss, full_loss, rtol=1e-6, atol=1e-6)
    assert full_loss.item() == pytest.approx(math.log(V), abs=0.3)  # a real loss near ln V at init, not 0
    for name, grad in full_grads.items():
        assert grad.abs().sum() > 0 or name.endswith("bias"), name
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_generation_and_validation_are_unchanged_by_the_loss():
    full, chunked = build("mup", True, "full"), build("mup", True, "chunked")
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(full.generate(idx, 5, temperature=0), chunked.generate(idx, 5, temperature=0))
    x, y = batch()
    with torch.no_grad():
        assert chunked(x, y)[1].item() == pytest.approx(full(x, y)[1].item(), abs=1e-6)


@pytest.mark.parametrize("tie", [True, False])
def test_readout_input_scale_is_the_multiplier_a_fused_kernel_must_apply(tie):
    """The fused kernel takes (input, weight), not the module: µP's readout says what to put on the input."""
    model = build("mup", tie, "full", width=128)  # m = 128/32 = 4, output_mult 2
    readout = model.lm_head
    assert readout.input_scale() == pytest.approx(2.0 / 4)
    h = torch.randn(5, 128)
    torch.testing.assert_close(readout(h), F.linear(h * readout.input_scale(), readout.weight, readout.bias))


def test_a_run_with_the_chunked_loss_trains_like_the_full_one(make_cfg, tmp_path):
    args = ["trainer.max_steps=8", "eval_every=8", "parametrization=mup", "parametrization.base_width=32"]
    full = train(make_cfg(*args, f"output_dir={tmp_path / 'full'}"))
    chunked = train(make_cfg(*args, "model.loss_impl=chunked", "model.loss_chunk=50", f"output_dir={tmp_path / 'c'}"))
    assert chunked["val_loss"] == pytest.approx(full["val_loss"], abs=1e-4)
    assert chunked["logits_memory_mb"] < full["logits_memory_mb"]  # 50 positions' logits instead of 8 x 32
    assert full["logits_memory_mb"] == pytest.approx(2 * 8 * 32 * 256 * 4 / 2**20)


@pytest.mark.parametrize("option, message", [
    ("model.loss_impl=fused", "model.loss_impl=fused runs liger-kernel's Triton kernel on a CUDA GPU"),
    ("precision=fp8", "precision=fp8: FP8 matmuls need an NVIDIA GPU of compute capability 8.9"),
    ("model.loss_impl=sparse", "model.loss_impl must be one of full, chunked, fused"),
])
def test_gpu_only_options_are_refused_here_in_one_line(make_cfg, option, message):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the options may run")
    from mugpt.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(make_cfg(option))


def test_float8_conversion_swaps_the_block_linears_and_keeps_the_parameters():
    """What precision=fp8 does to the model, checked on the CPU (its matmuls need a GPU): the blocks' linear
    layers become Float8Linear with the same parameters under the same names, the readout and the embeddings
    stay, and µP's learning rates per parameter are those of the unconverted model."""
    pytest.importorskip("torchao.float8")
    from mugpt.core.recipe import Recipe
    from mugpt.training.module import convert_linears_to_float8

    recipe = Recipe.from_config(dict(vocab_size=V, block_size=16, width=64, n_layer=2, n_head=4),
                                {"name": "mup", "base_width": 32}, {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1})
    model = recipe.build_model()
    before = {n: (p.data_ptr(), recipe.rule.lr_multiplier(model.infshapes[n], "adam")) for n, p in
              model.named_parameters()}
    convert_linears_to_float8(model)
    converted = {n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"}
    assert converted == {f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    assert type(model.lm_head).__name__ == "SharedReadout"
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == {n: ptr for n, (ptr, _) in before.items()}
    lrs = {n: g["lr"] for g in recipe.param_groups(model) for n in g["param_names"]}
    assert lrs == {n: pytest.approx(1e-2 * mult) for n, (_, mult) in before.items()}


def fp8_round(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t through dtype with one scale for the whole tensor (its absolute max onto the format's largest value)."""
    largest = torch.finfo(dtype).max
    scale = (largest / t.abs().max().double().clamp(min=1e-12)).float()
    return (t * scale).clamp(-largest, largest).to(dtype).float() / scale


def test_emulated_float8_rounds_like_fp8_forward_and_backward():
    """precision=fp8-emulated on the CPU: a block's linear layer computes exactly the fp32 matmuls of its inputs and
    weights rounded to E4M3 and of its output gradient rounded to E5M2, each with one scale per tensor: the numerics
    of precision=fp8's kernels, bit for bit in fp32."""
    pytest.importorskip("torchao.float8")
    from mugpt.training.module import convert_linears_to_float8

    model = build("mup", True, "full")
    convert_linears_to_float8(model, emulate=True)
    fc = model.blocks[0].mlp.fc
    x = torch.randn(3, 16, 64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    grad_out = torch.randn(3, 16, 256, generator=torch.Generator().manual_seed(3))
    y = fc(x)
    y.backward(grad_out)
    e4m3, e5m2 = torch.float8_e4m3fn, torch.float8_e5m2
    x_, w_, g_ = fp8_round(x.detach(), e4m3), fp8_round(fc.weight.detach(), e4m3), fp8_round(grad_out, e5m2)
    torch.testing.assert_close(y, F.linear(x_, w_, fc.bias), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, g_ @ w_, rtol=0, atol=0)
    torch.testing.assert_close(fc.weight.grad, g_.reshape(-1, 256).T @ x_.reshape(-1, 64), rtol=0, atol=0)
    assert (y - F.linear(x.detach(), fc.weight, fc.bias)).abs().max() > 1e-3  # the rounding is really there


def test_a_run_with_emulated_float8_trains_like_bf16(make_cfg, tmp_path):
    """The trainer accepts precision=fp8-emulated on the CPU; 8 µP steps end near, but not at, bf16's loss. Step 8
    is not an evaluation step (eval_every=5), so the last validation runs in Lightning's validate() after fit,
    which float8's tensors cannot run under torch.inference_mode (they must get no_grad)."""
    pytest.importorskip("torchao.float8")
    args = ["trainer.max_steps=8", "eval_every=5", "parametrization=mup", "parametrization.base_width=32"]
    bf16 = train(make_cfg(*args, "precision=bf16-mixed", f"output_dir={tmp_path / 'bf16'}"))
    fp8 = train(make_cfg(*args, "precision=fp8-emulated", f"output_dir={tmp_path / 'fp8'}"))
    assert fp8["val_loss"] == pytest.approx(bf16["val_loss"], abs=0.01)  # measured: 3.5283 vs 3.5271
    assert fp8["val_loss"] != bf16["val_loss"] and fp8["status"] == "completed" and fp8["steps"] == 8


@run_if(cuda=True, reason="liger-kernel's fused cross-entropy is a Triton kernel")
@pytest.mark.parametrize("parametrization", ["sp", "mup"])
@pytest.mark.parametrize("tie", [True, False])
def test_fused_loss_and_gradients_equal_the_full_loss_on_a_gpu(parametrization, tie):
    pytest.importorskip("liger_kernel")
    x, y = (t.cuda() for t in batch())
    results = {}
    for impl in ("full", "fused"):
        model = build(parametrization, tie, impl).cuda()
        _, loss = model(x, y)
        loss.backward()
        results[impl] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(results["fused"][0], results["full"][0], rtol=1e-4, atol=1e-4)
    for name, grad in results["full"][1].items():
        torch.testing.assert_close(results["fused"][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)
