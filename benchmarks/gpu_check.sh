#!/usr/bin/env bash
# The GPU check, ready to run on a CUDA machine (a few minutes on one GPU):
#
#   benchmarks/gpu_check.sh                       # on the GPU machine: writes gpu_check.json
#   benchmarks/gpu_check.sh --out figures.json
#   benchmarks/gpu_check.sh --dry-run             # on a CPU: the same steps at the smoke size, nothing installed
#   benchmarks/gpu_check.sh --work DIR            # keep each step's own output (real_shape's JSON, JUnit XML) in DIR
#
# 1. the machine: Python, torch, CUDA, the GPU (nvidia-smi's read-only query; the GPU is never reset);
# 2. what the machine lacks of llm_rl's requirements (pyproject.toml, torch excluded) and pytest,
#    installed from the wheels carried beside this script (benchmarks/gpu_wheels/, filled by
#    benchmarks/gpu_wheels.sh on a machine with PyPI) with `pip install --no-index --find-links`;
#    torch is pinned to the machine's own build, so pip can never replace it;
# 3. the CUDA-only tests (pytest -m cuda: bf16 on CUDA against float32 on the CPU);
# 4. a bf16 GRPO step at the Qwen2.5-0.5B shape (benchmarks/real_shape.py's llm_rl_grpo_bf16): its peak
#    torch.cuda.max_memory_allocated against llm_rl.memory.predict_memory;
# 5. generated tokens/s of the same GRPO step (float32 training) with rollout_dtype float32 and bfloat16
#    (llm_rl_grpo, llm_rl_grpo_rollout_bf16), in the same real_shape.py report as 4;
# 6. one JSON of every figure (--out, default gpu_check.json), also printed.
# A failed step is recorded in the JSON and the script goes on; it exits non-zero at the end if any failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
DRY_RUN=0
OUT="gpu_check.json"
WHEELS="$HERE/gpu_wheels"
WORK=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        --wheels) WHEELS="$2"; shift ;;
        --work) WORK="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (--dry-run, --out PATH, --wheels DIR, --work DIR)" >&2; exit 2 ;;
    esac
    shift
done
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"  # absolute: the steps below run from the repository

log() { printf '[gpu_check %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
if [ -z "$WORK" ]; then WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; else mkdir -p "$WORK"; WORK="$(cd "$WORK" && pwd)"; fi
FAILED=()
step() {  # step NAME COMMAND...: run it, print it, record a failure without stopping
    local name="$1"; shift
    log "$name: $*"
    if "$@"; then log "$name: done"; else local rc=$?; log "$name: FAILED (exit $rc)"; FAILED+=("$name"); fi
}

cd "$REPO"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # llm_rl and reward_models from this checkout, not installed

# ---------------------------------------------------------------- 1. the machine
log "repository $REPO; python $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON"); dry run: $DRY_RUN"
if ! "$PYTHON" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
    log "llm_rl needs Python >= 3.11 (pyproject.toml); set PYTHON=/path/to/python3.11 or newer"; exit 1
fi
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    log "torch is not installed: it is the machine's own (a CUDA build); install it first, then rerun"; exit 1
fi
TORCH="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
CUDA="$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')"
log "torch $TORCH; CUDA available: $CUDA"
if [ "$CUDA" = 1 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader | tee "$WORK/gpu.txt" || true
fi
if [ "$CUDA" != 1 ] && [ "$DRY_RUN" = 0 ]; then
    log "no CUDA device here: run this on the GPU machine, or with --dry-run to rehearse it on a CPU"; exit 1
fi

# ---------------------------------------------------------------- 2. what the machine lacks, from the carried wheels
"$PYTHON" - "$REPO/pyproject.toml" "$WORK" "$TORCH" <<'EOF'
import sys
import tomllib
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare environment: pip's own copy
    from pip._vendor.packaging.requirements import Requirement

pyproject, work, torch_version = sys.argv[1:]
wanted = [r for r in tomllib.loads(open(pyproject).read())["project"]["dependencies"] if not r.startswith("torch")]
wanted.append("pytest>=8")
missing = []
for line in wanted:
    req = Requirement(line)
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        have = None
    if have is None or not req.specifier.contains(have, prereleases=True):
        missing.append(f"{line} (have {have or 'none'})")
open(f"{work}/requirements.txt", "w").write("\n".join(wanted) + "\n")
open(f"{work}/constraints.txt", "w").write(f"torch=={torch_version}\n")  # never replaced
open(f"{work}/missing.txt", "w").write("\n".join(missing) + ("\n" if missing else ""))
EOF
if [ ! -s "$WORK/missing.txt" ]; then
    log "every requirement is already met: nothing to install"
else
    log "missing or too old:"; sed 's/^/    /' "$WORK/missing.txt"
    if [ "$DRY_RUN" = 1 ]; then
        log "dry run: would run pip install --no-index --find-links $WHEELS -r requirements.txt -c constraints.txt (torch==$TORCH)"
    elif [ ! -d "$WHEELS" ] || ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        log "no wheels in $WHEELS: run benchmarks/gpu_wheels.sh (Python $("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')) where PyPI is reachable and carry the folder here"
        exit 1
    else
        log "pip install --no-index --find-links $WHEELS -r requirements.txt -c constraints.txt (torch==$TORCH)"
        if ! "$PYTHON" -m pip install --no-index --find-links "$WHEELS" -r "$WORK/requirements.txt" -c "$WORK/constraints.txt"; then
            log "pip install failed (above). Wheels for another Python? benchmarks/gpu_wheels.sh VERSION. An externally"
            log "managed Python? rerun in a venv made with --system-site-packages (it keeps the machine's torch)"
            exit 1
        fi
    fi
fi
"$PYTHON" -c "
import accelerate, datasets, peft, torch, transformers
assert torch.__version__ == '$TORCH', 'torch was replaced'
print('  transformers', transformers.__version__, '| datasets', datasets.__version__, '| peft', peft.__version__,
      '| accelerate', accelerate.__version__, '| torch', torch.__version__)"

# ---------------------------------------------------------------- 3. the CUDA-only tests
mapfile -t CUDA_TESTS < <(grep -l "pytest.mark.cuda" tests/*.py || true)
if [ "${#CUDA_TESTS[@]}" -eq 0 ]; then
    log "no test file marks pytest.mark.cuda"; FAILED+=(cuda_tests)
else
    log "CUDA tests in ${CUDA_TESTS[*]} (without CUDA they skip)"
    # -o addopts=: in one process, without the -n of pyproject.toml (pytest-xdist may not be on this machine)
    step cuda_tests "$PYTHON" -m pytest -o addopts= -m cuda -q -p no:cacheprovider --junitxml "$WORK/cuda_tests.xml" "${CUDA_TESTS[@]}"
fi

# ---------------------------------------------------------------- 4-5. the 0.5B shape (smoke size in a dry run)
if [ "$DRY_RUN" = 1 ]; then SHAPE=(--size smoke --warmup 0 --steps 1); else SHAPE=(--size 0.5b --warmup 1 --steps 1); fi
# one report, three runs (each in its own process): the bf16 step, then the float32 step generating from its own
# float32 weights, then the same generating from a bfloat16 copy; a run that fails is recorded and the next goes on
step real_shape timeout 2700 "$PYTHON" benchmarks/real_shape.py "${SHAPE[@]}" --rollout_dtype float32 \
    --only llm_rl_grpo_bf16,llm_rl_grpo,llm_rl_grpo_rollout_bf16 --json "$WORK/real_shape.json"

# ---------------------------------------------------------------- 6. one JSON
"$PYTHON" - "$WORK" "$OUT" "$DRY_RUN" "${FAILED[@]+"${FAILED[@]}"}" <<'EOF'
import json
import platform
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import torch

work, out, dry_run, failed = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4:]


shape = json.loads((work / "real_shape.json").read_text()) if (work / "real_shape.json").exists() else None


def run(name):
    if shape is None or name not in shape["runs"]:
        return None
    r = shape["runs"][name]
    s = {**shape["settings"], **r["settings"]}  # the run's own settings over the command line's
    keys = ("status", "peak_memory_mb", "predicted_memory_mb", "peak_over_predicted", "state_memory_mb", "memory_kind",
            "step_seconds", "generation_seconds", "generated_tokens_per_second", "predicted_phases_mb")
    return {"size": s["size"], "precision": s["precision"], "rollout_dtype": s["rollout_dtype"], **{k: r.get(k) for k in keys}}


tests = None
if (work / "cuda_tests.xml").exists():
    suite = ET.parse(work / "cuda_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    tests = {**n, "passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"]}
float32, bfloat16 = run("llm_rl_grpo"), run("llm_rl_grpo_rollout_bf16")
speedup = None
if float32 and bfloat16 and float32.get("generated_tokens_per_second") and bfloat16.get("generated_tokens_per_second"):
    speedup = bfloat16["generated_tokens_per_second"] / float32["generated_tokens_per_second"]
gpu = (work / "gpu.txt").read_text().strip() if (work / "gpu.txt").exists() else None
report = {
    "dry_run": dry_run,
    "machine": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                "cuda_version": torch.version.cuda, "gpu": gpu},
    "packages": {p: metadata.version(p) for p in ("transformers", "datasets", "accelerate", "peft", "tokenizers")},
    "missing_before_install": (work / "missing.txt").read_text().split("\n")[:-1],
    "cuda_tests": tests,
    "bf16_grpo_step": run("llm_rl_grpo_bf16"),
    "rollout_dtype": {"float32": float32, "bfloat16": bfloat16, "bfloat16_over_float32_generated_tokens_per_second": speedup},
    "failed_steps": failed,
}
Path(out).write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
EOF
log "wrote $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then log "failed: ${FAILED[*]}"; exit 1; fi
log "all steps passed"
