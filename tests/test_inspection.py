"""Trained runs, loaded back: sampling (scripts/sample.py) and loss landscapes (scripts/loss_landscape.py).

Two tiny byte-level checkpoints are trained once for the module, one SP and one µP at twice its base width
(so µP's readout multiplier, 1/2, is really there)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from conftest import TINY, compose_config, compose_script
from mugpt.studies.inspection import encode_prompt, evaluate_loss, load_run, sample_ids, sample_text, validation_batches
from mugpt.studies.landscape import (
    check_options,
    compute_landscape,
    filter_normalize,
    random_direction,
    trainable_weights,
)
from mugpt.training.train import train

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
VAL_BATCHES = 2  # TINY's data.val_batches: the batches the logged validation loss was measured on


def refusal(function, cfg: DictConfig) -> str:
    """The one-line `error: ...` a script exits with."""
    with pytest.raises(SystemExit) as exc:
        function(cfg)
    message = exc.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_tiny(tmp_path_factory, cache_dir, name: str, *overrides: str) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp(name) / "run"
    cfg = compose_config([*TINY, "trainer.max_steps=20", "eval_every=20", "optim.lr=1e-2", *overrides], out, cache_dir)
    summary = train(cfg)
    assert summary["status"] == "completed"
    return out, summary


@pytest.fixture(scope="module")
def sp_run(tmp_path_factory, cache_dir):
    return train_tiny(tmp_path_factory, cache_dir, "sp")


@pytest.fixture(scope="module")
def mup_run(tmp_path_factory, cache_dir):
    # tiny is width 64: twice the base width, so the readout divides the logits by 2
    return train_tiny(tmp_path_factory, cache_dir, "mup", "parametrization=mup", "parametrization.base_width=32")


# ----------------------------------------------------------------------------------------- loading
def test_missing_or_empty_paths_are_named(tmp_path):
    with pytest.raises(ValueError, match=f"ckpt={tmp_path / 'nope'}: no such file"):
        load_run(tmp_path / "nope", "cpu")
    with pytest.raises(ValueError, match=f"ckpt={tmp_path}: a run directory without a checkpoint"):
        load_run(tmp_path, "cpu")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt: not a readable checkpoint"):
        load_run(junk, "cpu")


@pytest.mark.parametrize("which", ["sp_run", "mup_run"])
def test_loaded_model_reproduces_the_logged_validation_loss(request, which):
    run_dir, summary = request.getfixturevalue(which)
    # a run directory and its .ckpt file load the same run
    run = load_run(run_dir / "checkpoints" / "last.ckpt", "cpu")
    assert run.run_dir == run_dir and run.step == 20 and run.tokenizer.name == "byte"
    assert run.hparams["parametrization"]["name"] == ("mup" if which == "mup_run" else "sp")
    loss = evaluate_loss(run.model, validation_batches(run, VAL_BATCHES))
    assert loss == pytest.approx(summary["val_loss"], rel=1e-5)
    assert run.logged_val_loss() == pytest.approx(summary["val_loss"])


def test_mup_readout_multiplier_is_in_the_sampled_logits(mup_run):
    """logits = (output_mult / width_mult) · h Wᵀ with width_mult = 64/32 = 2 and output_mult = output_alpha /
    base_width = 128/32 = 4 (µP's defaults), in the forward generate() calls."""
    run = load_run(mup_run[0], "cpu")
    model = run.model
    assert model.lm_head.width_mult() == 2.0 and model.lm_head.output_mult == 4.0
    idx = torch.tensor([run.tokenizer.encode("ROMEO:\nWhat light")])
    with torch.no_grad():
        h = (model.tok_emb(idx) + model.pos_emb(torch.arange(idx.size(1)))) * model.config.embed_mult
        for block in model.blocks:
            h = block(h)
        unscaled = model.ln_f(h) @ model.tok_emb.weight.T
        logits, _ = model(idx)
    assert torch.allclose(logits, unscaled * (4.0 / 2.0), atol=1e-5)
    assert not torch.allclose(logits, unscaled, atol=1e-2)  # the multiplier matters at this width
    # generate() samples from exactly these logits: greedy picks their argmax, and temperature 1 draws
    # with the probabilities softmax(logits), not softmax(unscaled)
    greedy = sample_ids(model, idx[0].tolist(), 1, temperature=0.0)
    assert greedy[0, -1].item() == (unscaled[0, -1, :256] / 2).argmax().item()


# ---------------------------------------------------------------------------------------- sampling
def test_sample_counts_and_greedy_decoding(sp_run):
    run = load_run(sp_run[0], "cpu")
    prompt = run.tokenizer.encode("To be, or not")
    out = sample_ids(run.model, prompt, 25, temperature=0.8, top_k=20, seed=3, num_samples=3)
    assert out.shape == (3, len(prompt) + 25) and out[:, : len(prompt)].tolist() == [prompt] * 3
    assert int(out.max()) < 256
    # top_k=1 is greedy decoding, whatever the temperature: compare with argmax decoding done by hand
    idx = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(25):
            logits, _ = run.model(idx[:, -run.model.config.block_size:])
            idx = torch.cat([idx, logits[:, -1, :256].argmax(-1, keepdim=True)], dim=1)
    assert sample_ids(run.model, prompt, 25, temperature=0.8, top_k=1, seed=5).tolist() == idx.tolist()
    assert sample_ids(run.model, prompt, 25, temperature=0.0).tolist() == idx.tolist()
    # an empty prompt starts from a newline (bytes have no <|endoftext|>), which is not part of the text
    assert encode_prompt(run.tokenizer, "") == [ord("\n")]
    from_newline = sample_ids(run.model, [ord("\n")], 10, temperature=0.0)[0, 1:].tolist()
    assert sample_text(run, "", 10, temperature=0.0) == [run.tokenizer.decode(from_newline)]


def test_sample_script_is_deterministic_for_a_seed(sp_run, tmp_path, capsys):
    from mugpt.studies import inspection

    args = [f"ckpt={sp_run[0]}", 'prompt="ROMEO: a, b = c"', "max_new_tokens=40", "temperature=0.8", "top_k=200",
            "device=cpu"]
    outputs = []
    for i, seed in enumerate((1, 1, 2)):
        inspection.sample_command(compose_script("sample", *args, f"seed={seed}", f"output_dir={tmp_path / str(i)}"))
        outputs.append(capsys.readouterr().out)
        assert (tmp_path / str(i) / "samples.txt").read_text() == outputs[-1]  # the run dir keeps what was printed
    assert outputs[0] == outputs[1] != outputs[2]
    assert outputs[0].startswith("ROMEO: a, b = c")  # quoted for Hydra, the prompt arrives verbatim
    inspection.sample_command(compose_script("sample", *args, "num_samples=2", "top_k=null",
                                             f"output_dir={tmp_path / 'two'}"))
    assert capsys.readouterr().out.count("---------- sample") == 2


@pytest.mark.parametrize("override, prompt", [
    ('prompt="To be, or not"', "To be, or not"),
    ("prompt='x = 1, \"y\"'", 'x = 1, "y"'),
    ('prompt="It\'s [a] {b}"', "It's [a] {b}"),
    ('prompt="  indented"', "  indented"),
    ('prompt="1603"', "1603"),
    ('prompt="\\${HOME}"', "${HOME}"),
    ("prompt=ROMEO:", "ROMEO:"),
    ("prompt=What light", "What light"),
    ("prompt=", ""),
])
def test_sample_prompts_quoted_for_hydra_arrive_verbatim(override, prompt):
    cfg = compose_script("sample", "ckpt=run", override)
    from mugpt.studies.inspection import option

    assert option(cfg, "prompt", str) == prompt


def test_sample_script_rejects_bad_options_in_one_line_before_loading(tmp_path, monkeypatch):
    from mugpt.studies import inspection

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for a refused option")

    monkeypatch.setattr(inspection, "load_run", no_loading)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")  # a path that passes; never read
    run = f"ckpt={tmp_path / 'run'}"
    for overrides, message in [([], "error: ckpt is required: ckpt=RUN_DIR"),
                               ([f"ckpt={tmp_path / 'none'}"], f"error: ckpt={tmp_path / 'none'}: no such file"),
                               ([f"ckpt={tmp_path}"], "a run directory without a checkpoint"),
                               ([run, "temperature=-1"], "error: temperature=-1.0: must be >= 0"),
                               ([run, "top_k=0"], "error: top_k=0: must be a positive integer or null"),
                               ([run, "top_k=many"], "error: top_k=many: must be an integer or null"),
                               ([run, "top_k=true"], "error: top_k=True: must be an integer or null"),
                               ([run, "max_new_tokens=1.5"], "error: max_new_tokens=1.5: must be an integer"),
                               ([run, "device=tpu"], "error: device=tpu: not a device"),
                               ([run, "prompt=1603"], "error: prompt=1603: must be a string; Hydra read it as int"),
                               ([run, 'prompt="${oops}"'], "error: prompt: Interpolation key 'oops' not found")]:
        assert message in refusal(inspection.sample_command, compose_script("sample", *overrides)), overrides


@pytest.mark.slow
def test_sample_command_line(sp_run, tmp_path):
    """As a user runs it: Hydra parses the quoted prompt, hydra.run.dir is honoured, stdout holds only the sample."""
    script, env = str(SCRIPTS / "sample.py"), {**os.environ, "HYDRA_FULL_ERROR": "0"}
    out = tmp_path / "sampled"
    done = subprocess.run([sys.executable, script, f"ckpt={sp_run[0]}", 'prompt="To be, or not"', "max_new_tokens=20",
                           "device=cpu", f"hydra.run.dir={out}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # stdout is the sample alone: a log line there would be missing from samples.txt
    assert done.stdout.startswith("To be, or not") and done.stdout == (out / "samples.txt").read_text()
    assert done.stderr.startswith("loaded ")
    assert (out / ".hydra" / "overrides.yaml").is_file() and not (tmp_path / "outputs").exists()
    done = subprocess.run([sys.executable, script, "prompt=hi", f"hydra.run.dir={tmp_path / 'refused'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: ckpt is required") and done.stderr.count("\n") == 1, done.stderr


# ------------------------------------------------------------------------------------- landscapes
def test_filter_normalisation_gives_each_row_the_weights_row_norm():
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 2) * torch.arange(1.0, 6.0).view(5, 1, 1)  # rows of different scale
    weight[2] = 0.0
    d = filter_normalize(torch.randn(5, 3, 2), weight)
    assert d.shape == weight.shape
    assert torch.allclose(d.flatten(1).norm(dim=1), weight.flatten(1).norm(dim=1), atol=1e-5)
    assert torch.count_nonzero(d[2]) == 0  # a zero row of the weights gets no direction
    assert torch.count_nonzero(filter_normalize(torch.randn(7), torch.randn(7))) == 0  # biases, norms: zero
    raw = torch.randn(4, 6)
    assert torch.allclose(filter_normalize(raw, torch.ones(4, 6)) / raw, (6 ** 0.5 / raw.norm(dim=1)).view(4, 1)
                          .expand(4, 6))  # a rescaling per row: the random direction within each row is kept


def test_random_directions_cover_each_weight_once(sp_run):
    model = load_run(sp_run[0], "cpu").model
    weights = trainable_weights(model)
    assert "lm_head.weight" not in weights  # tied to tok_emb.weight: perturbed once, through the embedding
    a = random_direction(weights, torch.Generator().manual_seed(0))
    b = random_direction(weights, torch.Generator().manual_seed(0))
    assert all(torch.equal(a[n], b[n]) for n in weights)
    for name, w in weights.items():
        if w.dim() >= 2:
            assert torch.allclose(a[name].norm(dim=1), w.detach().norm(dim=1), rtol=1e-4), name
        else:
            assert torch.count_nonzero(a[name]) == 0, name


def test_landscape_is_centred_on_the_trained_loss(sp_run):
    run = load_run(sp_run[0], "cpu")
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    result = compute_landscape(run, resolution=5, span=1.0, batches=VAL_BATCHES, seed=0)
    c = result.center
    val_loss = evaluate_loss(run.model, validation_batches(run, VAL_BATCHES))
    assert result.alphas.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert result.loss_at_zero == pytest.approx(val_loss, rel=1e-6)
    assert result.loss_1d[c] == pytest.approx(val_loss, rel=1e-6)
    assert result.loss_2d[c, c] == pytest.approx(val_loss, rel=1e-6)
    assert result.loss_at_zero == pytest.approx(sp_run[1]["val_loss"], rel=1e-5)  # the run's own val loss
    # the 1-D direction is the plane's first axis: the 1-D curve is the plane's beta = 0 line
    assert result.loss_1d.tolist() == pytest.approx(result.loss_2d[:, c].tolist(), rel=1e-6)
    # a trained model sits in a basin: a whole filter-norm step away costs loss on both sides
    assert result.loss_1d[0] > result.loss_1d[c] + 0.02 and result.loss_1d[-1] > result.loss_1d[c] + 0.02
    assert result.loss_2d.max() > result.loss_2d[c, c]
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the weights are put back


def test_landscape_options_are_checked_before_work():
    with pytest.raises(ValueError, match="resolution=4: must be an odd integer"):
        check_options(4, 1.0, 2)
    with pytest.raises(ValueError, match="span=0"):
        check_options(5, 0, 2)
    with pytest.raises(ValueError, match="batches=0"):
        check_options(5, 1.0, 0)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_landscape_script_writes_csvs_and_plots(sp_run, mup_run, tmp_path, capsys):
    from mugpt.studies.inspection import landscape_command

    one, two = tmp_path / "one", tmp_path / "two"
    common = ["resolution=5", "span=1.0", f"batches={VAL_BATCHES}", "seed=0", "device=cpu"]
    landscape_command(compose_script("loss_landscape", f"ckpt={sp_run[0]}", f"out={one}", *common))
    columns, rows = read_csv(one / "landscape_1d.csv")
    assert columns == ["alpha", "loss"] and len(rows) == 5
    assert float(rows[2]["alpha"]) == 0.0 and float(rows[2]["loss"]) == pytest.approx(sp_run[1]["val_loss"], rel=1e-5)
    columns, rows = read_csv(one / "landscape_2d.csv")
    assert columns == ["alpha", "beta", "loss"] and len(rows) == 25
    # µP beside SP: a `run` column, each run's rows, both runs in the plots
    landscape_command(compose_script("loss_landscape", f"ckpt={sp_run[0]}", f"ckpt2={mup_run[0]}", f"out={two}",
                                     *common))
    printed = capsys.readouterr().out
    assert "loss at 0" in printed and "mup, base 32, width 64" in printed
    columns, rows = read_csv(two / "landscape_2d.csv")
    assert columns == ["run", "alpha", "beta", "loss"] and len(rows) == 2 * 25
    columns, rows = read_csv(two / "landscape_1d.csv")
    assert columns == ["run", "alpha", "loss"] and len(rows) == 2 * 5
    centre = {r["run"]: float(r["loss"]) for r in rows if float(r["alpha"]) == 0.0}
    assert len(centre) == 2 and [*centre.values()] == pytest.approx([sp_run[1]["val_loss"], mup_run[1]["val_loss"]],
                                                                     rel=1e-5)
    for folder in (one, two):
        assert_png(folder / "landscape_1d.png")
        assert_png(folder / "landscape_2d.png")


def test_landscape_script_rejects_bad_options_in_one_line(sp_run, tmp_path):
    from mugpt.studies.inspection import landscape_command

    run = f"ckpt={sp_run[0]}"
    for overrides, message in [([], "error: ckpt is required"),
                               ([run, "resolution=6"], "error: resolution=6: must be an odd integer"),
                               ([run, "span=-1"], "error: span=-1.0: must be a positive number"),
                               ([run, "batches=x"], "error: batches=x: must be an integer"),
                               ([run, "threads=0"], "error: threads=0: must be a positive integer or null"),
                               ([run, f"ckpt2={tmp_path / 'none'}"], f"error: ckpt2={tmp_path / 'none'}: no such"),
                               ([run, "device=tpu"], "error: device=tpu: not a device")]:
        assert message in refusal(landscape_command, compose_script("loss_landscape", *overrides)), overrides
