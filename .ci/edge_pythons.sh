#!/usr/bin/env bash
# Run the torch-free edge test suite (tests/edge) under the Python versions a Jetson has:
# 3.8 (JetPack 5) and 3.10 (JetPack 6), each in its own small cached venv with pinned,
# wheel-only dependencies (.ci/requirements-edge-py38.txt, -py310.txt).
#
#   bash .ci/edge_pythons.sh                      # 3.8 and 3.10
#   SIGNGUARD_EDGE_PYTHONS="3.10" bash .ci/edge_pythons.sh
#   SIGNGUARD_CI_CACHE=/tmp/ci bash .ci/edge_pythons.sh   # where the venvs live
#
# A missing interpreter prints "SKIP: python3.X not found" and the others still run;
# the script exits non-zero when any install or test run fails.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SIGNGUARD_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/signguard-ci}"
VERSIONS="${SIGNGUARD_EDGE_PYTHONS:-3.8 3.10}"
mkdir -p "$CACHE"

find_python() {  # $1 = "3.8": print a working interpreter of exactly that minor version
    local want="$1" root cand
    local -a cands=()
    if command -v pyenv >/dev/null 2>&1; then root="$(pyenv root)"; else root="${PYENV_ROOT:-$HOME/.pyenv}"; fi
    for cand in "$root"/versions/"$want".*/bin/python; do [ -x "$cand" ] && cands+=("$cand"); done
    cand="$(command -v "python$want" 2>/dev/null)" && cands+=("$cand")
    for cand in "${cands[@]+"${cands[@]}"}"; do
        if [ "$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

status=0
summary=()
for ver in $VERSIONS; do
    tag="py${ver/./}"
    req="$REPO/.ci/requirements-edge-$tag.txt"
    if ! py="$(find_python "$ver")"; then
        echo "SKIP: python$ver not found (pyenv versions or python$ver on PATH)"
        summary+=("python$ver: skipped (not found)")
        continue
    fi
    if [ ! -f "$req" ]; then
        echo "FAIL: $req is missing"
        summary+=("python$ver: failed (no requirements file)"); status=1; continue
    fi
    venv="$CACHE/venv-$ver"
    stamp="$( (cat "$req"; "$py" -VV) | sha256sum | cut -c1-16)"
    echo "== edge tests on python$ver ($py), venv $venv"
    if [ "$(cat "$venv/.signguard-stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$venv"
        if ! "$py" -m venv "$venv" \
            || ! "$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: -r "$req"; then
            echo "FAIL: could not build the python$ver venv from $req"
            summary+=("python$ver: failed (install)"); status=1; rm -rf "$venv"; continue
        fi
        echo "$stamp" > "$venv/.signguard-stamp"
    fi
    # The repo root on PYTHONPATH instead of an install: edge/ is pure Python and this tests the checkout as is.
    # Empty addopts: the project's -m filter is re-stated so an old pytest never trips over other options.
    if (cd "$REPO" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" -m pytest tests/edge -q \
            -p no:cacheprovider -o addopts="" -m "not slow and not gpu and not tensorrt"); then
        summary+=("python$ver: passed")
    else
        summary+=("python$ver: FAILED"); status=1
    fi
done
echo "== edge python matrix"
for line in "${summary[@]+"${summary[@]}"}"; do echo "   $line"; done
exit $status
