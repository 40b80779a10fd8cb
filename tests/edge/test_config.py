"""The one config loader (edge/config.py): every config fails the same way, naming the dotted path of the field.

Torch-free and Python 3.8 compatible (runs in .ci/edge_pythons.sh): the dataclasses below spell their
annotations with ``typing`` (``Optional[X]``, ``List[int]``...) because ``typing.get_type_hints`` evaluates
them, and 3.8 cannot evaluate ``X | None`` or ``list[int]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pytest

from edge.config import check_choice, check_range, coerce, from_dict, to_dict
from edge.errors import ConfigError, SignguardError
from edge.preprocess import PreprocessConfig

try:
    from typing import Literal
except ImportError:  # pragma: no cover - Python < 3.8
    Literal = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    mode: str = "a"

    def __post_init__(self) -> None:
        check_range(self.rate, "rate", 0.0, 1.0)
        check_choice(self.mode, ("a", "b"), "mode")


@dataclass(frozen=True)
class Outer:
    name: str
    steps: int = 10
    lr: float = 0.1
    enabled: bool = True
    inner: Inner = field(default_factory=Inner)
    maybe_inner: Optional[Inner] = None
    limit: Optional[int] = None
    sizes: List[int] = field(default_factory=list)
    weights: Dict[str, float] = field(default_factory=dict)
    pair: Tuple[int, float] = (1, 2.0)
    scales: Tuple[float, ...] = ()
    items: List[Inner] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError("steps: expected an integer >= 1, got %r" % (self.steps,))


def _fails(data: dict, message: str, where: str = "cfg") -> None:
    """``from_dict(Outer, data)`` raises a ConfigError whose whole message is ``message``."""
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data, where)
    assert str(e.value) == message


def test_defaults_and_a_full_config() -> None:
    cfg = from_dict(Outer, {"name": "x"}, "cfg")
    assert cfg == Outer(name="x")
    full = {"name": "y", "steps": 3, "lr": 0.01, "enabled": False, "inner": {"rate": 1, "mode": "b"},
            "maybe_inner": {"rate": 0.25}, "limit": 7, "sizes": [1, 2], "weights": {"a": 1, "b": 0.5},
            "pair": [3, 4], "scales": [1, 2.5], "items": [{"mode": "b"}, {}]}
    cfg = from_dict(Outer, full, "cfg")
    assert cfg.inner == Inner(1.0, "b") and cfg.maybe_inner == Inner(0.25)
    assert cfg.items == [Inner(mode="b"), Inner()]
    assert cfg.pair == (3, 4.0) and isinstance(cfg.pair, tuple) and isinstance(cfg.pair[1], float)
    assert cfg.scales == (1.0, 2.5) and isinstance(cfg.scales, tuple)
    assert to_dict(cfg) == dict(full, inner={"rate": 1.0, "mode": "b"}, maybe_inner={"rate": 0.25, "mode": "a"},
                                items=[{"rate": 0.5, "mode": "b"}, {"rate": 0.5, "mode": "a"}], lr=0.01)
    assert to_dict(cfg)["pair"] == [3, 4.0]  # tuples become lists (JSON-ready)


def test_errors_are_config_errors() -> None:
    assert issubclass(ConfigError, SignguardError)


def test_unknown_field_names_the_dotted_path() -> None:
    _fails({"name": "x", "setps": 3},
           "cfg: unknown field(s) ['setps'] (known: %s)" % sorted(Outer.__dataclass_fields__))
    _fails({"name": "x", "inner": {"rate": 0.1, "rtae": 0.2}},
           "cfg.inner: unknown field(s) ['rtae'] (known: ['mode', 'rate'])")
    _fails({"name": "x", "items": [{}, {"mood": "a"}]},
           "cfg.items[1]: unknown field(s) ['mood'] (known: ['mode', 'rate'])")


def test_ill_typed_nested_field() -> None:
    _fails({"name": "x", "inner": {"rate": "fast"}}, "cfg.inner.rate: expected a number, got 'fast'")
    _fails({"name": "x", "inner": {"mode": 1}}, "cfg.inner.mode: expected a string, got 1")
    _fails({"name": "x", "inner": [0.5]}, "cfg.inner: expected a mapping, got list")
    _fails({"name": "x", "items": [{"rate": None}]}, "cfg.items[0].rate: expected a number, got None")


def test_optional() -> None:
    assert from_dict(Outer, {"name": "x", "limit": None, "maybe_inner": None}, "cfg").limit is None
    assert from_dict(Outer, {"name": "x", "limit": 5}, "cfg").limit == 5
    _fails({"name": "x", "limit": "5"}, "cfg.limit: expected an integer, got '5'")
    # an Optional dataclass keeps the nested path of its error instead of a bare "expected Inner or null"
    _fails({"name": "x", "maybe_inner": {"rat": 1}},
           "cfg.maybe_inner: unknown field(s) ['rat'] (known: ['mode', 'rate'])")
    _fails({"name": "x", "maybe_inner": {"rate": 3}}, "cfg.maybe_inner.rate: expected a number in [0.0, 1.0], got 3.0")


def test_list_of_int() -> None:
    assert from_dict(Outer, {"name": "x", "sizes": [8, 16]}, "cfg").sizes == [8, 16]
    _fails({"name": "x", "sizes": [8, "16"]}, "cfg.sizes[1]: expected an integer, got '16'")
    _fails({"name": "x", "sizes": [8, 16.5]}, "cfg.sizes[1]: expected an integer, got 16.5")
    _fails({"name": "x", "sizes": 8}, "cfg.sizes: expected a list, got 8")


def test_dict_of_str_to_float() -> None:
    cfg = from_dict(Outer, {"name": "x", "weights": {"a": 1, "b": "2e-1"}}, "cfg")
    assert cfg.weights == {"a": 1.0, "b": 0.2} and all(type(v) is float for v in cfg.weights.values())
    _fails({"name": "x", "weights": {"a": 1, "b": "heavy"}}, "cfg.weights.b: expected a number, got 'heavy'")
    _fails({"name": "x", "weights": {3: 1.0}}, "cfg.weights: expected a string, got 3")
    _fails({"name": "x", "weights": [1.0]}, "cfg.weights: expected a mapping, got [1.0]")


def test_tuple() -> None:
    assert from_dict(Outer, {"name": "x", "pair": (2, 3)}, "cfg").pair == (2, 3.0)
    _fails({"name": "x", "pair": [1, 2, 3]}, "cfg.pair: expected 2 items, got 3")
    _fails({"name": "x", "pair": [1.5, 2]}, "cfg.pair[0]: expected an integer, got 1.5")
    _fails({"name": "x", "pair": [1, "wide"]}, "cfg.pair[1]: expected a number, got 'wide'")
    _fails({"name": "x", "scales": [1, True]}, "cfg.scales[1]: expected a number, got True")
    assert from_dict(Outer, {"name": "x", "scales": [1, 2, 3]}, "cfg").scales == (1.0, 2.0, 3.0)


def test_ints_are_accepted_for_floats() -> None:
    cfg = from_dict(Outer, {"name": "x", "lr": 1}, "cfg")
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert type(coerce(3, float, "x")) is float


def test_bool_is_not_an_int_or_a_float() -> None:
    _fails({"name": "x", "steps": True}, "cfg.steps: expected an integer, got True")
    _fails({"name": "x", "lr": False}, "cfg.lr: expected a number, got False")
    _fails({"name": "x", "enabled": 1}, "cfg.enabled: expected true or false, got 1")
    _fails({"name": "x", "enabled": "yes"}, "cfg.enabled: expected true or false, got 'yes'")


def test_scientific_notation_string_is_a_float() -> None:
    """YAML 1.1 (PyYAML) reads ``1e-4`` as the string "1e-4"."""
    cfg = from_dict(Outer, {"name": "x", "lr": "1e-4"}, "cfg")
    assert cfg.lr == 1e-4 and type(cfg.lr) is float
    _fails({"name": "x", "lr": "1e-4x"}, "cfg.lr: expected a number, got '1e-4x'")
    _fails({"name": "x", "steps": "1e3"}, "cfg.steps: expected an integer, got '1e3'")  # only floats parse strings


def test_missing_required_field() -> None:
    _fails({"steps": 3}, "cfg: missing field(s) ['name']")
    _fails({}, "cfg: missing field(s) ['name']")


def test_post_init_error_gets_the_path_prefix() -> None:
    _fails({"name": "x", "steps": 0}, "cfg.steps: expected an integer >= 1, got 0")
    _fails({"name": "x", "inner": {"rate": 1.5}}, "cfg.inner.rate: expected a number in [0.0, 1.0], got 1.5")
    _fails({"name": "x", "inner": {"mode": "c"}}, "cfg.inner.mode: expected one of ['a', 'b'], got 'c'")
    _fails({"name": "x", "items": [{}, {"rate": -1}]}, "cfg.items[1].rate: expected a number in [0.0, 1.0], got -1.0")
    # a path that merely starts like the field name is still prefixed
    _fails({"name": "x", "steps": 0}, "step.steps: expected an integer >= 1, got 0", where="step")


def test_root_path_is_left_to_the_caller() -> None:
    """``where=""`` is a file's top level: the caller adds the file name (as the bundle manifest does)."""
    _fails({"name": "x", "inner": {"rate": "no"}}, "inner.rate: expected a number, got 'no'", where="")
    _fails({"name": "x", "steps": 0}, "steps: expected an integer >= 1, got 0", where="")
    _fails({}, "missing field(s) ['name']", where="")
    with pytest.raises(ConfigError, match=r"^unknown field\(s\) \['bogus'\]"):
        from_dict(Outer, {"name": "x", "bogus": 1}, "")


def test_non_mapping_input() -> None:
    with pytest.raises(ConfigError, match=r"^cfg: expected a mapping, got list$"):
        from_dict(Outer, [("name", "x")], "cfg")


@pytest.mark.skipif(Literal is None, reason="typing.Literal needs Python 3.8")
def test_literal() -> None:
    tp = Literal["fp32", "fp16"]
    assert coerce("fp16", tp, "p") == "fp16"
    with pytest.raises(ConfigError, match=re.escape("p: expected one of ['fp32', 'fp16'], got 'int4'")):
        coerce("int4", tp, "p")


def test_check_helpers() -> None:
    check_choice("a", ("a", "b"), "mode")
    with pytest.raises(ConfigError, match=re.escape("mode: expected one of ['a', 'b'], got 'z'")):
        check_choice("z", ("a", "b"), "mode")
    check_range(0.0, "m", 0.0, 1.0, hi_open=True)
    with pytest.raises(ConfigError, match=re.escape("m: expected a number in [0.0, 1.0), got 1.0")):
        check_range(1.0, "m", 0.0, 1.0, hi_open=True)
    with pytest.raises(ConfigError, match=re.escape("m: expected a number in (0, inf], got 0")):
        check_range(0, "m", lo=0, lo_open=True)


# PreprocessConfig is the first config the device loads with from_dict (the manifest's ``preprocess``).


def test_preprocess_config_from_dict() -> None:
    assert PreprocessConfig.from_dict({"input_size": 48, "roi_margin": 0}) == PreprocessConfig(48, roi_margin=0.0)
    rgb = PreprocessConfig(color_order="RGB")
    assert PreprocessConfig.from_dict(rgb.to_dict()) == rgb
    cases = [
        ({"input_sise": 32}, "preprocess: unknown field(s) ['input_sise'] (known: "
                             "['color_order', 'input_size', 'roi_margin', 'square'])"),
        ({"input_size": 4}, "preprocess.input_size: expected an integer >= 8, got 4"),
        ({"input_size": 32.0}, "preprocess.input_size: expected an integer, got 32.0"),
        ({"color_order": "BRG"}, "preprocess.color_order: expected one of ['BGR', 'RGB'], got 'BRG'"),
        ({"roi_margin": 1}, "preprocess.roi_margin: expected a number in [0.0, 1.0), got 1.0"),
        ({"square": "yes"}, "preprocess.square: expected true or false, got 'yes'"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError) as e:
            PreprocessConfig.from_dict(data)
        assert str(e.value) == message
    with pytest.raises(ConfigError, match=r"^recipe\.preprocess\.input_size: expected an integer >= 8, got 4$"):
        PreprocessConfig.from_dict({"input_size": 4}, where="recipe.preprocess")


def test_preprocess_config_direct_construction_names_the_bare_field() -> None:
    with pytest.raises(ConfigError, match=r"^input_size: expected an integer >= 8, got 4$"):
        PreprocessConfig(input_size=4)
    with pytest.raises(ConfigError, match=r"^color_order: expected one of \['BGR', 'RGB'\], got 'rgb'$"):
        PreprocessConfig(color_order="rgb")
    with pytest.raises(ConfigError, match=r"^roi_margin: expected a number in \[0.0, 1.0\), got -0.1$"):
        PreprocessConfig(roi_margin=-0.1)
    with pytest.raises(ConfigError, match=r"^square: expected true or false, got 1$"):
        PreprocessConfig(square=1)  # type: ignore[arg-type]
