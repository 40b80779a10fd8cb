"""One command for the sticker-robustness tables of both datasets -> reports/sticker_robustness/tables.md.

    python bench/sticker_suite.py               # train / export what is missing, measure what changed, write
    python bench/sticker_suite.py --dry-run     # only say what that would train, export and measure
    python bench/sticker_suite.py --only doa_gtsrb32   # one model's row (parallel runs), no tables.md

``bench/sticker_suite.yaml`` lists the tables (one per dataset), their models and the attack settings.  A model
whose run folder is missing is trained with its recipe (``signguard train``), a missing bundle is exported
(``signguard export --precision fp32 int8``), and each row is measured by :mod:`bench.sticker_robustness` -- or
reused from ``<out>/rows/<table>/`` while the weights, the bundle and the attack settings are unchanged, so a
rerun after one model changed measures that model only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages, bench/ included

from bench import sticker_robustness as sr  # noqa: E402
from edge.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from edge.manifest import MANIFEST_NAME  # noqa: E402

SUITE = "bench/sticker_suite.yaml"
ATTACK_DEFAULTS = {"sign": "stop", "steps": 300, "views": 20, "heldout": 40, "seed": 0}
MODEL_FIELDS = {"label", "run", "config", "set", "bundle"}


class SuiteError(SystemExit):
    """A suite file that cannot be run: the message names the file and the field."""


@dataclass
class Entry:
    label: str
    run: str
    config: str
    set: list[str] = field(default_factory=list)
    bundle: str | None = None


@dataclass
class Table:
    name: str
    title: str
    models: list[Entry]


def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise SuiteError(f"{where}: {what}")


def load_suite(path: str | Path) -> tuple[dict, str, list[Table]]:
    """(attack settings, output folder, tables) from a suite YAML, with every field checked."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SuiteError(f"{path}: cannot read the suite ({e})") from None
    _need(isinstance(data, dict), str(path), "expected a mapping with attack, out and tables")
    attack = dict(ATTACK_DEFAULTS)
    given = data.get("attack") or {}
    _need(isinstance(given, dict), f"{path}: attack", "expected a mapping")
    unknown = set(given) - set(ATTACK_DEFAULTS)
    _need(not unknown, f"{path}: attack", f"unknown field(s) {sorted(unknown)}; expected {sorted(ATTACK_DEFAULTS)}")
    for k, v in given.items():
        _need(isinstance(v, type(ATTACK_DEFAULTS[k])) and not isinstance(v, bool), f"{path}: attack.{k}",
              f"expected {type(ATTACK_DEFAULTS[k]).__name__}, got {v!r}")
        _need(k == "sign" or v >= (0 if k == "seed" else 1), f"{path}: attack.{k}", f"must be positive, got {v}")
        attack[k] = v
    tables, names = [], set()
    raw_tables = data.get("tables")
    _need(isinstance(raw_tables, list) and raw_tables, f"{path}: tables", "expected a non-empty list")
    for i, t in enumerate(raw_tables):
        where = f"{path}: tables[{i}]"
        _need(isinstance(t, dict) and isinstance(t.get("name"), str), where, "expected a mapping with a name")
        _need(t["name"] not in names, where, f"table name {t['name']!r} is used twice")
        names.add(t["name"])
        models, labels = [], set()
        _need(isinstance(t.get("models"), list) and t["models"], f"{where}.models", "expected a non-empty list")
        for j, m in enumerate(t["models"]):
            mw = f"{where}.models[{j}]"
            _need(isinstance(m, dict), mw, "expected a mapping")
            unknown = set(m) - MODEL_FIELDS
            _need(not unknown, mw, f"unknown field(s) {sorted(unknown)}; expected {sorted(MODEL_FIELDS)}")
            for k in ("label", "run", "config"):
                _need(isinstance(m.get(k), str) and m[k], f"{mw}.{k}", "expected a non-empty string")
            _need(m["label"] not in labels, f"{mw}.label", f"{m['label']!r} is used twice in this table")
            labels.add(m["label"])
            sets = m.get("set") or []
            _need(isinstance(sets, list) and all(isinstance(s, str) and "=" in s for s in sets), f"{mw}.set",
                  "expected a list of KEY=VALUE strings")
            _need(m.get("bundle") is None or isinstance(m["bundle"], str), f"{mw}.bundle", "expected a path")
            models.append(Entry(m["label"], m["run"], m["config"], sets, m.get("bundle")))
        tables.append(Table(t["name"], str(t.get("title", t["name"])), models))
    out = data.get("out", "reports/sticker_robustness")
    _need(isinstance(out, str) and out, f"{path}: out", "expected a folder path")
    return attack, out, tables


def build_steps(tables: list[Table]) -> list[list[str]]:
    """The ``signguard`` command lines that make the missing runs and bundles, in the suite's order (``--resume``:
    an interrupted training continues where it stopped)."""
    steps: list[list[str]] = []
    planned: set[str] = set()
    for t in tables:
        for m in t.models:
            if not (Path(m.run) / "model.json").is_file() and m.run not in planned:
                steps.append(["train", "--config", m.config, "--run-dir", m.run, "--resume", "--quiet",
                              *[a for s in m.set for a in ("--set", s)]])
                planned.add(m.run)
            if m.bundle and not (Path(m.bundle) / MANIFEST_NAME).is_file() and m.bundle not in planned:
                steps.append(["export", "--checkpoint", m.run, "--out", m.bundle, "--precision", "fp32", "int8",
                              "--quiet"])
                planned.add(m.bundle)
    return steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=SUITE, help="suite YAML (default %(default)s)")
    p.add_argument("--only", nargs="+", metavar="LABEL",
                   help="build and measure only these models (rows for parallel runs; tables.md is not written)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and attacks (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print what would be trained, exported and measured")
    args = p.parse_args()
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    attack, out, tables = load_suite(args.suite)
    if args.only:
        labels = {m.label for t in tables for m in t.models}
        if set(args.only) - labels:
            raise SystemExit(f"--only {sorted(set(args.only) - labels)}: {args.suite} has models {sorted(labels)}")
        tables = [Table(t.name, t.title, [m for m in t.models if m.label in args.only]) for t in tables]
        tables = [t for t in tables if t.models]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for step in build_steps(tables):
        print("$ signguard " + " ".join(step), flush=True)
        if not args.dry_run:
            subprocess.run([sys.executable, "-m", "signguard", *step], check=True, env=env)
    if args.dry_run:
        for t in tables:
            print(f"{t.name}: rows for {', '.join(m.label for m in t.models)} (cached rows in {out}/rows/{t.name})")
        return

    import torch

    from train.attacks.views import render_views
    from train.data.classes import LISA_INDEX

    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(**attack)
    cls = LISA_INDEX[attack["sign"]]
    train_views, heldout = render_views(cls, attack["views"], 1), render_views(cls, attack["heldout"], 2)
    regenerate = "python bench/sticker_suite.py" + ("" if args.suite == SUITE else f" --suite {args.suite}")
    md = [f"# Sticker robustness on the synthetic {attack['sign']} sign, both datasets", "",
          f"Regenerate: `{regenerate}` (models, recipes and bundles: `{args.suite}`; each row is cached in "
          f"`{out}/rows/<table>/` by weights, bundle and attack settings).  {sr.settings_text(ns)}.", ""]
    results = {"attack": attack, "tables": {}}
    for t in tables:
        rows = [sr.cached_row(m.label, m.run, ns, train_views, heldout, Path(out) / "rows" / t.name, m.bundle)
                for m in t.models]
        results["tables"][t.name] = rows
        times = ", ".join(f"{r['model']} {r['seconds']:.0f} s" for r in rows)
        md += [f"## {t.title}", "", *sr.table_lines(rows), "",
               f"Attack time per model (one thread, when its row was measured): {times}.", ""]
    md += [sr.attacker_note([r for rows in results["tables"].values() for r in rows]), ""]
    if not args.only:  # a partial run must not replace the whole table
        atomic_write_json(Path(out) / "tables.json", results)
        atomic_write_text(Path(out) / "tables.md", "\n".join(md))
        print(f"wrote {out}/tables.md")
    else:
        print(json.dumps({t: [r["model"] for r in rows] for t, rows in results["tables"].items()}))


if __name__ == "__main__":
    main()
