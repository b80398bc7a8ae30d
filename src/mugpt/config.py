"""Typed schemas for the config groups whose types matter: the schedule, every optimizer, the data.

Each conf/optim/NAME.yaml starts from `schema_optim_NAME` (the schema its declaration in mugpt.core.optim names)
and each conf/data/*.yaml from `schema_data` (shards: `schema_data_shards`), so Hydra checks types when it
composes: `optim.lr=abc` or `+optim.betas2=1` fails there, with the key named, before anything is built. Values
(ranges, cross-field rules) are checked later by `mugpt.core.optim.check_*` and the DataModule. The schedule keys
live once, in `ScheduleConfig`, which every optimizer's schema extends. conf/parametrization/mup.yaml starts from
`schema_parametrization_mup`, made from MaximalUpdateParametrization's keyword arguments: µP's defaults have one
home, in Python.

Hydra finds these schemas in its ConfigStore, and `${pow2:...}` in OmegaConf's resolvers: every entry point that
composes the project's configs calls `register_configs()` first (src/train.py, the scripts, the tests' compose
helper); importing a module registers nothing.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class ScheduleConfig:
    """The learning-rate schedule, a multiplier of every group's lr (so µP's per-group ratios survive)."""

    schedule: str = "cosine"  # cosine | constant | linear | wsd | exponential
    warmup_steps: int = 20  # linear warmup over this many optimizer steps
    min_lr_ratio: float = 0.1  # floor of cosine/linear/wsd, as a fraction of lr
    decay_fraction: float = 0.2  # wsd: the share of training spent decaying
    exp_gamma: float = 1.0  # exponential: the multiplier per step after warmup
    warmup_fraction: float | None = None  # warmup as a fraction of the run (replaces warmup_steps when set)


@dataclass
class OptimConfig(ScheduleConfig):
    """What every optimizer has: its name in the zoo, the base lr (µP: the lr at parametrization.base_width),
    decay on ≥2-D weights, and the global gradient-norm clip (null: none)."""

    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    # Decoupled decay as a time scale (the EMA view of AdamW, Wang & Aitchison 2024): when set, each decayed group
    # gets λ = 1/(η_group · τ · max_steps), so its weights average over the same fraction τ of every run, however
    # long, wide or deep; optim.weight_decay is then unused. AdamW-style optimizers only.
    weight_decay_timescale: float | None = None
    # Learning rate against the global batch (sequences per optimizer step, all processes and micro-batches):
    # lr · (batch / base_batch)^p with p = 0 (none), 1/2 (sqrt) or 1 (linear). base_batch: the donor's batch.
    batch_lr_rule: str = "none"
    base_batch: int | None = None


@dataclass
class AdamWConfig(OptimConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    fused: Any = "auto"  # auto: the fused kernel on CUDA; true/false force it


@dataclass
class AdamConfig(AdamWConfig):
    pass


@dataclass
class Adam8bitConfig(OptimConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = 0.9
    nesterov: bool = True
    fused: Any = "auto"


@dataclass
class AdagradConfig(OptimConfig):
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0


@dataclass
class RMSpropConfig(OptimConfig):
    alpha: float = 0.99  # EMA factor of g²
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False


@dataclass
class AdafactorConfig(OptimConfig):
    relative_step: bool = False  # true: the step is lr·RMS(weight) (SP only)
    eps2: float = 1e-3  # floor of RMS(weight) when relative_step=true
    beta2_decay: float = -0.8  # second-moment EMA factor 1 - t^beta2_decay
    clip_threshold: float = 1.0  # the update is scaled down when its RMS exceeds this


@dataclass
class MuonConfig(AdamWConfig):
    adamw_lr: float = 3e-3  # the AdamW part's lr (embeddings, readout, vectors)
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations
    # original | spectral_unclamped | match_rms_adamw (Moonshot's 0.2·sqrt(max fan); under µP Adam's rule: hidden lr/m)
    adjust_lr_fn: str = "original"


@dataclass
class AdamAtan2Config(OptimConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    a: float = 1.27  # the step is a·atan2(m̂, b·sqrt(v̂)): a sets its size (a·π/4 ≈ 1 where |m̂| = sqrt(v̂))
    b: float = 1.0  # and b how early atan2 saturates; there is no ε


def optim_schemas() -> dict[str, type[OptimConfig]]:
    """Each registered optimizer's typed config by name: its declaration in mugpt.core.optim names it."""
    from mugpt.core.optim import OPTIMIZERS

    return {name: spec.schema for name, spec in OPTIMIZERS.items()}


def parametrization_schema(cls: type) -> type:
    """A parametrization's options as a structured config: its class's keyword arguments with their defaults (and
    `name`), so that its conf/parametrization/ file, which starts from it, cannot hold other defaults than the
    Python route. Untyped (Any): the class checks its values, with its own one-line errors."""
    import inspect
    from dataclasses import make_dataclass

    fields_ = [("name", str, field(default=cls.name))]
    for key, p in inspect.signature(cls).parameters.items():
        if p.kind is not inspect.Parameter.VAR_KEYWORD:
            fields_.append((key, Any, field(default=p.default)))
    return make_dataclass(f"{cls.__name__}Options", fields_)


@dataclass
class DataConfig:
    """The DataModule's options (mugpt.data.text.TextDataModule)."""

    _target_: str = "mugpt.data.text.TextDataModule"
    source: str = "shakespeare"  # shakespeare | text | hf
    path: str | None = None  # text: a file, folder or glob; hf: the dataset's name
    tokenizer: str = "gpt2"  # gpt2 (tiktoken's GPT-2 BPE, offline) | byte
    batch_size: int = 16  # micro-batch, in sequences, per process
    val_fraction: float = 0.1
    val_batches: int = 4
    cache_dir: str = "~/.cache/mugpt"
    num_workers: int = 0
    seed: int = 1337
    hf_config: str | None = None
    hf_split: str = "train"
    hf_text_field: str = "text"
    hf_max_chars: int = 50_000_000


@dataclass
class ShardDataConfig:
    """The options of data=shards (mugpt.data.shards.ShardDataModule): token shards made by scripts/prepare_data.py."""

    _target_: str = "mugpt.data.shards.ShardDataModule"
    path: str | None = None  # the prepared folder (or an s3:// / gs:// URL litdata can read)
    tokenizer: str | None = None  # null: the manifest's; gpt2 | byte must be the manifest's
    batch_size: int = 16  # micro-batch, in sequences, per process
    val_batches: int = 4
    cache_dir: str = "~/.cache/mugpt"  # litdata's chunk cache for a bucket URL
    num_workers: int = 0
    seed: int = 1337
    shuffle: bool = True
    verify: str = "checksum"  # checksum (every chunk, before training) | size (faster, for very large corpora)


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore and the resolvers into OmegaConf (safe to call again)."""
    from hydra.core.config_store import ConfigStore

    # `optim.lr: ${pow2:${lr_log2}}` lets a sweep run a log2 learning-rate grid as `lr_log2=range(-12,-3)`; an
    # optional second term offsets the exponent, so a second lr can follow the swept one at a fixed ratio
    # (Muon's `optim.adamw_lr='${pow2:${lr_log2},-3}'` = lr/8)
    OmegaConf.register_new_resolver("pow2", lambda exponent, offset=0: 2.0 ** (float(exponent) + float(offset)),
                                    replace=True)

    from mugpt.core.parametrization import PARAMETRIZATIONS

    # The schemas are stored at the top level, not as options of their groups, so that `--help` lists only what
    # a user can choose: conf/optim/NAME.yaml starts from `/schema_optim_NAME@_here_`, conf/data/*.yaml from
    # `/schema_data@_here_` (shards: `/schema_data_shards@_here_`).
    store = ConfigStore.instance()
    for name, schema in optim_schemas().items():
        store.store(name=f"schema_optim_{name}", node=schema)
    for name, cls in PARAMETRIZATIONS.items():
        store.store(name=f"schema_parametrization_{name}", node=parametrization_schema(cls))
    store.store(name="schema_data", node=DataConfig)
    store.store(name="schema_data_shards", node=ShardDataConfig)


def load_optim_config(name: str, **overrides: Any) -> DictConfig:
    """conf/optim/NAME.yaml on its schema, with `overrides`: the optimizer config as a training run composes it,
    for code that builds an optimizer without composing a whole run (benchmarks, comparisons, tests)."""
    schemas = optim_schemas()
    if name not in schemas:
        raise ValueError(f"optim.name: unknown optimizer '{name}' (choose one of {', '.join(schemas)})")
    written = OmegaConf.load(CONF_DIR / "optim" / f"{name}.yaml")
    written.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(schemas[name]), written, overrides)


def compose_training_config(overrides: list[str]) -> DictConfig:
    """The training config `python src/train.py OVERRIDES` would run, composed with Hydra's compose API (for
    scripts that launch runs themselves, and for tests). `output_dir` must be among the overrides: there is no
    Hydra run directory to default to."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def composition_error_line(exc: BaseException, overrides: Sequence[str] = ()) -> str:
    """Hydra's composition error in one line that still names the option: its first line, the cause's first line
    (the type or key problem), for an unknown group option the options there are, and for a misspelt key, option
    or group the nearest existing ones (`; did you mean model.width?`). `overrides`: the run's command line, so
    that the keys offered are those of the run's own groups (optim=muon's keys, not adamw's)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = exc.__cause__
    options = [line.strip() for line in str(exc).splitlines() if line.startswith("\t")]
    options = [o for o in options if not o.startswith(("schema", "provider="))]
    if cause is not None and str(cause).strip():
        line = f"{first.rstrip('.')} ({str(cause).strip().splitlines()[0]})"
    elif options:
        line = f"{first} (choose one of {', '.join(options)})"
    else:
        line = first
    try:
        hints = _misspelling_hints(str(exc), options, overrides)
    except Exception:  # a hint is a courtesy: the error itself must still be reported
        hints = []
    return f"{line.rstrip('.')}; did you mean {_or_list(hints)}?" if hints else line


def _misspelling_hints(message: str, options: list[str], overrides: Sequence[str]) -> list[str]:
    """The nearest existing names to the one Hydra refused in `message` (up to 3), or none."""
    missing_option = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    if missing_option:
        return _nearest(missing_option.group(2), options)
    refused = re.search(r"Could not override '([^']+)'|Could not delete from config\. '([^']+)' does not exist",
                        message)
    if not refused:
        return []
    key = refused.group(1) or refused.group(2)
    reference = _reference_config([o for o in overrides if _override_key(o) != key])
    if reference is None:
        return []
    config, groups = reference
    if "/" in key:  # a group's path (hydra/launcher=basic): its siblings are the groups under the same parent
        parts, sep = key.split("/"), "/"

        def children(path: list[str]) -> list[str] | None:
            return groups.get("/".join(path))
    else:
        parts, sep = key.split("."), "."

        def children(path: list[str]) -> list[str] | None:
            node = OmegaConf.select(config, ".".join(path)) if path else config
            if not isinstance(node, DictConfig):
                return None
            # a misspelt group name (optm=adamw) is refused as a top-level key: the groups are candidates there
            return [str(k) for k in node.keys()] + (groups.get("", []) if not path else [])
    return [sep.join(path) for path in _nearest_paths(parts, children)]


def _nearest_paths(parts: list[str], children: Callable[[list[str]], list[str] | None]) -> list[list[str]]:
    """Existing paths closest to `parts`, level by level: the first misspelt level offers up to 3 names, each
    later misspelt level its single nearest (so `optm.lrr` still becomes optim.lr). Paths that go below a value,
    or have a level with nothing close, are dropped; so is the path itself when it exists."""
    paths: list[list[str]] = [[]]
    for part in parts:
        extended = []
        for path in paths:
            names = children(path)
            if names is None:
                continue
            if part in names:
                extended.append([*path, part])
            else:
                matches = _nearest(part, names)
                extended += [[*path, m] for m in (matches if path == parts[:len(path)] else matches[:1])]
        paths = extended
    return [p for p in paths if p != parts][:3]


def _nearest(word: str, names: Sequence[str]) -> list[str]:
    """Up to 3 of `names` like `word` (difflib's ratio, ignoring case, at least 0.6), keeping only those nearly as
    close as the best: `adamww` gets adamw, not adam as well."""
    scored = sorted({(-difflib.SequenceMatcher(None, word.lower(), n.lower()).ratio(), n) for n in names})
    close = [(-score, n) for score, n in scored if -score >= 0.6]
    return [n for score, n in close[:3] if score >= close[0][0] - 0.1]


def _or_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _reference_config(overrides: list[str]) -> tuple[DictConfig, dict[str, list[str]]] | None:
    """The config the run would have without its refused override (or, should another one fail too, the default
    config), with Hydra's node, and every config group's subgroups by parent path ('' for the top level)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    held = GlobalHydra.instance().hydra  # a caller's own Hydra, given back afterwards
    for attempt in (overrides, []):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                config = compose(config_name="config", overrides=attempt, return_hydra_config=True)
                loader = GlobalHydra.instance().config_loader()
                groups: dict[str, list[str]] = {}
                pending = [""]
                while pending:
                    parent = pending.pop()
                    groups[parent] = loader.list_groups(parent)
                    pending += [f"{parent}/{g}".lstrip("/") for g in groups[parent]]
                return config, groups
        except Exception:
            continue
        finally:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().hydra = held
    return None


def check_overrides(overrides: list[str]) -> DictConfig:
    """Compose a single run's config from its command-line overrides, as Hydra is about to, so that a type error,
    an unknown key or an unknown option is one line (a ConfigError) instead of Hydra's report, with the nearest
    existing names when one is misspelt. Returns the config with Hydra's node (hydra.run.dir resolved by the
    caller)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mugpt.errors import ConfigError

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_error_line(exc, overrides)) from exc
    finally:
        GlobalHydra.instance().clear()


# ------------------------------------------------------------------------------------ script options
OPTION_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def check_option(value: Any, key: str, kind: type, nullable: bool = False, positive: bool = False,
                 minimum: float | None = None, why: str = "", null_means: str = "",
                 error: type[ValueError] = ValueError) -> Any:
    """`value` checked to be of `kind` (an int is a number too, a bool is only a bool; a number is finite), > 0 with
    `positive`, >= `minimum`; null allowed with `nullable`. The error (`error`, a ValueError) names KEY=VALUE and
    what it must be, in one line; `why` says what the option is, `null_means` what null stands for."""
    if value is None and nullable:
        return None
    noun = OPTION_KINDS[kind].removeprefix("an ").removeprefix("a ")
    wanted = f"a positive {noun}" if positive else OPTION_KINDS[kind]
    if minimum is not None and not positive:
        wanted = f"{OPTION_KINDS[kind]} >= {minimum:g}"
    ok = kind is bool if isinstance(value, bool) else isinstance(value, (int, float) if kind is float else kind)
    if ok and kind in (int, float):
        ok = math.isfinite(value) and (not positive or value > 0) and (minimum is None or value >= minimum)
    if not ok:
        hint = (f"; Hydra read it as {type(value).__name__}, quote it: '{key}=\"...\"'"
                if kind is str and value is not None else "")
        null = (f" (or null: {null_means})" if null_means else " or null") if nullable else ""
        raise error(f"{key}={value}: must be {wanted}{null}{hint}{' (' + why + ')' if why else ''}")
    return float(value) if kind is float else value


def script_option(cfg: DictConfig, key: str, kind: type, nullable: bool = False, positive: bool = False,
                  minimum: float | None = None, many: bool = False, required: str = "", null_means: str = "") -> Any:
    """cfg[key] as Hydra parsed it, checked by `check_option` (kind, nullable, positive, minimum); with `many`, a
    non-empty list of `kind` without repeats (a single value is a list of one). A missing value (???) is refused
    as `KEY is required: REQUIRED`. For the scripts' own options: the ValueError names KEY=VALUE and what it must
    be, in one line."""
    from omegaconf.errors import OmegaConfBaseException

    if OmegaConf.is_missing(cfg, key):
        raise ValueError(f"{key} is required{': ' + required if required else ''}")
    try:
        value = cfg[key]
    except OmegaConfBaseException as exc:  # an interpolation such as ${x} in a value
        raise ValueError(f"{key}: {str(exc).strip().splitlines()[0]} (write a literal '${{' as '\\${{')") from None
    if many:
        return _list_option(value, key, kind)
    return check_option(value, key, kind, nullable=nullable, positive=positive, minimum=minimum,
                        null_means=null_means)


def _list_option(value: Any, key: str, kind: type) -> list:
    from omegaconf import ListConfig

    listed = isinstance(value, (list, ListConfig))
    items = list(value) if listed else [value]
    shown = f"[{','.join(str(v) for v in items)}]" if listed else str(value)
    of_kind = [kind is bool if isinstance(v, bool) else isinstance(v, (int, float) if kind is float else kind)
               for v in items]
    if not items or not all(of_kind):
        noun = OPTION_KINDS[kind].removeprefix("an ").removeprefix("a ")
        raise ValueError(f"{key}={shown}: must be a list of {noun}s, "
                         f"e.g. {key}=[{'adamw,muon' if kind is str else '0.5,1,2'}]")
    repeated = sorted({str(v) for v in items if items.count(v) > 1})
    if repeated:
        raise ValueError(f"{key}={shown}: {', '.join(repeated)} listed twice")
    return [float(v) if kind is float else v for v in items]
