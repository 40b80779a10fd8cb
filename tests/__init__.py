"""signguard test suite (a package so that tests/edge does not shadow the edge package)."""
