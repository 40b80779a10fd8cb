"""Tests of the torch-free device runtime (edge/); they must pass on Python 3.8 to 3.12."""
