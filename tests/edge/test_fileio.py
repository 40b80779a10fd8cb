"""Atomic writes: readers see the old or the new file, and the new file has ordinary permissions."""

import os
import stat

import pytest

from edge.fileio import atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path):
    p = tmp_path / "sub" / "manifest.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and not [q for q in p.parent.iterdir() if q.name.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    # not mkstemp's 0600: a bundle copied to a device is read by other users (e.g. a camera service)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]
