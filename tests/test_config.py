from pathlib import Path

import pytest

from edge.errors import ConfigError
from train.config import Recipe, load_recipe, parse_overrides

# classifier recipes (signguard train); nrp.yaml and localizer.yaml configure their own commands
# (signguard nrp train, signguard localizer train), whose loaders their tests cover
OTHER_COMMANDS = ("nrp", "localizer")
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                 if p.stem not in OTHER_COMMANDS)
SECTIONS = "name: x\ndata: {kind: synthetic}\nmodel: {name: lisa_cnn_tiny}\noptim: {epochs: 1}\n"


def _recipe_file(tmp_path, extra: str = "", base: str = SECTIONS) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(base + extra)
    return p


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_recipe_is_valid(path):
    r = load_recipe(path)
    assert r.name == path.stem


def test_unknown_field_names_file_and_field(tmp_path):
    p = _recipe_file(tmp_path, "defense: {kind: tv, alpah: 1.0e-4}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(e.value).startswith(f"{p}.defense: unknown field(s) ['alpah']")


def test_field_of_another_defense_is_unknown(tmp_path):
    """Each defense has its own config: a BlurNet field on the TV penalty is a mistake, not a no-op."""
    with pytest.raises(ConfigError, match=r"defense: unknown field\(s\) \['kernel_size'\]"):
        load_recipe(_recipe_file(tmp_path, "defense: {kind: tv, kernel_size: 3}\n"))
    with pytest.raises(ConfigError, match=r"defense\.kind: expected one of .*'tv'.*got 'tvv'"):
        load_recipe(_recipe_file(tmp_path, "defense: {kind: tvv}\n"))
    with pytest.raises(ConfigError, match=r"defense\[1\]\.sigma: expected a number in \(0"):
        load_recipe(_recipe_file(tmp_path, "defense: [{kind: tv}, {kind: gaussian, sigma: 0}]\n"))


def test_ill_typed_field_names_the_dotted_field(tmp_path):
    p = _recipe_file(tmp_path, base=SECTIONS.replace("{epochs: 1}", "{epochs: many}"))
    with pytest.raises(ConfigError, match=r"optim\.epochs: expected an integer"):
        load_recipe(p)


def test_bad_values_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"defense\.kernel_size: expected an odd positive integer"):
        load_recipe(_recipe_file(tmp_path, "defense: {kind: blur, kernel_size: 4}\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"data\.path: required"):
        load_recipe(_recipe_file(tmp_path, base=SECTIONS.replace("{kind: synthetic}", "{kind: npz}")))


@pytest.mark.parametrize("text", ["", "name: x\n", "- a\n- b\n"])
def test_empty_or_partial_recipe_is_refused(tmp_path, text):
    """An empty file or one with only a name must not start a default training run."""
    with pytest.raises(ConfigError, match=r"(missing section|expected a recipe mapping)"):
        load_recipe(_recipe_file(tmp_path, base=text))


def test_overrides_are_parsed_and_validated(tmp_path):
    p = _recipe_file(tmp_path)
    r = load_recipe(p, parse_overrides(["optim.epochs=3", "defense.kind=tv", "defense.alpha=1e-4"]))
    assert r.optim.epochs == 3 and r.defense == {"kind": "tv", "alpha": pytest.approx(1e-4)}
    assert r.defenses().attack_regularizer() is not None
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match=r"--set name\.x: 'name' is not a section"):
        load_recipe(p, {"name.x": 1})


def test_recipe_records_every_default_and_round_trips(tmp_path):
    r = load_recipe(_recipe_file(tmp_path, "defense: {kind: pgd_at}\n"))
    assert r.defense == {"kind": "pgd_at", "eps": pytest.approx(8 / 255), "attack_steps": 7,
                         "step_size": pytest.approx(2 / 255), "adv_fraction": 0.5}
    assert Recipe.from_dict(r.to_dict()) == r


def test_sidecar_recipe_of_the_flat_defense_config_still_loads():
    """Checkpoints written before the registry recorded every field of one flat defense config."""
    legacy = {"kind": "tv", "alpha": 1e-4, "kernel_size": 5, "learnable": True, "window": 3, "sigma": 0.0,
              "eps": 0.03, "attack_steps": 7, "step_size": 0.0078, "adv_fraction": 0.5}
    r = Recipe.from_sidecar({"name": "old", "defense": legacy}, "model.json: recipe")
    assert r.defense == {"kind": "tv", "alpha": 1e-4}
    with pytest.raises(ConfigError, match="unknown field"):
        Recipe.from_dict({"name": "new", "defense": legacy})


def test_roi_jitter_is_checked_and_only_for_synthetic_data(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.roi_jitter: expected a number in \[0\.0, 0\.5\]"):
        load_recipe(_recipe_file(tmp_path, base=SECTIONS.replace("{kind: synthetic}",
                                                                 "{kind: synthetic, roi_jitter: 0.7}")))
    with pytest.raises(ConfigError, match=r"roi_jitter: only the synthetic renderer knows tight boxes"):
        load_recipe(_recipe_file(tmp_path, base=SECTIONS.replace("{kind: synthetic}",
                                                                 "{kind: npz, path: x.npz, roi_jitter: 0.1}")))
