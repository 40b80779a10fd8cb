"""Adversarial attacks with one calling convention (see :mod:`train.attacks.base`)."""
