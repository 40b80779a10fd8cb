from pathlib import Path

import pytest

from edge.errors import ConfigError
from train.config import load_recipe, parse_overrides

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_recipe_is_valid(path):
    r = load_recipe(path)
    assert r.name == path.stem


def test_unknown_field_names_file_and_field(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ndefense: {kind: tv, alpah: 1.0e-4}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and "alpah" in str(e.value) and "defense" in str(e.value)


def test_ill_typed_field_names_the_dotted_field(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim: {epochs: many}\n")
    with pytest.raises(ConfigError, match=r"optim\.epochs: expected an integer"):
        load_recipe(p)


def test_bad_values_and_missing_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("defense: {kind: blur, kernel_size: 4}\n")
    with pytest.raises(ConfigError, match="kernel_size"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    p.write_text("data: {kind: npz}\n")
    with pytest.raises(ConfigError, match=r"data\.path"):
        load_recipe(p)


def test_overrides_are_parsed_and_validated(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\n")
    r = load_recipe(p, parse_overrides(["optim.epochs=3", "defense.kind=tv", "defense.alpha=1e-4"]))
    assert r.optim.epochs == 3 and r.defense.alpha == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
