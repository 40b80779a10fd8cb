"""The defense interface: one registry, one config dataclass per defense, hooks the trainer calls.

Why one interface: five paper defenses (BlurNet, FRU, PRN + detector, NRP,
Deep Defense) and the sticker defenses must train, compose, export and be
attacked alike.  A defense touches training in at most these places, and the
trainer calls each hook without knowing which defense it holds:

* **architecture** -- :meth:`Defense.model_options` (e.g. BlurNet's depthwise
  blur layer) and :meth:`Defense.wrap`, which puts parts in front of the
  classifier (purifier, rectifier, detector) as a :class:`DefendedModel`;
* **what trains** -- :meth:`Defense.trainable`: the whole classifier (joint
  training, the default) or only the defense's own parts with the classifier
  frozen (a rectifier's stage; start the classifier from ``model.init``);
* **around training** -- :meth:`Defense.prepare` (precomputed training material, e.g. a perturbation
  bank) and :meth:`Defense.finish` (fits after the last epoch, e.g. an SVM detector);
* **each batch** -- :meth:`Defense.transform` (input transforms, adversarial
  example generation), :meth:`Defense.forward` (a forward pass that also
  returns intermediate maps a loss needs) and :meth:`Defense.loss` (extra
  loss terms);
* **adaptive attacks** -- :meth:`Defense.attack_regularizer`, the term an
  attacker who knows the defense adds to its loss.

Adding a defense is one module with a ``@register_defense("kind")`` class and
one import line in :mod:`train.defenses`.  Defenses compose: a recipe's
``defense:`` may be a list, applied in order (see :class:`DefenseStack`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from edge.config import from_dict, to_dict
from edge.errors import ConfigError

Regularizer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Step:
    """Where the trainer is: enough for a defense to draw reproducible randomness for one batch."""

    epoch: int
    index: int  # first sample of the batch in the epoch's permutation
    seed: int  # the recipe's seed
    generator: torch.Generator  # the epoch's generator (also drives the shuffle): consume in a fixed order
    device: torch.device


class Defense:
    """Base class: every hook is a no-op, so a defense overrides only what it changes."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type] = type(None)
    owns_forward: ClassVar[bool] = False  # True when forward() is overridden (at most one per stack)

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # ------------------------------------------------------------------ architecture
    def model_options(self) -> dict[str, Any]:
        """Options the defense adds to the classifier's builder (recorded in the checkpoint)."""
        return {}

    def wrap(self, model: nn.Module) -> nn.Module:
        """Parts in front of the classifier; returns ``model`` itself when the defense adds none."""
        return model

    def trainable(self, model: nn.Module) -> Iterator[nn.Parameter] | None:
        """Parameters this defense's training stage updates; None = every parameter that requires grad."""
        return None

    # ------------------------------------------------------------------ training
    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once after the model is built and moved to ``device`` (e.g. build an attack on it)."""

    def prepare(self, model: nn.Module, data: Any, run_dir: Path, device: torch.device) -> None:
        """Called once before the first epoch with the training data and the run folder: precompute what
        training needs from the (frozen) classifier and the data, cached in ``run_dir`` (PRN's perturbation
        bank), so a resumed run reuses it."""

    def validate(self, model: nn.Module, split: Any, device: torch.device) -> float | None:
        """The score the best checkpoint is chosen by on the validation split; None = clean accuracy."""
        return None

    def validation_key(self) -> str | None:
        """What :meth:`validate`'s score depends on besides the model and the split (after :meth:`prepare`),
        e.g. a digest of the perturbations it applies; None = nothing.  A resumed run whose key changed
        restarts its model selection, because its scores are no longer comparable with the recorded best."""
        return None

    def finish(self, model: nn.Module, data: Any, run_dir: Path, device: torch.device) -> dict[str, Any] | None:
        """Called once on the best model after the last epoch, before it is saved: fit what gradient descent
        does not (PRN's SVM detector).  Returns metrics to record, or None."""
        return None

    def transform(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: Step
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch as the defense wants it (noise, adversarial examples); CPU tensors in, out."""
        return x, y

    def forward(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training forward pass: logits and the intermediate tensors :meth:`loss` needs."""
        return model(x), {}

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
             aux: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Extra loss term (already weighted), or None."""
        return None

    # ------------------------------------------------------------------ attacks
    def attack_regularizer(self) -> Regularizer | None:
        """The defense's term on first-layer maps that a defense-aware attacker adds to its loss, or None."""
        return None

    def describe(self) -> str:
        """The defense's hyper-parameters as the papers write them, for tables ("alpha=0.0001")."""
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in to_dict(self.cfg).items())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **to_dict(self.cfg)}


@dataclass
class NoConfig:
    """A defense without parameters."""


_REGISTRY: dict[str, type[Defense]] = {}


def register_defense(kind: str) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator: ``@register_defense("tv")`` on a :class:`Defense` subclass with a ``Config`` dataclass."""

    def deco(cls: type[Defense]) -> type[Defense]:
        if kind in _REGISTRY:
            raise ValueError(f"defense {kind!r} registered twice")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"defense {kind!r}: Config must be a dataclass")
        cls.kind = kind
        cls.owns_forward = cls.forward is not Defense.forward
        _REGISTRY[kind] = cls
        return cls

    return deco


def available_defenses() -> list[str]:
    return sorted(_REGISTRY)


def defense_from_dict(data: Any, where: str = "defense", ignore: tuple[str, ...] = ()) -> Defense:
    """One defense from ``{kind: ..., <its config fields>}``; unknown kinds and fields fail with ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'kind', got {data!r}")
    kind = data.get("kind", "none")
    if kind not in _REGISTRY:
        raise ConfigError(f"{where}.kind: expected one of {available_defenses()}, got {kind!r}")
    cls = _REGISTRY[kind]
    params = {k: v for k, v in data.items() if k != "kind"}
    known = {f.name for f in dataclasses.fields(cls.Config)}
    params = {k: v for k, v in params.items() if k in known or k not in ignore}
    return cls(from_dict(cls.Config, params, where))


class DefenseStack:
    """The defenses of one recipe, applied in order: transforms chain, losses add, wraps nest.

    Why a stack: a rectifier or detector goes in front of any registered classifier, and a classifier may
    combine training-time defenses (e.g. a BlurNet layer trained with adversarial examples).
    """

    def __init__(self, defenses: list[Defense]):
        owners = [d.kind for d in defenses if d.owns_forward]
        if len(owners) > 1:
            raise ConfigError(f"defense: {owners} each define the training forward pass; combine at most one")
        self.defenses = [d for d in defenses if d.kind != "none"]

    @classmethod
    def from_config(cls, data: Any, where: str = "defense", ignore: tuple[str, ...] = ()) -> DefenseStack:
        items = data if isinstance(data, list) else [data]
        if isinstance(data, list) and not data:
            raise ConfigError(f"{where}: expected a mapping or a non-empty list of mappings")
        single = not isinstance(data, list)
        return cls([defense_from_dict(d, where if single else f"{where}[{i}]", ignore) for i, d in enumerate(items)])

    @property
    def kind(self) -> str:
        """``tv``, ``input_blur+tv`` (a stack), or ``none``."""
        return "+".join(d.kind for d in self.defenses) or "none"

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.defenses) or "-"

    def to_config(self) -> Any:
        """Plain data for recipes and sidecars: one mapping for a single defense, a list for a stack."""
        items = [d.to_dict() for d in self.defenses] or [{"kind": "none"}]
        return items[0] if len(items) == 1 else items

    def model_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.defenses:
            out.update(d.model_options())
        return out

    def wrap(self, model: nn.Module) -> nn.Module:
        for d in self.defenses:
            model = d.wrap(model)
        return model

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        chosen = [d.trainable(model) for d in self.defenses]
        chosen = [list(c) for c in chosen if c is not None]
        if not chosen:
            return [p for p in model.parameters() if p.requires_grad]
        seen: dict[int, nn.Parameter] = {}
        for group in chosen:
            for p in group:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def setup(self, model: nn.Module, device: torch.device) -> None:
        for d in self.defenses:
            d.setup(model, device)

    def prepare(self, model: nn.Module, data: Any, run_dir: Path, device: torch.device) -> None:
        for d in self.defenses:
            d.prepare(model, data, run_dir, device)

    def validate(self, model: nn.Module, split: Any, device: torch.device) -> float | None:
        scores = [s for s in (d.validate(model, split, device) for d in self.defenses) if s is not None]
        return min(scores) if scores else None

    def validation_key(self) -> str | None:
        keys = [k for k in (d.validation_key() for d in self.defenses) if k is not None]
        return "+".join(keys) if keys else None

    def finish(self, model: nn.Module, data: Any, run_dir: Path, device: torch.device) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.defenses:
            out.update(d.finish(model, data, run_dir, device) or {})
        return out

    def transform(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: Step
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        for d in self.defenses:
            x, y = d.transform(model, x, y, step)
        return x, y

    def forward(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        owner = next((d for d in self.defenses if d.owns_forward), None)
        return owner.forward(model, x) if owner is not None else (model(x), {})

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
             aux: dict[str, torch.Tensor]) -> torch.Tensor | None:
        terms = [t for t in (d.loss(model, x, y, logits, aux) for d in self.defenses) if t is not None]
        if not terms:
            return None
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def attack_regularizer(self) -> Regularizer | None:
        regs = [r for r in (d.attack_regularizer() for d in self.defenses) if r is not None]
        if len(regs) > 1:
            return lambda f: sum(r(f) for r in regs)
        return regs[0] if regs else None


# ---------------------------------------------------------------------------- defended model


class DefendedModel(nn.Module):
    """Images in [0, 1] -> logits, with named parts that export emits as one graph or one graph per part.

    ``purifier`` (NRP) or ``rectifier`` (PRN) maps images to images in front of the ``classifier``.  With a
    ``detector`` (images -> one score per image, > 0 = perturbed), the rectified image is classified only
    where the detector fires and the original elsewhere -- PRN's decision rule, as a select inside the graph.
    """

    def __init__(self, classifier: nn.Module, purifier: nn.Module | None = None,
                 rectifier: nn.Module | None = None, detector: nn.Module | None = None):
        super().__init__()
        if purifier is not None and rectifier is not None:
            raise ConfigError("defense: a purifier and a rectifier both in front of one classifier; use one")
        if detector is not None and rectifier is None:
            raise ConfigError("defense: a detector selects between the input and the rectified input; "
                              "it needs a rectifier")
        front: dict[str, nn.Module] = {}
        if purifier is not None:
            front["purifier"] = purifier
        if rectifier is not None:
            front["rectifier" if detector is None else "gate"] = (
                rectifier if detector is None else _Gate(rectifier, detector))
        self.front = nn.ModuleDict(front)  # built once, in data order (the detector and rectifier form one gate)
        self.classifier = classifier

    @property
    def purifier(self) -> nn.Module | None:
        return self.front["purifier"] if "purifier" in self.front else None

    @property
    def rectifier(self) -> nn.Module | None:
        if "gate" in self.front:
            return self.front["gate"].rectifier
        return self.front["rectifier"] if "rectifier" in self.front else None

    @property
    def detector(self) -> nn.Module | None:
        return self.front["gate"].detector if "gate" in self.front else None

    def parts(self) -> dict[str, nn.Module]:
        """Named parts in data order, as export emits them: the front parts, then ``classifier``."""
        return {**self.front, "classifier": self.classifier}

    def front_of(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the classifier receives it (through every part in front of it)."""
        for part in self.front.values():
            x = part(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.front_of(x))


class _Gate(nn.Module):
    """Rectifier + detector: R(x) where the detector's score is > 0, x elsewhere.

    The detector is called as ``detector(x, R(x))`` (so the rectifier runs once) and returns one score per
    image, already offset by its threshold."""

    def __init__(self, rectifier: nn.Module, detector: nn.Module):
        super().__init__()
        self.rectifier, self.detector = rectifier, detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.select(x)[0]

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the classifier's input, the detector's score (N,), the decision (N,) bool)."""
        r = self.rectifier(x)
        score = self.detector(x, r).reshape(-1)
        fire = score > 0
        return torch.where(fire.reshape(-1, 1, 1, 1), r, x), score, fire


class GatedGraph(nn.Module):
    """A gated :class:`DefendedModel` as the device's one graph: images -> (logits, gate score, gate decision
    as 0/1 float).  The select picks the classifier's *input* (R(x) or x), so the classifier runs once per
    image instead of once per branch -- the same outputs as selecting between two classifier outputs."""

    def __init__(self, model: DefendedModel):
        super().__init__()
        if model.detector is None:
            raise ConfigError("GatedGraph: the model has no detector gate")
        self.front, self.classifier = model.front, model.classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for name, part in self.front.items():
            if name != "gate":
                x = part(x)
        chosen, score, fire = self.front["gate"].select(x)
        return self.classifier(chosen), score, fire.float()


def classifier_of(model: nn.Module) -> nn.Module:
    """The classifier inside a defended model or an inference wrapper (the model itself when it is bare)."""
    inner = getattr(model, "classifier", None)
    return inner if isinstance(inner, nn.Module) else model
