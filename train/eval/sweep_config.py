"""The sweep YAML of ``signguard eval`` as typed dataclasses, and its quick profile.

One loader (:func:`edge.config.from_dict`) for the sweep's own sections; each
attack entry is checked against the attack class it names: its keys are the
sweep-level keys of its kind (:data:`ENTRY_KEYS`) plus the hyper-parameters of
the class (:func:`train.attacks.base.hyperparameters`, i.e. its constructor's
signature), typed by the class's annotations.  A key in neither fails with its
dotted path (``x.yaml: attacks[2].stepz: unknown parameter of PGD (known:
...)``).  A hyper-parameter an entry does not give is not passed, so the
class's default applies; :attr:`AttackEntry.config` records the attack's
effective configuration (class defaults included), which reports print.

Attack kinds (``kind:``):

* ``rp2`` -- white-box RP2 sticker, all targets but the true class batched
  (:mod:`train.attacks.rp2`), optimised on ``views.train`` poses and scored
  by re-rendering ``views.heldout`` poses with the sticker.  ``dct_dim``
  makes it BlurNet's low-frequency adaptive attack (Eq. 8);
  ``adaptive: regularizer`` adds the model's own training regulariser to the
  attack loss (Eq. 9-11).
* ``rp2_transfer`` -- black-box transfer (BlurNet Table I): stickers made on
  ``source`` are scored on ``source`` with a fixed k x k box blur on the
  input (``input_blur``) or on the first-layer feature maps
  (``feature_blur``), without retraining.
* ``pgd``, ``fgsm``, ``deepfool``, ``uap``, ``roa``, ``mifgsm`` -- pixel-space attacks on the
  held-out views (``images: views``) or on ``n`` images of the model's
  synthetic test split (``images: test``).
* ``ssp`` -- NRP's label-free feature-space attack, crafted on its own
  ``extractor`` (a transfer attack to every model it is scored on).

``craft_on`` (pixel kinds and ``rp2``) says which model the attack
differentiates, for models with parts in front of the classifier (a purifier):
``model`` (default) -- the whole model end to end, the adaptive white-box
attack (through :func:`train.attacks.adaptive_view.attacker_view`'s
surrogate for a model whose deployed decision has no useful gradient: the
PRN gate, column smoothing, PatchCleanser; scored on the deployed decision);
``classifier`` -- the classifier alone, its examples then scored on
the whole model (the attacker has the classifier's weights, not the
purifier's); ``bpda`` -- the whole model with the front parts' backward pass
replaced by the identity (BPDA, Athalye et al. 2018).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from edge.config import check_choice, check_range, coerce, from_dict, to_dict
from edge.errors import ConfigError, SignguardError

from ..attacks.base import hyperparameters
from ..attacks.deepfool import DeepFool
from ..attacks.fgsm import FGSM
from ..attacks.mifgsm import MIFGSM
from ..attacks.pgd import PGD
from ..attacks.roa import ROA
from ..attacks.rp2 import RP2
from ..attacks.ssp import SSP
from ..attacks.uap import UAP
from ..data.classes import LISA_INDEX

#: kind -> the attack class that runs it
ATTACKS: Dict[str, type] = {"rp2": RP2, "rp2_transfer": RP2, "pgd": PGD, "fgsm": FGSM, "deepfool": DeepFool,
                            "uap": UAP, "roa": ROA, "mifgsm": MIFGSM, "ssp": SSP}
KINDS = tuple(ATTACKS)
PIXEL_KINDS = ("pgd", "fgsm", "deepfool", "uap", "roa", "mifgsm", "ssp")
THREAT = {
    "rp2": "white-box, sticker inside the mask on the sign (RP2 + EOT), targeted; scored on held-out poses",
    "rp2_transfer": "black-box transfer: stickers made on the source model, scored on blurred variants",
    "pgd": "white-box, pixel-space, untargeted",
    "fgsm": "white-box, pixel-space, untargeted, one step",
    "deepfool": "white-box, pixel-space, untargeted, minimal L2 perturbation",
    "uap": "white-box, one universal perturbation for all images, untargeted",
    "roa": "white-box, physically realisable: one opaque rectangle anywhere on the image (ROA, DOA Sec. 3), "
           "untargeted",
    "mifgsm": "white-box, pixel-space, untargeted, momentum iterative FGSM (a transfer attack when crafted on "
              "another model)",
    "ssp": "label-free feature-space attack crafted on its own feature extractor (NRP Algorithm 1): a transfer "
           "attack to the scored model",
}
#: craft_on -> how the threat-model line reads (``model``: the kind's own line says it)
CRAFT_ON = {
    "model": "",
    "classifier": "; crafted on the classifier alone and scored through the model's front parts (purifier): "
                  "the attacker has the classifier, not the purifier",
    "bpda": "; adaptive: crafted end to end with the front parts' gradient replaced by the identity (BPDA)",
}
_COMMON = ("name", "kind", "models")
#: kind -> the sweep-level keys its entries may hold (besides the attack class's hyper-parameters)
ENTRY_KEYS: Dict[str, tuple] = {
    "rp2": _COMMON + ("adaptive", "craft_on"),
    "rp2_transfer": _COMMON + ("source", "input_blur", "feature_blur"),
    **{k: _COMMON + ("images", "n", "craft_on") for k in PIXEL_KINDS},
}


@dataclass
class AttackEntry:
    """One attack of a sweep: which models it runs on and on what (sweep-level keys), and ``params``, the
    attack's hyper-parameters exactly as the YAML gives them (typed); ``config`` is the attack's effective
    configuration (:meth:`~train.attacks.base.Attack.config`, class defaults included)."""

    name: str
    kind: str
    models: Optional[List[str]] = None  # None: every model (rp2_transfer: its source)
    adaptive: Optional[str] = None  # rp2: "regularizer" adds the model's training regulariser (Eq. 9-11)
    source: Optional[str] = None  # rp2_transfer: the model the stickers are made on
    input_blur: List[int] = field(default_factory=list)  # rp2_transfer: k x k input box blurs
    feature_blur: List[int] = field(default_factory=list)  # rp2_transfer: k x k blurs on the conv1 maps
    images: str = "views"  # pixel kinds: held-out sign views, or the model's test split
    n: int = 500  # pixel kinds with images: test -- images drawn from the test split
    craft_on: str = "model"  # pixel kinds, rp2: model (end to end), classifier (transfer) or bpda
    params: Dict[str, Any] = field(default_factory=dict, init=False)
    config: Dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        check_choice(self.kind, KINDS, "kind")
        if self.adaptive is not None:
            check_choice(self.adaptive, ("regularizer",), "adaptive")
        check_choice(self.images, ("views", "test"), "images")
        check_choice(self.craft_on, tuple(CRAFT_ON), "craft_on")
        check_range(self.n, "n", lo=1)
        for key in ("input_blur", "feature_blur"):
            if any(k < 1 or k % 2 == 0 for k in getattr(self, key)):
                raise ConfigError(f"{key}: expected odd kernel sizes >= 1, got {getattr(self, key)}")

    def make(self, model: nn.Module, **runtime: Any) -> Any:
        """The attack on ``model``: the class of ``kind`` with the entry's ``params`` (nothing else, so the
        class defaults apply) and ``runtime`` arguments such as ``feature_penalty`` or ``progress``."""
        return ATTACKS[self.kind](model, **self.params, **runtime)


@dataclass
class ViewsConfig:
    """Rendered poses of ``sign``: ``train`` to optimise stickers on, ``heldout`` to score every attack on."""

    train: int = 40
    heldout: int = 40
    train_seed: int = 1
    heldout_seed: int = 2

    def __post_init__(self) -> None:
        check_range(self.train, "train", lo=1)
        check_range(self.heldout, "heldout", lo=1)


@dataclass
class StickerConfig:
    """Physical size of the printed stickers (the sign's width) and print resolution."""

    sign_width_mm: float = 750.0
    dpi: int = 150

    def __post_init__(self) -> None:
        check_range(self.sign_width_mm, "sign_width_mm", lo=0, lo_open=True)
        check_range(self.dpi, "dpi", lo=1)


@dataclass
class QuickConfig:
    """The reduced profile (``--quick``): fewer models and views, per-kind parameter overrides, fewer attacks."""

    note: str = ""
    models: Optional[List[str]] = None
    views: Dict[str, Any] = field(default_factory=dict)
    attack_overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    drop_attacks: List[str] = field(default_factory=list)


@dataclass
class SweepConfig:
    """A parsed sweep YAML (see ``configs/eval/blurnet.yaml``); ``source`` is the file it was read from."""

    name: str
    models: Dict[str, str]
    attacks: List[AttackEntry] = field(default_factory=list)  # parsed per entry, see _entry
    sign: str = "stop"
    views: ViewsConfig = field(default_factory=ViewsConfig)
    seed: int = 0
    sticker: StickerConfig = field(default_factory=StickerConfig)
    quick: QuickConfig = field(default_factory=QuickConfig)
    source: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models: must map a label to a run folder or checkpoint")
        if self.sign not in LISA_INDEX:
            raise ConfigError(f"sign: unknown class {self.sign!r}")


def load_sweep(path: str | Path, quick: bool = False, root: Path | None = None) -> SweepConfig:
    """Parse and validate a sweep YAML; with ``quick`` apply its ``quick:`` block (fewer models, steps, views).

    Relative model paths are resolved against ``root`` (default: the working directory).  The quick block is
    validated even without ``quick``, so a typo in it fails before the long run that would not use it.
    """
    from ..config import read_yaml_mapping

    path = Path(path)
    raw = read_yaml_mapping(path, "a mapping at the top level")
    attacks = raw.pop("attacks", None)
    try:
        cfg = from_dict(SweepConfig, raw, str(path))
    except ConfigError as e:  # "x.yaml.views.train: ..." -> "x.yaml: views.train: ..."
        msg = str(e)
        raise ConfigError(msg.replace(f"{path}.", f"{path}: ", 1)) from None
    if not isinstance(attacks, list) or not attacks:
        raise ConfigError(f"{path}: attacks: expected a non-empty list of attack entries")
    cfg.attacks = [_entry(a, f"{path}: attacks[{i}]", cfg) for i, a in enumerate(attacks)]
    names = [a.name for a in cfg.attacks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{path}: attacks[{i}].name: {name!r} used twice")
    quick_cfg = _quick(cfg, attacks, path)
    if quick:
        cfg = quick_cfg
    base = root or Path.cwd()
    cfg.models = {k: str(v if Path(v).is_absolute() else base / v) for k, v in cfg.models.items()}
    cfg.source = str(path)
    return cfg


def _entry(raw: Any, where: str, cfg: SweepConfig, overrides: Dict[str, Any] | None = None) -> AttackEntry:
    """One attack entry: sweep-level keys through :func:`from_dict`, the rest checked against the attack
    class's own hyper-parameters (names and annotations), then the attack is built on a placeholder model so
    that its range checks run now and :attr:`AttackEntry.config` holds what it will run with."""
    if not isinstance(raw, dict) or "name" not in raw or "kind" not in raw:
        raise ConfigError(f"{where}: expected a mapping with name and kind")
    kind = raw["kind"]
    if kind not in ATTACKS:
        raise ConfigError(f"{where}.kind: expected one of {list(KINDS)}, got {kind!r}")
    raw = {**raw, **(overrides or {})}
    params = check_params(kind, {k: v for k, v in raw.items() if k not in ENTRY_KEYS[kind]}, where)
    entry = from_dict(AttackEntry, {k: v for k, v in raw.items() if k in ENTRY_KEYS[kind]}, where)
    for m in entry.models or []:
        if m not in cfg.models:
            raise ConfigError(f"{where}.models: unknown model label {m!r} (known: {sorted(cfg.models)})")
    if entry.source is not None and entry.source not in cfg.models:
        raise ConfigError(f"{where}.source: unknown model label {entry.source!r} (known: {sorted(cfg.models)})")
    entry.params = params
    try:
        entry.config = entry.make(nn.Identity()).config()
    except SignguardError as e:
        raise ConfigError(f"{where}: {e}") from None
    return entry


def check_params(kind: str, params: Dict[str, Any], where: str) -> Dict[str, Any]:
    """``params`` checked against the hyper-parameters of ``kind``'s attack class: an unknown name fails
    with ``where.name``; a value is checked against the constructor's annotation (ints where the class says
    ``int``, numbers where it says ``float``, ...).  Returns the values as typed; names not given stay absent."""
    cls = ATTACKS[kind]
    known = hyperparameters(cls)
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for key, value in params.items():
        if key not in known:
            allowed = sorted(known) + sorted(ENTRY_KEYS[kind])
            raise ConfigError(f"{where}.{key}: unknown parameter of {cls.__name__} (known: {allowed})")
        out[key] = coerce(value, _yaml_type(hints.get(key, Any)), f"{where}.{key}")
    return out


def _yaml_type(tp: Any) -> Any:
    """An annotation as a YAML value can satisfy it: a path is given as a string."""
    if tp is Path:
        return str
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.Union[tuple(_yaml_type(a) for a in typing.get_args(tp))]
    return tp


def _quick(cfg: SweepConfig, raw_attacks: List[Any], path: Path) -> SweepConfig:
    """``cfg`` reduced by its ``quick:`` block: its models, its views, its per-kind parameter overrides
    (each checked against the attack class like an entry), without its dropped attacks."""
    q, where = cfg.quick, f"{path}: quick"
    for key, labels, known in (("models", q.models or [], cfg.models),
                               ("drop_attacks", q.drop_attacks, [a.name for a in cfg.attacks])):
        for label in labels:
            if label not in known:
                raise ConfigError(f"{where}.{key}: unknown name {label!r} (known: {sorted(known)})")
    for kind, over in q.attack_overrides.items():
        w = f"{where}.attack_overrides.{kind}"
        if kind not in ATTACKS:
            raise ConfigError(f"{w}: expected an attack kind, one of {list(KINDS)}")
        fixed = [k for k in over if k in ("name", "kind")]
        if fixed:
            raise ConfigError(f"{w}.{fixed[0]}: cannot be overridden")
        check_params(kind, {k: v for k, v in over.items() if k not in ENTRY_KEYS[kind]}, w)
    models = {k: v for k, v in cfg.models.items() if q.models is None or k in q.models}
    views = from_dict(ViewsConfig, {**to_dict(cfg.views), **q.views}, f"{where}.views")
    out = dataclasses.replace(cfg, models=models, views=views, attacks=[])
    for i, raw in enumerate(raw_attacks):
        if raw["name"] in q.drop_attacks:
            continue
        over = q.attack_overrides.get(raw["kind"])
        w = f"{path}: attacks[{i}]" + (f" (with quick.attack_overrides.{raw['kind']})" if over else "")
        a = _entry(raw, w, cfg, over)
        if a.models is not None:  # an attack whose models the profile drops runs on none of them
            a.models = [m for m in a.models if m in models]
        out.attacks.append(a)
    return out
