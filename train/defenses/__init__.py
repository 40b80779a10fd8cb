"""Defenses.  Each one plugs into training as a loss term or an input transform."""
