"""Thin CLI subcommands over the Python API (see :mod:`train.cli`)."""
