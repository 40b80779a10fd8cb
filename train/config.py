"""Recipe configs: dataclasses validated on load, saved beside every checkpoint.

One YAML file per recipe in ``configs/``.  Loading goes through the project's
one loader (:func:`edge.config.from_dict`), which rejects unknown fields and
ill-typed values with the file and the dotted field, because a silently
ignored typo (``alpah: 1e-4``) trains the wrong defense for hours.  The
``defense`` section is a registered defense (or a list of them, applied in
order), each with its own config dataclass (:mod:`train.defenses`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config import check_choice, check_positive_ints, check_range, from_dict, to_dict
from edge.errors import ConfigError
from edge.preprocess import PreprocessConfig

DATA_KINDS = ("synthetic", "npz", "gtsrb", "lisa", "folder")
REQUIRED_SECTIONS = ("name", "data", "model", "optim")


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
    roi_jitter: float = 0.0  # synthetic train split only: crop boxes off by up to this fraction (datasets.jitter_box)

    def __post_init__(self) -> None:
        check_choice(self.kind, DATA_KINDS, "kind")
        if self.kind != "synthetic" and not self.path:
            raise ConfigError(f"path: required for data kind {self.kind!r}")
        check_range(self.val_fraction, "val_fraction", lo=0.0, hi=0.5, lo_open=True, hi_open=True)
        check_range(self.roi_jitter, "roi_jitter", lo=0.0, hi=0.5)
        if self.roi_jitter and self.kind != "synthetic":
            raise ConfigError(f"roi_jitter: only the synthetic renderer knows tight boxes (data kind {self.kind!r})")
        check_positive_ints(self, "train_per_class", "test_per_class")


@dataclass
class ModelConfig:
    """Registered architecture; ``input_norm`` is ``fixed`` or ``image`` (per-image standardisation).

    ``init``: a checkpoint (run folder or ``.json``) whose classifier weights the run starts from -- to
    fine-tune a trained model, or to train a defense's own parts in front of a frozen classifier.
    """

    name: str = "lisa_cnn"
    input_norm: str = "image"
    init: str | None = None

    def __post_init__(self) -> None:
        from .models import INPUT_NORMS, available_models  # torch import deferred to validation time

        if self.name not in available_models():
            raise ConfigError(f"name: unknown model {self.name!r} (known: {available_models()})")
        check_choice(self.input_norm, INPUT_NORMS, "input_norm")


def check_device(name: str) -> None:
    """A recipe's ``optim.device``: ``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")


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

    def __post_init__(self) -> None:
        check_positive_ints(self, "epochs", "batch_size")
        check_range(self.lr, "lr", lo=0, lo_open=True)
        check_range(self.label_smoothing, "label_smoothing", lo=0.0, hi=1.0, hi_open=True)
        check_device(self.device)


@dataclass
class Recipe:
    """A whole training recipe: data, model, defense(s), optimisation, preprocessing.

    ``defense`` is ``{kind: <registered defense>, <its fields>}`` or a list of them (applied in order); it is
    validated against each defense's own config and stored with every default filled in.
    """

    name: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    defense: Any = field(default_factory=lambda: {"kind": "none"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    preprocess: dict = field(default_factory=lambda: PreprocessConfig().to_dict())

    def __post_init__(self) -> None:
        self.defense = self.defenses().to_config()
        self.preprocess = self.preprocess_cfg().to_dict()

    def defenses(self, ignore: tuple[str, ...] = ()):
        """The recipe's :class:`~train.defenses.DefenseStack` (fresh defense objects on every call)."""
        from .defenses import DefenseStack

        return DefenseStack.from_config(self.defense, "defense", ignore)

    def preprocess_cfg(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess, where="preprocess")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "recipe") -> Recipe:
        return from_dict(cls, data, where)

    @classmethod
    def from_sidecar(cls, data: Any, where: str) -> Recipe:
        """A recipe recorded in a checkpoint.  Checkpoints written before the defense registry recorded every
        field of one flat defense config whatever the kind; those the kind does not use are dropped."""
        from .defenses import LEGACY_FIELDS, DefenseStack

        if isinstance(data, dict) and "defense" in data:
            stack = DefenseStack.from_config(data["defense"], f"{where}.defense", ignore=LEGACY_FIELDS)
            data = {**data, "defense": stack.to_config()}
        return cls.from_dict(data, where)


def read_yaml_mapping(path: str | Path, expected: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; one-line errors name the file (missing, unreadable, not YAML, or
    not a mapping: ``expected`` says what it should hold).  Shared by every recipe and config loader."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected {expected}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set dotted keys (CLI ``--set a.b=v``) in ``raw`` in place, creating sections as needed."""
    for key, value in (overrides or {}).items():
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = value
    return raw


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe YAML; ``overrides`` maps dotted keys to values (CLI ``--set``).

    The sections ``name``, ``data``, ``model`` and ``optim`` are required: an empty or truncated file must not
    start a default training run.
    """
    raw = read_yaml_mapping(path, f"a recipe mapping with sections {list(REQUIRED_SECTIONS)}")
    missing = [k for k in REQUIRED_SECTIONS if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {missing} (a recipe needs {list(REQUIRED_SECTIONS)})")
    return Recipe.from_dict(apply_overrides(raw, overrides), where=str(path))


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
