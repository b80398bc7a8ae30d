import math

import pytest
import torch

from mugpt.core.model import GPT, GPTConfig


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=300, block_size=16, width=32, n_layer=2, n_head=4)
    return GPTConfig(**{**base, **kw})


def test_vocab_is_padded_to_a_multiple_of_64():
    assert GPTConfig(vocab_size=50257).padded_vocab_size == 50304
    assert GPTConfig(vocab_size=256).padded_vocab_size == 256
    assert GPTConfig(vocab_size=50257, pad_vocab_multiple=1).padded_vocab_size == 50257
    model = GPT(tiny())
    assert model.tok_emb.weight.shape == (320, 32)


def test_gpt2_init_stds():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, block_size=64, width=256, n_layer=4, n_head=4)
    model = GPT(cfg)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.02)
    resid = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert model.blocks[1].attn.proj.weight.std().item() == pytest.approx(resid, rel=0.03)
    assert model.blocks[1].mlp.proj.weight.std().item() == pytest.approx(resid, rel=0.03)
    assert torch.all(model.blocks[0].ln_1.weight == 1)
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert model.lm_head.weight is model.tok_emb.weight  # tied by default


def test_loss_at_init_is_log_vocab():
    """An untrained GPT-2 predicts nearly uniformly: loss ≈ ln(padded vocab)."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, block_size=64, width=128, n_layer=2, n_head=4)
    model = GPT(cfg).eval()
    x = torch.randint(0, 50257, (4, 64))
    y = torch.randint(0, 50257, (4, 64))
    _, loss = model(x, y)
    assert loss.item() == pytest.approx(math.log(cfg.padded_vocab_size), abs=0.05)


def test_hf_gpt2_parity():
    """Weights in the Hugging Face layout (Conv1D transposed) give HF's logits."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(vocab_size=1000, n_positions=32, n_embd=64, n_layer=3, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    model = GPT.from_hf_state_dict(hf.state_dict(), n_head=4).eval()
    assert model.config.width == 64 and model.config.n_layer == 3 and model.config.block_size == 32
    x = torch.randint(0, 1000, (2, 32))
    with torch.no_grad():
        expected = hf(x).logits
        logits, _ = model(x)
    assert logits.shape == (2, 32, 1024)  # padded to a multiple of 64
    torch.testing.assert_close(logits[..., :1000], expected, atol=1e-5, rtol=1e-5)


def test_post_norm_and_untied_variants_run_and_differ():
    torch.manual_seed(0)
    pre = GPT(tiny())
    torch.manual_seed(0)
    post = GPT(tiny(norm="post"))
    assert isinstance(post.ln_f, torch.nn.Identity)
    x = torch.randint(0, 300, (2, 16))
    assert not torch.allclose(pre(x)[0], post(x)[0])
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() == pre.num_params() + 320 * 32


def test_generate_never_samples_padding_and_respects_greedy():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    with torch.no_grad():
        model.tok_emb.weight[300:] = 10.0  # padding rows would win every argmax if not masked
    out = model.generate(torch.zeros(3, 1, dtype=torch.long), max_new_tokens=40, temperature=1.0, top_k=50)
    assert out.shape == (3, 41)
    assert int(out.max()) < 300
    greedy1 = model.generate(torch.zeros(1, 1, dtype=torch.long), 10, temperature=0)
    greedy2 = model.generate(torch.zeros(1, 1, dtype=torch.long), 10, temperature=0)
    assert torch.equal(greedy1, greedy2)


def test_activation_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    a = GPT(tiny())
    b = GPT(tiny(activation_checkpointing=True))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 300, (2, 16))
    for m in (a, b):
        m(x, x)[1].backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(width=30, n_head=4), "model.width=30 is not divisible by model.n_head=4"),
        (dict(n_layer=0), "model.n_layer must be a positive integer"),
        (dict(norm="mid"), "model.norm"),
    ],
)
def test_bad_model_config_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_sequence_longer_than_block_size_is_rejected():
    with pytest.raises(ValueError, match="model.block_size=16"):
        GPT(tiny())(torch.zeros(1, 17, dtype=torch.long))


def test_flops_per_token_formula():
    cfg = tiny()
    model = GPT(cfg)
    n = model.num_params() - 16 * 32
    assert model.flops_per_token() == 6 * n + 12 * 2 * 4 * 8 * 16
