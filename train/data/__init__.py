"""Datasets: the procedural LISA-18 sign renderer (embedded default) and real-data loaders."""
