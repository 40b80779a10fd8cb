"""The localizer recipe (``configs/localizer.yaml``): data, model, optimisation, decoding, scene ranges.

Loaded by the project's one loader (:func:`edge.config.from_dict`): unknown
or ill-typed fields fail with the file and the dotted field; ``--set``
overrides work as for classifier recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge.config import check_choice, check_positive_ints, check_range, from_dict, to_dict
from edge.errors import ConfigError
from edge.localizer import DecodeConfig
from train.data.scenes import SceneConfig

DATA_KINDS = ("scenes", "coco", "lisa")


@dataclass
class LocalizerData:
    """``scenes``: render ``train`` + ``val`` scenes (seeds ``seed`` and ``seed + 1``) into ``cache``;
    ``coco``: a COCO JSON at ``path`` (its first ``val`` images, after a seeded shuffle, validate);
    ``lisa``: LISA frames under ``path`` (split by file the same way).  ``driveby``: also train on every
    ``driveby_every``-th frame of that many rendered drive-by videos (:mod:`train.data.driveby`, class k mod 18,
    seeds 100 + k: never the demo's seed 7), decoded from their MPEG-4 files as a camera loop reads them."""

    kind: str = "scenes"
    path: Optional[str] = None
    train: int = 2400
    val: int = 300
    seed: int = 0
    cache: str = "runs/localizer_data"
    driveby: int = 0
    driveby_every: int = 3

    def __post_init__(self) -> None:
        check_choice(self.kind, DATA_KINDS, "kind")
        if self.kind != "scenes" and not self.path:
            raise ConfigError("path: required for data kind %r" % self.kind)
        check_positive_ints(self, "train", "val", "driveby_every")
        if self.driveby < 0:
            raise ConfigError("driveby: expected a count >= 0, got %r" % (self.driveby,))


@dataclass
class LocalizerModel:
    """Architecture (see :mod:`train.localizer.model`) and the square input side S; ``init``: a localizer
    checkpoint (run folder) whose weights the run starts from (fine-tuning)."""

    name: str = "centernet_lite"
    input_size: int = 256
    widths: List[int] = field(default_factory=lambda: [16, 32, 48])
    dilations: List[int] = field(default_factory=lambda: [2, 4, 8])
    init: Optional[str] = None

    def __post_init__(self) -> None:
        if self.input_size < 64 or self.input_size % 8:
            raise ConfigError("input_size: expected a multiple of 8 >= 64, got %r" % (self.input_size,))
        if len(self.widths) != 3 or any(w < 4 for w in self.widths):
            raise ConfigError("widths: expected 3 channel counts >= 4, got %r" % (self.widths,))

    def options(self) -> Dict[str, Any]:
        return {"widths": list(self.widths), "dilations": list(self.dilations)}


@dataclass
class LocalizerOptim:
    """AdamW with a linear warm-up and a cosine decay per step; each sample is a random ``crop`` x ``crop``
    window of the S x S input (0 = the whole input): the net is fully convolutional, and a 192 px crop
    costs 56 % of a 256 px input, which is what lets a from-scratch training fit a shared CPU core."""

    epochs: int = 10
    batch_size: int = 16
    crop: int = 192
    lr: float = 3e-3
    weight_decay: float = 1e-4
    reg_weight: float = 1.0
    warmup_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_ints(self, "epochs", "batch_size")
        check_range(self.lr, "lr", lo=0, lo_open=True)
        if self.crop < 0 or self.crop % 8:
            raise ConfigError("crop: expected 0 or a multiple of 8, got %r" % (self.crop,))


@dataclass
class LocalizerRecipe:
    """A whole localizer recipe; ``target_fp_per_frame``: the operating score threshold is the lowest whose
    false positives per validation frame stay at or below it (written into the checkpoint's decode config)."""

    name: str = "localizer"
    data: LocalizerData = field(default_factory=LocalizerData)
    model: LocalizerModel = field(default_factory=LocalizerModel)
    optim: LocalizerOptim = field(default_factory=LocalizerOptim)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    scenes: SceneConfig = field(default_factory=SceneConfig)
    target_fp_per_frame: float = 0.05

    def __post_init__(self) -> None:
        check_range(self.target_fp_per_frame, "target_fp_per_frame", 0.0, 10.0)
        if self.optim.crop > self.model.input_size:
            raise ConfigError("optim.crop: %d is larger than model.input_size %d"
                              % (self.optim.crop, self.model.input_size))

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "recipe") -> LocalizerRecipe:
        return from_dict(cls, data, where)


def load_localizer_recipe(path: str, overrides: Optional[Dict[str, Any]] = None) -> LocalizerRecipe:
    """Load and validate ``configs/localizer.yaml``-style YAML; ``overrides`` maps dotted keys to values."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError("%s: config file not found" % p)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError("%s: not valid YAML (%s)" % (p, str(e).splitlines()[0])) from None
    if not isinstance(raw, dict):
        raise ConfigError("%s: expected a mapping with sections name, data, model, optim" % p)
    for key, value in (overrides or {}).items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("--set %s: %r is not a section" % (key, part))
        node[parts[-1]] = value
    return LocalizerRecipe.from_dict(raw, where=str(p))
