#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh installs on a GPU machine that cannot reach PyPI.
#
#   benchmarks/gpu_wheels.sh                 # for this Python's version (3.11 here)
#   benchmarks/gpu_wheels.sh 3.10 3.11 3.12  # for each of these (binary wheels differ by version)
#   GPU_WHEELS_DIR=/some/dir benchmarks/gpu_wheels.sh
#
# Which wheels: every distribution llm_rl's dependencies (pyproject.toml, torch excluded) and
# pytest need, followed through their own requirements as installed in this environment, at
# exactly the versions installed here (the versions the test suite passed with), and torch's
# own pure-Python requirements (setuptools, sympy, jinja2, ...) in case the machine's torch was
# installed without them (pip checks them). torch itself and its CUDA libraries and triton are
# the GPU machine's own: never downloaded, never replaced. Each is fetched alone (--no-deps) as
# a binary wheel for manylinux x86_64 and CPython of the given version: the folder is this list.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
DEST="${GPU_WHEELS_DIR:-$HERE/gpu_wheels}"
PYTHON="${PYTHON:-python}"
if [ "$#" -gt 0 ]; then VERSIONS=("$@"); else VERSIONS=("$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"); fi

echo "[gpu_wheels] the distributions to fetch, pinned to this environment's versions ($("$PYTHON" --version))"
PINS="$("$PYTHON" - "$REPO/pyproject.toml" <<'EOF'
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SKIP = {"torch"}  # the GPU machine's own build, with its CUDA libraries and triton (below)
roots = [Requirement(r) for r in tomllib.loads(open(sys.argv[1]).read())["project"]["dependencies"]]
roots.append(Requirement("pytest"))  # gpu_check.sh runs the CUDA tests
roots += [Requirement(r) for r in metadata.distribution("torch").requires or []]
pins, todo = {}, [r for r in roots]
while todo:
    req = todo.pop()
    name = canonicalize_name(req.name)
    if name in SKIP or name.startswith(("nvidia-", "cuda-", "triton")) or name in pins:
        continue
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(f"{req.name} is required but not installed here: pip install -e '.[dev]' first")
    pins[name] = dist.version
    todo += [Requirement(r) for r in dist.requires or []]
print("\n".join(f"{n}=={v}" for n, v in sorted(pins.items())))
EOF
)"
echo "$PINS" | sed 's/^/  /'
mkdir -p "$DEST"
for version in "${VERSIONS[@]}"; do
    echo "[gpu_wheels] pip download --no-deps --only-binary=:all: --python-version $version -> $DEST"
    # shellcheck disable=SC2086  # one argument per pin
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any --dest "$DEST" --quiet $PINS
done
echo "$PINS" > "$DEST/pins.txt"
echo "[gpu_wheels] $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1), in $DEST (list: $DEST/pins.txt)"
