"""Progress bars that stay quiet when nobody is watching.

Why: with stderr redirected to a file (CI, ``nohup``, the demo's log) tqdm
writes every refresh as a carriage-return line -- thousands of them.  Bars
are drawn only when stderr is a terminal; long loops print their own
per-epoch or per-stage lines instead.
"""

from __future__ import annotations

from typing import Any, Iterable


def progress(iterable: Iterable[Any], desc: str = "", enabled: bool = True, **kwargs: Any):
    """``tqdm(iterable)`` when ``enabled`` and stderr is a terminal; the plain iterable's wrapper otherwise."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, disable=None if enabled else True, **kwargs)
