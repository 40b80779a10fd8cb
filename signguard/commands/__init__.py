"""Thin CLI subcommands over the Python API (see :mod:`signguard.cli`)."""
