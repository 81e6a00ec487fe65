"""TOML recipes: load, apply ``--set`` overrides, validate every component, dump the resolved result.

Each component table is ``{ name = "<registry name>", <options> }``. Options are validated by the
component's own attrs ``Config`` at load time, so a typo fails before any data is generated or any
model is built. Relative paths inside a recipe resolve against the recipe file's folder.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tface.core import kinds, registry
from tface.core.config import INT_MAX, ConfigError, closest, structure, unstructure, validate_options
from tface.core.reference import ComponentRef

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Component", "DataBranch", "TrainConfig", "DistributedConfig", "Recipe", "load", "loads",
           "apply_overrides", "dumps", "BRANCH_KEYS", "SAMPLERS", "BACKENDS"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "poly")
PRECISIONS = ("fp32", "bf16", "fp16")
NONFINITE_POLICIES = ("stop", "skip")

_ge0 = attrs.validators.ge(0)
_gt0 = attrs.validators.gt(0)
#: Most loader processes or CPU threads a recipe may ask for (torch crashes on absurd thread counts).
MAX_PARALLEL = 1024


@attrs.define
class StartWeights:
    """Weights a run starts from, to fine-tune a trained model (``checkpoint = "path"``, ``strict = true``).

    ``strict``: every tensor of the model must come from the file and the file may hold nothing else;
    ``strict = false`` loads what fits and the run's log lists what did not.
    """

    checkpoint: pathlib.Path | None = None
    strict: bool = True

    def to_table(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "strict": self.strict} if self.checkpoint is not None else {}


#: Keys of a ``[backbone]`` or ``[classifier]`` table that name the weights to start from (not component options).
WEIGHT_KEYS = ("checkpoint", "strict")

#: the training method of a recipe without a ``[method]`` table (tface.core.method)
DEFAULT_METHOD = "margin_softmax"

CLASSIFIER_MODES = ("local", "sharded", "sampled")


def _sample_rate(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"must lie in (0, 1], got {value}")


@attrs.define
class ClassifierConfig(StartWeights):
    """The ``[classifier]`` table: how class centres are held, and the weights they start from.

    ``mode``: ``local`` (every process holds every class; DDP averages their gradients), ``sharded`` (each
    process holds a contiguous range of classes; the softmax is completed across processes) or ``sampled``
    (sharded, and each step scores every positive class plus random negatives up to ``sample_rate`` of each
    shard: Partial FC). ``init_std``: centres start from N(0, init_std²).
    """

    mode: str = attrs.field(default="local", validator=attrs.validators.in_(CLASSIFIER_MODES))
    sample_rate: float = attrs.field(default=0.1, validator=_sample_rate)
    init_std: float = attrs.field(default=0.01, validator=attrs.validators.gt(0))

    def to_table(self) -> dict[str, Any]:
        """The keys that differ from the defaults (a default recipe dumps no ``[classifier]`` table)."""
        out: dict[str, Any] = {}
        if self.mode != "local":
            out["mode"] = self.mode
        if self.mode == "sampled":
            out["sample_rate"] = self.sample_rate
        if self.init_std != 0.01:
            out["init_std"] = self.init_std
        return {**out, **super().to_table()}


@attrs.define
class LossTerm:
    """One ``[[loss]]`` table: a ``tface.losses`` component and its weight in the branch's loss."""

    component: Component
    weight: float = 1.0

    @property
    def takes(self) -> str:
        return str(getattr(registry.get(self.component.kind, self.component.name), "takes", ""))

    def to_table(self) -> dict[str, Any]:
        return {**self.component.to_table(), "weight": self.weight}


@attrs.define
class Component:
    """A registry name plus its validated options (defaults filled in)."""

    kind: str
    name: str
    options: dict[str, Any] = attrs.field(factory=dict)
    #: weights to start from (``[backbone] checkpoint``); only backbones take them
    weights: StartWeights = attrs.field(factory=StartWeights)

    def build(self, key: str | None = None, **extra: Any) -> Any:
        """Instantiate the component; ``extra`` carries run-time arguments (e.g. ``num_classes``).

        A constructor that refuses its options (``TypeError``/``ValueError``, e.g. a plugin without a
        ``Config`` whose signature hides them) is a :class:`ConfigError` at ``key`` (the recipe key path).
        """
        factory = registry.get(self.kind, self.name)
        try:
            return factory(**self.options, **extra)
        except (TypeError, ValueError) as exc:
            raise ConfigError([f"{key or kinds.singular(self.kind)}: {self.name!r} cannot be built from these options: "
                               f"{type(exc).__name__}: {exc}"]) from exc

    def to_table(self) -> dict[str, Any]:
        return {"name": self.name, **unstructure(self.options), **self.weights.to_table()}


SAMPLERS = ("shuffle", "balanced")
#: Keys of a ``[data]`` table that configure the branch rather than the dataset source.
BRANCH_KEYS = ("branch", "batch_size", "weight", "sampler", "sampler_k")


@attrs.define
class DataBranch:
    """One training data set of a run (TFace's ``DATASETS`` entry): its own batch, weight and class space.

    A recipe with several ``[[data]]`` tables trains one backbone on all of them: each step draws a batch
    from every branch, runs one forward pass over the concatenation, and sums the branch losses times
    their weights; every branch has its own classifier (labels of different branches never mix).
    """

    source: Component
    name: str
    batch_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(_gt0))
    weight: float = attrs.field(default=1.0, validator=_ge0)
    sampler: str = attrs.field(default="shuffle", validator=attrs.validators.in_(SAMPLERS))
    images_per_identity: int = attrs.field(default=4, validator=_gt0)
    #: whether the recipe named the branch or set any branch key (keeps dumps minimal)
    explicit: bool = attrs.field(default=False, eq=False)

    def batch(self, train: TrainConfig) -> int:
        return self.batch_size if self.batch_size is not None else train.batch_size

    def to_table(self) -> dict[str, Any]:
        table = self.source.to_table()
        if self.explicit:
            table["branch"] = self.name
            if self.batch_size is not None:
                table["batch_size"] = self.batch_size
            table["weight"] = self.weight
            table["sampler"] = self.sampler
            if self.sampler == "balanced":
                table["sampler_k"] = self.images_per_identity
        return table


@attrs.define
class TrainConfig:
    """Optimisation and loop settings (the ``[train]`` table)."""

    max_steps: int = attrs.field(default=1000, validator=_gt0)
    batch_size: int = attrs.field(default=64, validator=_gt0)
    num_workers: int = attrs.field(default=0, validator=[_ge0, attrs.validators.le(MAX_PARALLEL)])
    lr: float = attrs.field(default=0.1, validator=_gt0)
    momentum: float = attrs.field(default=0.9, validator=[_ge0, attrs.validators.lt(1)])
    nesterov: bool = False
    weight_decay: float = attrs.field(default=5e-4, validator=_ge0)
    warmup_steps: int = attrs.field(default=0, validator=_ge0)
    warmup_start: float = attrs.field(default=0.1, validator=[_ge0, attrs.validators.le(1)])
    lr_milestones: list[int] = attrs.field(factory=list)
    lr_gamma: float = attrs.field(default=0.1, validator=_gt0)
    log_every: int = attrs.field(default=20, validator=_gt0)
    eval_at_start: bool = True
    eval_every: int = attrs.field(default=0, validator=_ge0)
    threads: int = attrs.field(default=0, validator=[_ge0, attrs.validators.le(MAX_PARALLEL)])
    channels_last: bool = False
    #: TensorBoard event files in <run folder>/tensorboard (needs the tensorboard extra)
    tensorboard: bool = False
    #: save a checkpoint every this many steps (0: only after the last step)
    checkpoint_every: int = attrs.field(default=0, validator=_ge0)
    #: also keep the last N checkpoints as ``checkpoints/step-<step>.pt`` (0: only ``last.pt``)
    keep_checkpoints: int = attrs.field(default=0, validator=_ge0)
    optimizer: str = attrs.field(default="sgd", validator=attrs.validators.in_(OPTIMIZERS))
    #: AdamW's (beta1, beta2); SGD reads ``momentum`` instead
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999))
    schedule: str = attrs.field(default="step", validator=attrs.validators.in_(SCHEDULES))
    poly_power: float = attrs.field(default=1.0, validator=_gt0)
    #: the LR that ``cosine`` and ``poly`` decay to at ``max_steps``
    min_lr: float = attrs.field(default=0.0, validator=_ge0)
    #: micro-batches per optimiser step (gradient accumulation)
    accumulate: int = attrs.field(default=1, validator=_gt0)
    #: largest gradient L2 norm over backbone and classifiers; 0 = no clipping
    clip_grad_norm: float = attrs.field(default=0.0, validator=_ge0)
    precision: str = attrs.field(default="fp32", validator=attrs.validators.in_(PRECISIONS))
    compile: bool = False
    #: decay of the exponential moving average of the backbone's weights; 0 = no EMA
    ema_decay: float = attrs.field(default=0.0, validator=[_ge0, attrs.validators.lt(1)])
    on_nonfinite: str = attrs.field(default="stop", validator=attrs.validators.in_(NONFINITE_POLICIES))

    @lr_milestones.validator
    def _sorted(self, _attr: Any, value: list[int]) -> None:
        if any(b <= a for a, b in zip(value, value[1:])) or any(v <= 0 for v in value):
            raise ValueError(f"lr_milestones must be increasing positive steps, got {value}")

    @betas.validator
    def _betas(self, _attr: Any, value: tuple[float, float]) -> None:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"betas must lie in [0, 1), got {list(value)}")

    @min_lr.validator
    def _min_lr(self, _attr: Any, value: float) -> None:
        if value > self.lr:
            raise ValueError(f"min_lr = {value} is above lr = {self.lr}")


#: Process-group backends a recipe may name; "auto" is NCCL on CUDA, gloo on CPU.
BACKENDS = ("auto", "gloo", "nccl")


@attrs.define
class DistributedConfig:
    """How the processes of a distributed run talk (the ``[distributed]`` table); unused by one process."""

    backend: str = attrs.field(default="auto", validator=attrs.validators.in_(BACKENDS))
    #: seconds a collective waits for the other processes before the run fails (torch's default: 30 min)
    timeout: float = attrs.field(default=1800.0, validator=[_gt0, attrs.validators.le(7 * 24 * 3600)])
    sync_bn: bool = False


@attrs.define
class Recipe:
    """A validated recipe. ``source`` is the file it came from (None for strings)."""

    data: list[DataBranch]
    backbone: Component
    #: the margin head; None when no ``[[loss]]`` uses a classifier (embedding losses only)
    head: Component | None
    train: TrainConfig = attrs.field(factory=TrainConfig)
    distributed: DistributedConfig = attrs.field(factory=DistributedConfig)
    #: the ``[classifier]`` table: how centres are held, and the centres (and head state) to start from
    classifier: ClassifierConfig = attrs.field(factory=ClassifierConfig)
    #: the ``[[loss]]`` tables; empty: the classifier's softmax cross-entropy
    loss: list[LossTerm] = attrs.field(factory=list)
    #: the ``[method]`` table: what a training step computes (``margin_softmax`` when the recipe names none)
    method: Component = attrs.field(factory=lambda: Component("methods", DEFAULT_METHOD))
    augment: list[Component] = attrs.field(factory=list)
    eval: list[Component] = attrs.field(factory=list)
    seed: int = 0
    device: str = "auto"
    output_dir: Path | None = None
    source: Path | None = None

    @property
    def uses_classifier(self) -> bool:
        """Whether the objective has a classification loss (the default), hence a head and classifiers (a method
        that needs no ``[head]`` has none)."""
        return self.head is not None and (not self.loss or any(t.takes == "nll" for t in self.loss))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.seed, "device": self.device}
        if self.output_dir is not None:
            out["output_dir"] = str(self.output_dir)
        tables = [b.to_table() for b in self.data]
        out["data"] = tables[0] if len(tables) == 1 and not self.data[0].explicit else tables
        out["backbone"] = self.backbone.to_table()
        if self.head is not None:
            out["head"] = self.head.to_table()
        if self.classifier.to_table():
            out["classifier"] = self.classifier.to_table()
        if self.loss:
            out["loss"] = [t.to_table() for t in self.loss]
        if self.method.to_table() != {"name": DEFAULT_METHOD}:
            out["method"] = self.method.to_table()
        out["train"] = unstructure(self.train)
        out["distributed"] = unstructure(self.distributed)
        if self.augment:
            out["augment"] = [c.to_table() for c in self.augment]
        if self.eval:
            out["eval"] = [c.to_table() for c in self.eval]
        return out


# --- loading --------------------------------------------------------------------------------------------

#: recipe key -> kind, from the kinds table: one table each (``[head]``) or an array of tables (``[[eval]]``);
#: ``data`` has its own reader (branch keys, ``[data]`` or ``[[data]]``)
_COMPONENTS = {k.slot: k.name for k in kinds.in_recipe() if not k.many}
_COMPONENT_LISTS = {k.slot: k.name for k in kinds.in_recipe() if k.many and k.slot not in ("data", "loss")}
_DATA_KIND = next(k.name for k in kinds.in_recipe() if k.slot == "data")
_LOSS_KIND = next(k.name for k in kinds.in_recipe() if k.slot == "loss")
_METHOD_KIND = next(k.name for k in kinds.in_recipe() if k.slot == "method")
_TOP_LEVEL = {"seed", "device", "output_dir", "train", "distributed", "classifier",
              *(k.slot for k in kinds.in_recipe())}
_DEVICES = ("auto", "cpu", "cuda")


def check_device(value: Any) -> str | None:
    """Why ``value`` is not a device name a recipe (or ``--device``) may give; None when it is."""
    if value in _DEVICES or (isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return f"expected one of {', '.join(_DEVICES)} or \"cuda:N\", got {json.dumps(value)}"


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, pathlib.PurePath):
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p).resolve()
    if isinstance(value, ComponentRef):
        return value.resolved(base)
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve_paths(v, base) for v in value)
    return value


def _component(kind: str, table: Any, path: str, base: Path, problems: list[str]) -> Component | None:
    if not isinstance(table, dict):
        problems.append(f"{path}: expected a table with a name, got {json.dumps(table)}")
        return None
    name = table.get("name")
    obj = registry.get_named(kind, name, path, problems)
    if obj is None:
        return None
    takes_weights = kind == "backbones"
    options = {k: v for k, v in table.items() if k != "name" and not (takes_weights and k in WEIGHT_KEYS)}
    weights = _start_weights({k: v for k, v in table.items() if takes_weights and k in WEIGHT_KEYS}, path, base,
                             problems)
    try:
        kwargs = validate_options(obj, options, path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    kwargs = {k: _resolve_paths(v, base) for k, v in kwargs.items()}
    return Component(kind, name, kwargs, weights if weights is not None else StartWeights())


def _start_weights(table: Any, path: str, base: Path, problems: list[str]) -> StartWeights | None:
    """The ``checkpoint``/``strict`` keys of a table; a relative path resolves against the recipe's folder."""
    try:
        weights = structure(StartWeights, table, path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    if weights.checkpoint is not None:
        weights.checkpoint = _resolve_paths(weights.checkpoint, base)
    return weights


def _classifier(table: Any, base: Path, problems: list[str]) -> ClassifierConfig | None:
    try:
        cfg = structure(ClassifierConfig, table, "classifier")
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    if isinstance(table, Mapping) and "sample_rate" in table and cfg.mode != "sampled":
        problems.append(f'classifier.sample_rate: only used with mode = "sampled" (mode is "{cfg.mode}")')
    if cfg.checkpoint is not None:
        cfg.checkpoint = _resolve_paths(cfg.checkpoint, base)
    return cfg


def _loss_tables(raw: Any) -> list[Any] | None:
    if raw is None:
        return []
    tables = [raw] if isinstance(raw, dict) else raw
    return tables if isinstance(tables, list) else None


def _embedding_only(raw: Any) -> bool:
    """Whether ``[[loss]]`` lists losses and none of them is a classification loss (so no head is needed)."""
    tables = _loss_tables(raw)
    if not tables:
        return False
    for t in tables:
        try:
            obj = registry.get(_LOSS_KIND, t.get("name")) if isinstance(t, dict) else None
        except registry.RegistryError:
            obj = None
        if obj is None or getattr(obj, "takes", None) == "nll":
            return False
    return True


def _method_needs_head(raw: Mapping[str, Any]) -> bool:
    """Whether the recipe's method trains a classifier, so needs ``[head]`` (a method says ``needs_head = False``
    when it builds none, e.g. a quality regression); an unknown method is reported by its own key."""
    table = raw.get("method")
    name = table.get("name") if isinstance(table, dict) else DEFAULT_METHOD
    try:
        return bool(getattr(registry.get(_METHOD_KIND, name), "needs_head", True))
    except registry.RegistryError:
        return True


def _losses(raw: Any, base: Path, problems: list[str]) -> list[LossTerm]:
    """``[[loss]]``: each a ``tface.losses`` component plus ``weight``; at most one classification loss."""
    from tface.core.losses import RECIPE_INPUTS

    tables = _loss_tables(raw)
    if tables is None:
        problems.append("loss: expected an array of tables ([[loss]])")
        return []
    out: list[LossTerm] = []
    for i, table in enumerate(tables):
        path = f"loss[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{path}: expected a table with a name, got {json.dumps(table)}")
            continue
        weight = table.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            problems.append(f"{path}.weight: expected a number >= 0, got {json.dumps(weight)}")
            continue
        component = _component(_LOSS_KIND, {k: v for k, v in table.items() if k != "weight"}, path, base, problems)
        if component is None:
            continue
        term = LossTerm(component, float(weight))
        if term.takes not in RECIPE_INPUTS:
            problems.append(f"{path}.name: loss {component.name!r} takes {term.takes or 'unknown inputs'!r}, not a "
                            "classifier's nll or embeddings: a training method uses it, not [[loss]]")
            continue
        out.append(term)
    nll = [i for i, t in enumerate(out) if t.takes == "nll"]
    if len(nll) > 1:
        problems.append(f"loss: {len(nll)} classification losses ({', '.join(out[i].component.name for i in nll)}); "
                        "a branch has one classifier, so list at most one")
    return out


def _branches(raw: Any, base: Path, problems: list[str]) -> list[DataBranch] | None:
    """``[data]`` (one branch) or ``[[data]]`` (several): branch keys split off, the rest is the source."""
    if raw is None:
        problems.append("data: required table is missing")
        return None
    tables, single = ([raw], True) if isinstance(raw, dict) else (raw, False)
    if not isinstance(tables, list) or not tables:
        problems.append("data: expected a table ([data]) or a non-empty array of tables ([[data]])")
        return None
    out: list[DataBranch] = []
    seen: dict[str, str] = {}
    for i, table in enumerate(tables):
        path = "data" if single else f"data[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{path}: expected a table with a name, got {json.dumps(table)}")
            continue
        source_table = {k: v for k, v in table.items() if k not in BRANCH_KEYS}
        branch_opts = {k: v for k, v in table.items() if k in BRANCH_KEYS}
        component = _component(_DATA_KIND, source_table, path, base, problems)
        default_name = table.get("name") if isinstance(table.get("name"), str) else f"data{i}"
        name = branch_opts.pop("branch", default_name)
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\t\n"):
            problems.append(f"{path}.branch: expected a non-empty name without slashes, got {json.dumps(name)}")
            continue
        if name in seen:
            if "branch" in table:
                problems.append(f"{path}.branch: {name!r} is already the name of {seen[name]}")
                continue
            k = 2
            while f"{name}-{k}" in seen:
                k += 1
            name = f"{name}-{k}"
        seen[name] = path
        try:
            opts = structure(_BranchOptions, branch_opts, path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if component is not None:
            out.append(DataBranch(component, name, opts.batch_size, opts.weight, opts.sampler,
                                  opts.sampler_k, explicit=not single or bool(branch_opts)
                                  or "branch" in table))
    return out


@attrs.define
class _BranchOptions:
    batch_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(_gt0))
    weight: float = attrs.field(default=1.0, validator=_ge0)
    sampler: str = attrs.field(default="shuffle", validator=attrs.validators.in_(SAMPLERS))
    sampler_k: int = attrs.field(default=4, validator=_gt0)


def _validate(raw: Mapping[str, Any], base: Path, source: Path | None) -> Recipe:
    problems: list[str] = []
    for key in raw:
        if key not in _TOP_LEVEL:
            hint = closest(key, sorted(_TOP_LEVEL))
            problems.append(f"{key}: unknown key" + (f'; did you mean "{hint}"?' if hint else "")
                            + f" (valid keys: {', '.join(sorted(_TOP_LEVEL))})")
    parts: dict[str, Any] = {"head": None}
    for key, kind in _COMPONENTS.items():
        if key == "head" and key not in raw and (_embedding_only(raw.get("loss")) or not _method_needs_head(raw)):
            continue  # the objective has no classification loss (or the method no classifier): no head
        if key == "method" and key not in raw:
            parts[key] = _component(kind, {"name": DEFAULT_METHOD}, key, base, problems)
            continue
        if key not in raw:
            problems.append(f"{key}: required table is missing")
            continue
        parts[key] = _component(kind, raw[key], key, base, problems)
    parts["data"] = _branches(raw.get("data"), base, problems)
    for key, kind in _COMPONENT_LISTS.items():
        tables = raw.get(key, [])
        if isinstance(tables, dict):
            tables = [tables]
        if not isinstance(tables, list):
            problems.append(f"{key}: expected an array of tables ([[{key}]])")
            continue
        parts[key] = [_component(kind, t, f"{key}[{i}]", base, problems) for i, t in enumerate(tables)]
    try:
        train = structure(TrainConfig, raw.get("train", {}), "train")
    except ConfigError as exc:
        problems.extend(exc.problems)
        train = None
    classifier = _classifier(raw.get("classifier", {}), base, problems)
    losses = _losses(raw.get("loss"), base, problems)
    try:
        distributed = structure(DistributedConfig, raw.get("distributed", {}), "distributed")
    except ConfigError as exc:
        problems.extend(exc.problems)
        distributed = None
    seed, device, output_dir = raw.get("seed", 0), raw.get("device", "auto"), raw.get("output_dir")
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"seed: expected int, got {json.dumps(seed)}")
    elif not 0 <= seed <= INT_MAX:  # what torch.manual_seed and the samplers' generators accept
        problems.append(f"seed: {seed} is out of range (a seed must lie in 0 .. 2**63-1)")
    problem = check_device(device)
    if problem:
        problems.append(f"device: {problem}")
    if output_dir is not None and not isinstance(output_dir, str):
        problems.append(f"output_dir: expected string, got {json.dumps(output_dir)}")
    if train is not None and parts["data"]:
        for i, b in enumerate(parts["data"]):
            where = "data" if len(parts["data"]) == 1 and not b.explicit else f"data[{i}]"
            if b.sampler == "balanced" and b.batch(train) % b.images_per_identity:
                problems.append(f"{where}.sampler_k: the batch size {b.batch(train)} must be a multiple "
                                f"of sampler_k = {b.images_per_identity} (images per identity) for the balanced "
                                "sampler")
    if "head" in raw and not _method_needs_head(raw):
        problems.append(f"head: method {raw['method'].get('name')!r} builds no classifier, so [head] would be "
                        "unused; remove it")
    if parts["head"] is not None and losses and not any(t.takes == "nll" for t in losses):
        problems.append("head: the [[loss]] tables hold no classification loss (softmax, focal, ...), so no "
                        "classifier is built and the head would be unused; remove [head] or add one")
    if classifier is not None and classifier.mode == "sampled" and train is not None and train.accumulate > 1:
        problems.append('classifier.mode = "sampled" draws new negatives every micro-batch, so it cannot '
                        f"accumulate gradients (train.accumulate = {train.accumulate}); use mode = \"sharded\" "
                        "or accumulate = 1")
    if problems:
        raise ConfigError(problems)
    return Recipe(
        data=parts["data"],
        backbone=parts["backbone"],
        head=parts["head"],
        train=train,
        distributed=distributed,
        classifier=classifier if classifier is not None else ClassifierConfig(),
        loss=losses,
        method=parts["method"],
        augment=parts["augment"],
        eval=parts["eval"],
        seed=seed,
        device=device,
        output_dir=_resolve_paths(Path(output_dir), base) if output_dir else None,
        source=source,
    )


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``0.4``, ``"x"``, ``[1, 2]``, ``true``); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text and not any(c in text for c in "[]{}\"'=\n"):
            return text
        raise


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=TOML_VALUE`` overrides in place (integers index arrays of tables)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError([f"--set {item}: expected KEY.PATH=VALUE"])
        try:
            value = parse_value(text.strip())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"--set {key}: not a TOML value: {text!r} ({exc})"]) from None
        node: Any = raw
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError([f"--set {key}: {where}: no item {part} (array has {len(node)})"])
                idx = int(part)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
                continue
            if not isinstance(node, dict):
                raise ConfigError([f"--set {key}: {'.'.join(parts[:depth])} is not a table"])
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return raw


def loads(text: str, overrides: Sequence[str] = (), base: Path | None = None, source: Path | None = None) -> Recipe:
    """Validate recipe text; relative paths resolve against ``base`` (default: current directory)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source or '<recipe>'}: invalid TOML: {exc}"]) from None
    apply_overrides(raw, overrides)
    return _validate(raw, (base or Path.cwd()).resolve(), source)


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Read and validate a recipe file; see :func:`loads`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read recipe: {exc.strerror or exc}"]) from None
    try:
        return loads(text, overrides, base=path.resolve().parent, source=path)
    except ConfigError as exc:
        if exc.problems and exc.problems[0].startswith(str(path)):
            raise
        raise ConfigError([f"{path}: {p}" for p in exc.problems]) from None


# --- dumping (the resolved recipe saved in every run folder) ---------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, pathlib.PurePath):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else json.dumps(key)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _dump_table(data: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    for k, v in data.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in data.items():
        name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
        if isinstance(v, dict):
            lines.extend(["", f"[{name}]"])
            _dump_table(v, name, lines)
        elif _is_table_array(v):
            for item in v:
                lines.extend(["", f"[[{name}]]"])
                _dump_table(item, name, lines)


def dumps(data: Recipe | Mapping[str, Any]) -> str:
    """TOML text for a recipe (or any nested dict of TOML-able values)."""
    lines: list[str] = []
    _dump_table(data.to_dict() if isinstance(data, Recipe) else data, "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"
