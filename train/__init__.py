"""signguard training side: data, models, defenses, attacks, training loops (torch).

Importing this package does not import torch: the CLI lives here and must
start on a device that has only the edge runtime.
"""
