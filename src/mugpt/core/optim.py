"""Optimizers over the parameter groups a parametrization yields (the schedules: mugpt.core.schedule).

Each group carries its own `lr` (the base learning rate times the parametrization's multiplier) and
`weight_decay`; schedules multiply every group by the same factor, so µP's per-group ratios survive.

The optimizer zoo (optim=NAME, one yaml each in conf/optim/; OPTIMIZERS lists what is declared). Each one
takes the groups as given and is declared once, with the `optimizer` decorator on its factory, as an OptimizerSpec
in OPTIMIZERS: its µP family ("adam", "sgd" or "muon": the learning-rate rule
`MaximalUpdateParametrization.lr_multiplier` applies to it), its typed config (mugpt.config), its title, whether its
decay is decoupled, whether it needs whole matrices, and its donor learning-rate grid. Everything else that lists
optimizers (the config schemas, FSDP's refusal, the comparisons' tables and grids) reads OPTIMIZERS. What each
optimizer does on top of that (and where that fights µP) is written next to its factory below. Optimizers read
each group's `kind` (hidden, embedding, vector, readout) and `parametrization`, never parameter names or mup's
`p.infshape`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from mugpt import config as C
from mugpt.core.schedule import BATCH_LR_RULES

log = logging.getLogger(__name__)

def check_transfer_rules(cfg: Any) -> None:
    """The options that carry a donor's hyperparameters to another batch or run length."""
    fraction = cfg.get("warmup_fraction")
    if fraction is not None and not 0.0 <= fraction < 1.0:
        raise ValueError(f"optim.warmup_fraction must be in [0, 1) (a share of trainer.max_steps), got {fraction}")
    rule = cfg.get("batch_lr_rule", "none")
    if rule not in BATCH_LR_RULES:
        raise ValueError(f"optim.batch_lr_rule: unknown rule '{rule}' (choose one of {', '.join(BATCH_LR_RULES)})")
    base = cfg.get("base_batch")
    if rule != "none" and (not isinstance(base, int) or base <= 0):
        raise ValueError(f"optim.batch_lr_rule={rule} needs optim.base_batch, the donor's global batch in sequences "
                         f"(a positive integer), got {base!r}")
    timescale = cfg.get("weight_decay_timescale")
    if timescale is not None:
        if timescale <= 0:
            raise ValueError(f"optim.weight_decay_timescale must be positive (a fraction of the run), got {timescale}")
        decoupled = [name for name, spec in OPTIMIZERS.items() if spec.decoupled_decay]
        if cfg.name not in decoupled:
            raise ValueError(f"optim.weight_decay_timescale: optim={cfg.name} has no single decoupled decay whose time "
                             f"scale is 1/(lr·wd) (only {', '.join(decoupled)}); set optim.weight_decay instead")


# --------------------------------------------------------------------------------------- helpers
def _foreach(on_cuda: bool, cfg: Any) -> dict:
    """fused kernels on CUDA where torch has them (cfg.fused: auto/true/false), the foreach path otherwise."""
    fused = cfg.get("fused", "auto")
    use_fused = on_cuda if fused == "auto" else bool(fused)
    return {"fused": use_fused or None, "foreach": None if use_fused else True}


def with_eps(groups: list[dict], eps: float) -> list[dict]:
    """Each group with its own ε: the optimizer's ε times the parametrization's `eps_mult` for the group (µP
    scales ε as its gradients scale; 1 under SP). For optimizers whose ε sits beside √v (Adam, Adagrad, RMSprop)."""
    return [{**g, "eps": eps * g.get("eps_mult", 1.0)} for g in groups]


def _under_mup(groups: list[dict]) -> bool:
    """Were these groups made by a parametrization that follows µP's family rules (per-width learning rates that
    some optimizer options would undo)? Its declaration says; an unknown name is taken as not."""
    from mugpt.core.parametrization import PARAMETRIZATIONS  # noqa: PLC0415

    names = {g.get("parametrization") for g in groups}
    return any(PARAMETRIZATIONS[n].follows_mup_family_rules for n in names if n in PARAMETRIZATIONS)


# ------------------------------------------------------------------------------------ the zoo
Factory = Callable[[list[dict], Any, bool], Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer of the zoo, declared once.

    name: optim.name (conf/optim/NAME.yaml, which starts from `/schema_optim_NAME@_here_`).
    factory: (groups, optim config, on_cuda) -> the torch optimizer.
    mup_family: the µP family whose learning-rate rule applies to it ("adam": entrywise-normalised steps; "sgd";
        "muon": orthogonalised hidden steps), or a function of the optim config giving it, for an optimizer whose
        options change what its step is.
    schema: its typed config (a dataclass extending mugpt.config.OptimConfig), which Hydra checks when it composes.
    title: how tables and figures name it.
    decoupled_decay: its decay is w ← w - lr·wd·w, whose time scale is 1/(lr·wd) (optim.weight_decay_timescale).
    needs_whole_matrices: why it cannot step FSDP's flat 1-D shards (what it does with whole matrices), or None.
    lr_log2_grid: the donor's log2 learning-rate grid in a transfer experiment (centred on its best lr in the
        time-to-target comparison, wide enough for µP's defaults).
    sweep_overrides: training overrides every sweep of it adds (Muon's AdamW part following the swept lr)."""

    name: str
    factory: Factory
    mup_family: str | Callable[[Any], str]
    schema: type
    title: str
    decoupled_decay: bool = False
    needs_whole_matrices: str | None = None
    lr_log2_grid: range = range(-11, -3)
    sweep_overrides: tuple[str, ...] = ()


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Enter an optimizer as optim.name=spec.name (at import, or at run time for one defined outside the project)."""
    OPTIMIZERS[spec.name] = spec
    return spec


def optimizer(name: str, mup_family: str | Callable[[Any], str], **declaration: Any) -> Callable[[Factory], Factory]:
    """Register a factory as optim.name=`name` with the rest of its declaration (OptimizerSpec's fields). A new
    optimizer is this decorator, its schema in mugpt.config and a conf/optim/ file."""

    def register(factory: Factory) -> Factory:
        register_optimizer(OptimizerSpec(name, factory, mup_family, **declaration))
        return factory

    return register


def titles() -> dict[str, str]:
    """Every registered optimizer's title by name, in declaration order: what tables and figures call it."""
    return {name: spec.title for name, spec in OPTIMIZERS.items()}


def lr_log2_grids() -> dict[str, tuple[list[str], range]]:
    """Every registered optimizer's transfer sweep: (training overrides, the donor's log2 lr grid)."""
    return {name: ([f"optim={name}", *spec.sweep_overrides], spec.lr_log2_grid) for name, spec in OPTIMIZERS.items()}


def mup_family(name: str, options: Any = None) -> str:
    """The µP family of optim.name=`name` with the optim config `options` (its defaults when None; one-line error
    for an unknown optimizer)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name: unknown optimizer '{name}' (choose one of {', '.join(OPTIMIZERS)})")
    family = OPTIMIZERS[name].mup_family
    return family(options or {}) if callable(family) else family


@optimizer("adamw", mup_family="adam", schema=C.AdamWConfig, title="AdamW", decoupled_decay=True)
def _adamw(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    return torch.optim.AdamW(with_eps(groups, cfg.eps), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             **_foreach(on_cuda, cfg))


@optimizer("adam", mup_family="adam", schema=C.AdamConfig, title="Adam")
def _adam(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    # Coupled L2: weight_decay·w is added to the gradient *before* Adam divides by sqrt(v), so a weight with
    # large gradients is hardly decayed and one with tiny gradients (rare tokens) is decayed by ~lr per step.
    # AdamW decouples the two (w ← w - lr·wd·w). µP's wd/lr_mult rule keeps lr·wd fixed, which is exact only
    # for decoupled decay: under µP there is no width-transfer rule for this L2 term (hidden gradients shrink
    # like 1/m while hidden weights shrink like 1/sqrt(m)).
    return torch.optim.Adam(with_eps(groups, cfg.eps), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            **_foreach(on_cuda, cfg))


@optimizer("sgd", mup_family="sgd", schema=C.SGDConfig, title="SGD", lr_log2_grid=range(-6, 2))
def _sgd(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    # µP: mup's MuSGD rules (lr_multiplier: hidden lr / (fan_in mult / fan_out mult), vector-like lr·m,
    # scalars lr). SGD's decay is L2, but for SGD that is the same as decoupled decay up to momentum, so
    # µP's wd/lr_mult rule holds.
    if cfg.nesterov and cfg.momentum <= 0:
        raise ValueError(f"optim.nesterov=true needs optim.momentum > 0, got {cfg.momentum}")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, dampening=0.0, nesterov=bool(cfg.nesterov),
                           **_foreach(on_cuda, cfg))


@optimizer("adagrad", mup_family="adam", schema=C.AdagradConfig, title="AdaGrad", lr_log2_grid=range(-10, -2))
def _adagrad(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    # Entrywise g/sqrt(sum g²): Adam-like, so hidden lr/m (mup's docs say so; Tensor Programs V covers
    # Adam). Theory is silent on eps: it must stay small against hidden gradients, which shrink like 1/m,
    # or Adagrad turns SGD-like at large width (the same caveat as Adam's eps). Decay is coupled L2 (see adam).
    return torch.optim.Adagrad(with_eps(groups, cfg.eps), lr=cfg.lr, eps=cfg.eps,
                               initial_accumulator_value=cfg.initial_accumulator_value, foreach=True)


@optimizer("rmsprop", mup_family="adam", schema=C.RMSpropConfig, title="RMSProp", lr_log2_grid=range(-13, -5))
def _rmsprop(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    # Adam without bias correction (and with optional heavy-ball momentum): Adam-like, hidden lr/m; the same
    # eps caveat as adagrad. Decay is coupled L2 (see adam).
    return torch.optim.RMSprop(with_eps(groups, cfg.eps), lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps,
                               momentum=cfg.momentum, centered=bool(cfg.centered), foreach=True)


@optimizer("adafactor", mup_family="adam", schema=C.AdafactorConfig, title="Adafactor", decoupled_decay=True,
           needs_whole_matrices="factors the second moment of whole weight matrices")
def _adafactor(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    # torch's Adafactor steps a tensor W by  max(eps2, RMS(W)) · min(lr, 1/sqrt(t)) · u / max(1, RMS(u)/d),
    # u = g / sqrt(factored second moment). It has no switch for the RMS(W) factor ("relative step"), but
    # eps2 is its floor: with eps2 = 1 the factor is 1 for every tensor with RMS below 1 (all of this GPT's
    # weights; LayerNorm gains start at exactly 1), so the group's lr is an absolute step as in Adam, and
    # µP's Adam rule (hidden lr/m) applies. With the relative step on, a µP hidden weight (RMS ∝ m^-1/2) would
    # step by lr/m · m^-1/2: its features stop learning as width grows, so that combination is refused.
    # What stays: the update clip (RMS(u)/d is a per-tensor O(1) factor, the same at every width) and the
    # cap min(lr, 1/sqrt(t)), which binds first on the groups with the largest lr and bends µP's ratios once
    # lr > 1/sqrt(step): keep lr·sqrt(max_steps) ≤ 1. Decay is decoupled (w ← w - lr·wd·w).
    relative = bool(cfg.relative_step)
    if relative and _under_mup(groups):
        raise ValueError("optim.relative_step=true scales each step by the weight's RMS (∝ width^-1/2 for µP hidden "
                         "weights), which breaks µP's learning-rate rule: use optim.relative_step=false with "
                         "parametrization=mup")
    eps2 = cfg.eps2 if relative else 1.0
    return torch.optim.Adafactor(groups, lr=cfg.lr, beta2_decay=cfg.beta2_decay, eps=(None, eps2), d=cfg.clip_threshold,
                                 foreach=True)


@optimizer("adam_atan2", mup_family="adam", schema=C.AdamAtan2Config, title="Adam-atan2", decoupled_decay=True)
def _adam_atan2(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    # Adam with atan2(m̂, b·sqrt(v̂)) in place of m̂ / (sqrt(v̂) + ε) (Everett et al. 2024, "Scaling exponents
    # across parameterizations and optimizers"): the step is bounded, invariant to the gradient's scale, and has
    # no ε, so nothing needs scaling as µP's gradients shrink with width and depth; µP's Adam rule applies as is.
    # Decay is decoupled (w ← w - lr·wd·w), as AdamW's.
    from adam_atan2_pytorch import AdamAtan2

    return AdamAtan2(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, a=cfg.a, b=cfg.b)


def _adam8bit_backend(on_cuda: bool) -> tuple[str, type] | None:
    """AdamW with 8-bit state: on CUDA bitsandbytes first, then torchao (which also runs on the CPU); None when
    neither is importable here."""
    if on_cuda:
        try:
            import bitsandbytes as bnb  # noqa: PLC0415

            return "bitsandbytes", bnb.optim.AdamW8bit
        except ImportError:
            pass
    for module in ("torchao.optim", "torchao.prototype.low_bit_optim"):  # torchao moved it out of prototype
        try:
            return "torchao", __import__(module, fromlist=["AdamW8bit"]).AdamW8bit
        except (ImportError, AttributeError):
            continue
    return None


@optimizer("adam8bit", mup_family="adam", schema=C.Adam8bitConfig, title="8-bit AdamW", decoupled_decay=True)
def _adam8bit(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    # AdamW with both moments stored in 8 bits (block-wise quantised): Adam-like, hidden lr/m.
    _, cls = _check_adam8bit(on_cuda)
    return cls(with_eps(groups, cfg.eps), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def _check_adam8bit(on_cuda: bool) -> tuple[str, type]:
    backend = _adam8bit_backend(on_cuda)
    if backend is None:
        raise ImportError("optim.name=adam8bit: needs torchao (pip install torchao; CPU or CUDA) or, on a CUDA GPU, "
                          "bitsandbytes")
    return backend


# -------------------------------------------------------------------------------------------- Muon
# Muon orthogonalises each hidden matrix's momentum (Newton-Schulz) and steps by lr·sqrt(max(1, fan_out/fan_in))
# times it: the update's spectral norm is set by the lr and the aspect ratio alone. Under µP every hidden matrix
# keeps its aspect ratio as width grows, so the update already has the Θ(1) spectral norm µP asks of hidden
# weights (the spectral condition of Yang, Simon & Bernstein, 2023): µP's 1/m must NOT be applied on top
# (lr_multiplier gives Muon's hidden matrices 1). Embeddings, the readout, norms and biases go to AdamW, whose
# µP rule for them is 1 as well. adjust_lr_fn=match_rms_adamw (Moonshot's rule) scales by 0.2·sqrt(max(fan_in,
# fan_out)) instead: each entry of the step is then ~0.2·lr whatever the width, as AdamW's is, so it takes the Adam
# family's µP rule (hidden matrices lr/m), not Muon's.
def split_for_muon(groups: list[dict], adamw_lr_ratio: float) -> tuple[list[dict], list[dict]]:
    """Muon takes the groups of kind `hidden` (2-D matrices both of whose dimensions grow with width), AdamW the
    rest (embeddings, readout, vectors), each group with every option it had (lr, weight_decay, µP's lr_mult); the
    AdamW groups' lr is the group's lr × adamw_lr_ratio."""
    muon_groups, adamw_groups = [], []
    for g in groups:
        if "kind" not in g:
            raise ValueError("optim.name=muon: every parameter group needs a 'kind' (hidden, embedding, vector or "
                             "readout) to tell Muon's hidden matrices from the rest: build the groups with "
                             "mugpt.core.parametrization")
        is_muon = g["kind"] == "hidden"
        sub = {**g, "name": f"{g.get('name', g['kind'])}/{'muon' if is_muon else 'adamw'}"}
        if not is_muon:
            sub["lr"] = g["lr"] * adamw_lr_ratio
        (muon_groups if is_muon else adamw_groups).append(sub)
    return muon_groups, adamw_groups


class MuonWithAdamW(Optimizer):
    """One optimizer for Lightning and LR schedulers: Muon on the hidden matrices, AdamW on everything else.

    Its param_groups are the two inner optimizers' groups (the same dicts), and both inner optimizers share its
    `state`, so a scheduler setting a group's lr, zero_grad, gradient clipping, state_dict()/load_state_dict()
    and Lightning's device moves all see one ordinary torch optimizer."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon_kwargs: dict,
                 adamw_kwargs: dict) -> None:
        if not muon_groups:
            raise ValueError("optim.name=muon: the model has no 2-D hidden matrices for Muon")
        self.muon = torch.optim.Muon(muon_groups, **muon_kwargs)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw_kwargs) if adamw_groups else None
        super().__init__(self.muon.param_groups + (self.adamw.param_groups if self.adamw else []), defaults={})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (load_state_dict replaces both)."""
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.muon.state = self.param_groups[:n], self.state
        if self.adamw is not None:
            self.adamw.param_groups, self.adamw.state = self.param_groups[n:], self.state

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "muon": self.muon, "adamw": self.adamw}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "muon" in self.__dict__:
            self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        if self.adamw is not None:
            self.adamw.step()
        return loss


def _muon_family(options: Any) -> str:
    """Muon's spectral steps take Muon's µP rule; RMS-matched to AdamW, its steps are entrywise like Adam's."""
    return "adam" if options.get("adjust_lr_fn") == "match_rms_adamw" else "muon"


# Muon's AdamW part (embeddings, readout, vectors) follows the swept lr at 1/8 (its config's default ratio is ~1/7)
@optimizer("muon", mup_family=_muon_family, schema=C.MuonConfig, title="Muon (+AdamW)",
           needs_whole_matrices="orthogonalises whole weight matrices", lr_log2_grid=range(-9, -1),
           sweep_overrides=("optim.adamw_lr='${pow2:${lr_log2},-3}'",))
def _muon(groups: list[dict], cfg: Any, on_cuda: bool) -> Optimizer:
    if (cfg.adjust_lr_fn == "match_rms_adamw" and _under_mup(groups)
            and any(g.get("mup_family") != "adam" for g in groups if g.get("kind") == "hidden")):
        raise ValueError("optim.adjust_lr_fn=match_rms_adamw grows Muon's step like sqrt(width): under µP its hidden "
                         "matrices need the Adam family's lr/m (build the groups with mup_family('muon', optim))")
    muon_groups, adamw_groups = split_for_muon(groups, cfg.adamw_lr / cfg.lr)
    muon_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=bool(cfg.nesterov), ns_steps=cfg.ns_steps,
                       adjust_lr_fn=cfg.adjust_lr_fn)
    adamw_kwargs = dict(lr=cfg.adamw_lr, betas=tuple(cfg.betas), eps=cfg.eps, **_foreach(on_cuda, cfg))
    # ε only for the AdamW part: Muon's own `eps` is Newton-Schulz's normaliser, not a gradient floor
    return MuonWithAdamW(muon_groups, with_eps(adamw_groups, cfg.eps), muon_kwargs, adamw_kwargs)


def clip_gradients_(parameters, max_norm: float | None) -> torch.Tensor | None:
    """The global L2 norm of the parameters' gradients before clipping (None when there are none); with
    max_norm, torch's clip_grad_norm_ scales them in place to at most max_norm. Neither reads back to the host."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return None
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm([p.grad for p in params])]))


def check_optimizer(cfg: Any, on_cuda: bool = False) -> None:
    """Reject an optimizer this machine cannot run, before any model or data is built (build_optimizer calls it
    too; the µP-specific refusals need the parameters and come from the factories)."""
    mup_family(cfg.name)  # an unknown name is refused here
    check_transfer_rules(cfg)
    if cfg.name == "adam8bit":
        _check_adam8bit(on_cuda)
    if cfg.name == "adam_atan2" and importlib.util.find_spec("adam_atan2_pytorch") is None:
        raise ImportError("optim.name=adam_atan2: needs the adam-atan2-pytorch package (pip install 'mugpt[atan2]')")
    if cfg.name == "muon" and not hasattr(torch.optim, "Muon"):
        raise ImportError(f"optim.name=muon: needs torch>=2.9 (torch.optim.Muon); this is torch {torch.__version__}")
    if cfg.name == "adafactor" and not hasattr(torch.optim, "Adafactor"):
        raise ImportError(f"optim.name=adafactor: needs torch>=2.5 (torch.optim.Adafactor); "
                          f"this is torch {torch.__version__}")


def build_optimizer(groups: list[dict], cfg: Any, on_cuda: bool = False) -> Optimizer:
    check_optimizer(cfg, on_cuda)
    return OPTIMIZERS[cfg.name].factory(groups, cfg, on_cuda)


# ------------------------------------------------------------------------------------ state size
def _tensors(value: Any) -> list[torch.Tensor]:
    """Every plain tensor inside an optimizer-state value; tensor subclasses (torchao's 8-bit state) are
    opened up into the tensors they store."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass  # noqa: PLC0415

    if isinstance(value, torch.Tensor):
        if is_traceable_wrapper_subclass(value):
            names, _ = value.__tensor_flatten__()
            return [t for n in names for t in _tensors(getattr(value, n))]
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def optimizer_state_bytes(optimizer: Optimizer) -> dict[str, float]:
    """Memory held in the optimizer's state, measured from its tensors (so take at least one step first).

    Returns {"bytes", "params", "bytes_per_param"}. Scalar (0-d) tensors are left out: they are per-tensor step
    counters, a few bytes per tensor rather than per parameter, and would blur "AdamW = 8 B/param" on small models."""
    inner = getattr(optimizer, "optimizer", None)  # a LightningOptimizer wraps the real one
    optimizer = inner if isinstance(inner, Optimizer) else optimizer
    seen: set[tuple[int, int]] = set()
    total = 0
    for value in optimizer.state.values():
        for t in _tensors(value):
            if t.dim() == 0:
                continue
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            if key in seen:  # a view or a tensor stored twice counts once
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    params = {id(p): p.numel() for g in optimizer.param_groups for p in g["params"]}
    n = sum(params.values())
    return {"bytes": total, "params": n, "bytes_per_param": total / n if n else 0.0}


# ------------------------------------------------------------------------------------ Adam's ε at work
@torch.no_grad()
def eps_share(optimizer: Optimizer) -> list[dict[str, Any]]:
    """For each Adam-like group: how much of Adam's denominator sqrt(v̂) + ε is ε. A share near 0 means ε is
    irrelevant to the step; near 1, the step is damped towards SGD's. Per group: its name, ε, the median of
    sqrt(v̂) over its entries and the fraction of entries whose ε share exceeds 10% (their step is damped by more
    than 10%). v̂ is the bias-corrected second moment; groups without `exp_avg_sq` state (SGD, Muon) are skipped."""
    rows = []
    for group in optimizer.param_groups:
        if "eps" not in group or "betas" not in group:
            continue
        roots = []
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                continue
            step = float(state["step"])
            v_hat = state["exp_avg_sq"].float() / (1 - group["betas"][1] ** step)
            roots.append(v_hat.sqrt().flatten()[v_hat.flatten() > 0])  # never-updated entries (unseen tokens) aside
        if not roots:
            continue
        root = torch.cat(roots)
        eps = group["eps"]
        rows.append({"group": group.get("name", "?"), "kind": group.get("kind", "?"), "eps": eps,
                     "median_sqrt_v": root.median().item(),
                     "damped_fraction": (eps / (root + eps) > 0.1).float().mean().item()})
    return rows
