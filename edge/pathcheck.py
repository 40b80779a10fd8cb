"""Refuse to write an output over an input: ``signguard run --output v.mp4 --source v.mp4`` must not run.

Why: the loop opens its outputs (annotated video, frame log, recording)
before it reads its inputs to the end, so an output that is also an input
destroys the drive-by or its ground truth -- a field test that cannot be
repeated.  Paths are compared after resolving symlinks, ``..`` and relative
spellings, and an existing file is also compared by inode (hard links).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from .errors import SignguardError

Named = Tuple[str, Optional[str]]  # (option name, path or None)


def _resolve(path: str) -> Path:
    if path.startswith("file://"):
        path = path[len("file://"):]
    return Path(os.path.expanduser(path)).resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(str(a), str(b))
    except OSError:
        return False


def _inside(child: Path, folder: Path) -> bool:
    return folder.is_dir() and (child == folder or folder in child.parents)


def check_outputs(inputs: Iterable[Named], outputs: Iterable[Named]) -> None:
    """Raise :class:`SignguardError` when an output resolves to an input, lies inside an input folder, or
    two outputs are the same path.  ``None`` paths and URIs such as ``display://0`` or ``rtsp://`` are skipped.
    """
    def real(items: Iterable[Named]) -> List[Tuple[str, str, Path]]:
        out = []
        for name, p in items:
            if p and ("://" not in p or p.startswith("file://")) and not p.isdigit():
                out.append((name, p, _resolve(p)))
        return out

    ins, outs = real(inputs), real(outputs)
    for oname, opath, o in outs:
        for iname, ipath, i in ins:
            if _same(o, i):
                raise SignguardError("%s %s is the %s input (%s); refusing to overwrite it -- choose another path"
                                     % (oname, opath, iname, ipath))
            if _inside(o, i):
                raise SignguardError("%s %s is inside the %s folder %s; refusing to write into an input"
                                     % (oname, opath, iname, ipath))
            if _inside(i, o):
                raise SignguardError("%s %s contains the %s input %s; refusing to write over an input"
                                     % (oname, opath, iname, ipath))
    for k, (aname, apath, a) in enumerate(outs):
        for bname, bpath, b in outs[k + 1:]:
            if _same(a, b) or _inside(a, b) or _inside(b, a):
                raise SignguardError("%s %s and %s %s are the same path; give each output its own"
                                     % (aname, apath, bname, bpath))
