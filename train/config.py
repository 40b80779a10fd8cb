"""Recipe configs: dataclasses validated on load, saved beside every checkpoint.

One YAML file per recipe in ``configs/``.  Loading rejects unknown fields and
ill-typed values with a message naming the file and the dotted field, because
a silently ignored typo (``alpah: 1e-4``) trains the wrong defense for hours.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ConfigError
from edge.preprocess import PreprocessConfig

DATA_KINDS = ("synthetic", "npz", "gtsrb", "lisa", "folder")
DEFENSES = ("none", "blur", "tv", "tik_hf", "tik_pseudo", "gaussian", "pgd_at")


@dataclass
class DataConfig:
    """Where images come from.  ``synthetic`` is the embedded procedural renderer."""

    kind: str = "synthetic"
    path: str | None = None
    train_per_class: int = 500  # synthetic only
    test_per_class: int = 100  # synthetic only
    val_fraction: float = 0.1
    seed: int = 0
    augment: bool = True  # light geometric/photometric jitter on real data

    def check(self, where: str) -> None:
        if self.kind not in DATA_KINDS:
            raise ConfigError(f"{where}.kind: expected one of {DATA_KINDS}, got {self.kind!r}")
        if self.kind != "synthetic" and not self.path:
            raise ConfigError(f"{where}.path: required for data kind {self.kind!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"{where}.val_fraction: expected a number in (0, 0.5), got {self.val_fraction!r}")
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: expected a positive integer")


@dataclass
class DefenseConfig:
    """BlurNet family (paper Sec. III-IV) and the Gaussian-augmentation baseline.

    - ``blur``: depthwise ``kernel_size`` blur after conv1; ``learnable`` with
      the L-inf weight penalty of Eq. 2 (weight ``alpha``), else a fixed box blur.
    - ``tv``: total variation of conv1 maps, Eq. 4.
    - ``tik_hf``: ||(I - L_avg) F||_2, Eq. 6 (``window`` = moving-average width).
    - ``tik_pseudo``: ||L_diff^+ (.) F||_2, Eq. 7.
    - ``gaussian``: train on x + N(0, sigma^2).
    - ``pgd_at``: PGD adversarial training (Madry et al.; BlurNet's Adv-train
      baseline): ``adv_fraction`` of every batch replaced by L-inf PGD
      examples (``eps``, ``attack_steps`` steps of ``step_size``).
    """

    kind: str = "none"
    alpha: float = 0.0
    kernel_size: int = 5
    learnable: bool = True
    window: int = 3
    sigma: float = 0.0
    eps: float = 8 / 255
    attack_steps: int = 7
    step_size: float = 2 / 255
    adv_fraction: float = 0.5

    def check(self, where: str) -> None:
        if self.kind not in DEFENSES:
            raise ConfigError(f"{where}.kind: expected one of {DEFENSES}, got {self.kind!r}")
        if self.alpha < 0:
            raise ConfigError(f"{where}.alpha: must be >= 0")
        if self.kind == "blur" and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ConfigError(f"{where}.kernel_size: expected an odd positive integer, got {self.kernel_size}")
        if self.kind == "tik_hf" and (self.window < 2):
            raise ConfigError(f"{where}.window: expected >= 2, got {self.window}")
        if self.kind == "gaussian" and self.sigma <= 0:
            raise ConfigError(f"{where}.sigma: expected > 0 for the gaussian defense")
        if self.kind == "pgd_at":
            if not (0 < self.eps <= 1 and 0 < self.step_size <= 1):
                raise ConfigError(f"{where}.eps/step_size: expected numbers in (0, 1]")
            if self.attack_steps < 1:
                raise ConfigError(f"{where}.attack_steps: expected >= 1, got {self.attack_steps}")
            if not 0 < self.adv_fraction <= 1:
                raise ConfigError(f"{where}.adv_fraction: expected a number in (0, 1], got {self.adv_fraction}")


@dataclass
class ModelConfig:
    """Registered architecture; ``input_norm`` is ``fixed`` or ``image`` (per-image standardisation)."""

    name: str = "lisa_cnn"
    input_norm: str = "image"

    def check(self, where: str) -> None:
        from .models import INPUT_NORMS, available_models  # torch import deferred to validation time

        if self.name not in available_models():
            raise ConfigError(f"{where}.name: unknown model {self.name!r} (known: {available_models()})")
        if self.input_norm not in INPUT_NORMS:
            raise ConfigError(f"{where}.input_norm: expected one of {INPUT_NORMS}, got {self.input_norm!r}")


@dataclass
class OptimConfig:
    """Adam with the paper's betas/eps (BlurNet Sec. II-C); AdamW when weight_decay > 0."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # cross-entropy target smoothing (helps the small, noisy real sets)
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # 0 = torch default

    def check(self, where: str) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"{where}: epochs and batch_size must be positive")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: must be > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{where}.label_smoothing: expected a number in [0, 1), got {self.label_smoothing!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"{where}.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class Recipe:
    """A whole training recipe: data, model, defense, optimisation, preprocessing."""

    name: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    preprocess: dict = field(default_factory=lambda: PreprocessConfig().to_dict())

    def check(self, where: str = "recipe") -> None:
        self.data.check(f"{where}.data")
        self.model.check(f"{where}.model")
        self.defense.check(f"{where}.defense")
        self.optim.check(f"{where}.optim")
        self.preprocess_cfg(where)

    def preprocess_cfg(self, where: str = "recipe") -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess, where=f"{where}.preprocess")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown and ill-typed fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} (known: {sorted(names)})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe YAML; ``overrides`` maps dotted keys to values (CLI ``--set``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    for key, value in (overrides or {}).items():
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    try:
        recipe = from_dict(Recipe, raw, where=str(path))
        recipe.check(where=str(path))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    return recipe


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.epochs=3", "defense.alpha=1e-4"]`` -> dict, values parsed as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out
