"""NRP: the neural representation purifier (Naseer et al., CVPR 2020) as a part in front of any classifier.

The purifier is an image-to-image network trained once, label-free, on SSP
examples (:mod:`train.nrp_train`), and then put unchanged in front of
classifiers it never saw -- the paper's plug-and-play claim.  This module
holds the networks (purifier and critic, Sec. 3.3), the purifier's own
checkpoint format, and the ``purifier`` defense kind, whose ``wrap`` builds
``DefendedModel(classifier, purifier=Purifier(...))``: a combined checkpoint
(:func:`attach`) is then loaded, attacked, exported (one graph or two parts)
and verified like any other defended model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from edge.config import check_range, from_dict, to_dict
from edge.errors import ConfigError, SignguardError
from edge.fileio import atomic_write_bytes, atomic_write_json, sha256_file

from .base import DefendedModel, Defense, register_defense

PURIFIER_FORMAT = "signguard-purifier"


# ---------------------------------------------------------------------------- networks


class DenseBlock(nn.Module):
    """Residual dense block (ESRGAN's RDB, NRP Sec. 3.3): five 3x3 convs, each fed every earlier output
    (``nf + i * gc`` channels in), leaky ReLU after the first four, the fifth back to ``nf`` channels,
    added to the input with residual scale 0.2."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, padding=1) for i in range(5))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs[:4]:
            feats.append(self.act(conv(torch.cat(feats, 1))))
        return x + 0.2 * self.convs[4](torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, the whole added to its input with scale 0.2."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.blocks = nn.Sequential(DenseBlock(nf, gc), DenseBlock(nf, gc), DenseBlock(nf, gc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.blocks(x)


class Purifier(nn.Module):
    """NRP's generator P_theta: conv (3 -> nf), ``blocks`` RRDBs, conv (nf -> 3), clipped to [0, 1].

    No skip connection from input to output, by design (Sec. 3.3): a skip would carry the adversarial
    pattern straight through.  The clip keeps the output a valid image for the classifier behind it.
    Sized for 32x32 inputs: ``nf=16, gc=8, blocks=1`` has 17 convs (receptive field 35 px, the whole
    image) and 46k parameters, against the paper's 64/32/23 RRDBs at 128-480 px.

    Initialisation (not a skip): every dense block's last conv at zero (zero-initialised residual branches,
    Goyal et al. 2017), so each RRDB starts as ``x -> 1.2 x``, and the first/last convs copying RGB into the
    first three feature channels and back (gain 1.2**-blocks).  Training thus starts from the identity map
    rather than from noise: at our CPU budget of a few hundred steps the purifier spends them on removing
    perturbations, not on learning to reproduce images.  Every weight trains; nothing ties the output to
    the input (with the last conv at zero the output is zero).
    """

    def __init__(self, nf: int = 16, gc: int = 8, blocks: int = 1):
        super().__init__()
        if nf < 3:
            raise ConfigError(f"purifier.nf: expected at least 3 feature channels, got {nf}")
        self.conv_first = nn.Conv2d(3, nf, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(nf, gc) for _ in range(blocks)))
        self.conv_last = nn.Conv2d(nf, 3, 3, padding=1)
        with torch.no_grad():
            for m in self.trunk.modules():
                if isinstance(m, DenseBlock):
                    nn.init.zeros_(m.convs[4].weight)
                    nn.init.zeros_(m.convs[4].bias)
            for conv, w, gain in ((self.conv_first, self.conv_first.weight[:3], 1.0),
                                  (self.conv_last, self.conv_last.weight, 1.2 ** -blocks)):
                w.zero_()
                conv.bias[:3].zero_()
                for c in range(3):
                    w[c, c, 1, 1] = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.trunk(self.conv_first(x))).clamp(0.0, 1.0)


class Critic(nn.Module):
    """NRP's discriminator C_phi (Sec. 3.3): five VGG-style conv blocks (3x3 conv, batch norm, leaky ReLU;
    stride 2 in the last four) and a fully connected layer to one unnormalised score per image (on the 2x2
    maps a 32x32 input leaves; other sizes are average-pooled to 2x2 first)."""

    def __init__(self, width: int = 8):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1),
                       nn.BatchNorm2d(chans[i + 1]), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2))  # a no-op on 32x32 inputs
        self.fc = nn.Linear(chans[-1] * 2 * 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1)).squeeze(1)


# ---------------------------------------------------------------------------- the defense kind


@dataclass
class PurifierConfig:
    """The purifier's architecture (its weights live in the checkpoint that carries it)."""

    nf: int = 16
    gc: int = 8
    blocks: int = 1

    def __post_init__(self) -> None:
        check_range(self.nf, "nf", lo=3)  # the first three feature channels start as the RGB input
        check_range(self.gc, "gc", lo=1)
        check_range(self.blocks, "blocks", lo=1)


@register_defense("purifier")
class PurifierDefense(Defense):
    """An NRP purifier in front of the classifier: ``DefendedModel(classifier, purifier=Purifier(...))``.

    Not trained by ``signguard train``: NRP trains label-free with its own min-max loop (purifier vs critic,
    on SSP examples of a fixed extractor; ``signguard nrp train``), and :func:`attach` puts the result in
    front of a trained classifier.  A recipe that asks the cross-entropy trainer to train it is refused.
    """

    Config = PurifierConfig

    def wrap(self, model: nn.Module) -> nn.Module:
        return DefendedModel(model, purifier=Purifier(self.cfg.nf, self.cfg.gc, self.cfg.blocks))

    def setup(self, model: nn.Module, device: torch.device) -> None:
        raise ConfigError("defense.kind: purifier is trained label-free by 'signguard nrp train' and put in front "
                          "of a trained classifier by 'signguard nrp attach', not by 'signguard train'")


# ---------------------------------------------------------------------------- checkpoints


def save_part(run_dir: str | Path, module: nn.Module, architecture: dict[str, Any], meta: dict[str, Any],
              part: str = "purifier") -> Path:
    """``<run_dir>/<part>.safetensors`` + ``<part>.json`` (architecture, SHA-256 of the weights, ``meta``):
    the purifier, or the critic trained beside it."""
    run_dir = Path(run_dir)
    weights = run_dir / f"{part}.safetensors"
    atomic_write_bytes(weights, st_save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}))
    sidecar = run_dir / f"{part}.json"
    atomic_write_json(sidecar, {"format": PURIFIER_FORMAT, "part": part, "architecture": architecture,
                                "weights": weights.name, "weights_sha256": sha256_file(weights), **meta})
    return sidecar


def load_purifier(path: str | Path) -> tuple[Purifier, dict[str, Any]]:
    """A purifier saved by :func:`save_part` (its run folder or sidecar), hash checked, in eval mode."""
    path = Path(path)
    sidecar = path / "purifier.json" if path.is_dir() else path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except OSError:
        raise SignguardError(f"{sidecar}: purifier sidecar not found (train one with 'signguard nrp train')") from None
    except ValueError as e:
        raise SignguardError(f"{sidecar}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != PURIFIER_FORMAT or meta.get("part") != "purifier":
        raise SignguardError(f"{sidecar}: not a signguard purifier (format {PURIFIER_FORMAT!r}, part 'purifier')")
    weights = sidecar.parent / meta["weights"]
    if not weights.is_file() or sha256_file(weights) != meta["weights_sha256"]:
        raise SignguardError(f"{weights}: missing or its SHA-256 does not match {sidecar.name}; refusing to load")
    cfg = from_dict(PurifierConfig, meta["architecture"], f"{sidecar}: architecture")
    purifier = Purifier(cfg.nf, cfg.gc, cfg.blocks)
    purifier.load_state_dict(st_load(weights.read_bytes()), strict=True)
    return purifier.eval(), meta


def attach(purifier_dir: str | Path, classifier: str | Path, out_dir: str | Path, test: Any = None) -> dict[str, Any]:
    """Put a trained purifier in front of a trained classifier: one checkpoint ``<out_dir>/model.json``.

    The classifier's sidecar is kept (architecture, classes, preprocessing, recipe: its test split is the one
    every evaluation scores on); ``defense`` gains the ``purifier`` kind as the outermost part, and the
    metrics are re-measured on the purified test split (``test_acc``, beside the classifier's own as
    ``classifier_test_acc``: the clean accuracy cost).  ``test`` (a :class:`~train.data.datasets.Split`)
    replaces the classifier's recorded test split (tests).  Returns the new metrics.
    """
    from ..attacks.base import batched_predict
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..data.datasets import load_checkpoint_data
    from . import LEGACY_FIELDS
    from .base import DefenseStack

    purifier, pmeta = load_purifier(purifier_dir)
    model, meta = load_checkpoint(classifier)
    pcfg = from_dict(PurifierConfig, pmeta["architecture"], "purifier.architecture")
    inner = DefenseStack.from_config(meta.get("defense", {"kind": "none"}), ignore=LEGACY_FIELDS).to_config()
    defense = [d for d in (inner if isinstance(inner, list) else [inner]) if d["kind"] != "none"]
    defense.append({"kind": "purifier", **to_dict(pcfg)})
    defended = DefendedModel(model, purifier=purifier).eval()
    test = test if test is not None else load_checkpoint_data(meta, progress=False).test
    x, y = torch.from_numpy(test.x), torch.from_numpy(test.y)
    acc = float((batched_predict(defended, x) == y).float().mean())
    recipe = {**meta["recipe"], "defense": defense[0] if len(defense) == 1 else defense}
    metrics = {"test_acc": acc, "classifier_test_acc": meta.get("metrics", {}).get("test_acc"),
               "n_test": len(y)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in meta.items() if k in ("architecture", "classes", "preprocess", "data_hash", "epoch")}
    save_checkpoint(out / "model", defended, {
        **keep, "defense": recipe["defense"], "recipe": recipe, "metrics": metrics,
        "purifier": {"source": str(purifier_dir), "weights_sha256": pmeta["weights_sha256"]},
        "classifier": {"source": str(classifier), "weights_sha256": meta["weights_sha256"]},
    })
    return metrics
