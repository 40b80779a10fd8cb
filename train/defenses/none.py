"""The undefended baseline: a registered defense with no parameters and no hooks."""

from __future__ import annotations

from .base import Defense, NoConfig, register_defense


@register_defense("none")
class NoDefense(Defense):
    Config = NoConfig
