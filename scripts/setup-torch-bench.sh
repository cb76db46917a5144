#!/usr/bin/env bash
# Set up the PyTorch side of `small-agent-distill bench train` (issue #24, point 5):
# a virtualenv with pinned torch + transformers + peft + gguf + safetensors + numpy,
# installed from PyPI with plain `pip install`.
#
# Never run by CI: PyPI's torch wheel for Linux x86_64 pulls several GB of CUDA
# libraries (nvidia-* wheels) even though the benchmark only uses the CPU.
set -euo pipefail

# Pinned versions (exact, all available on PyPI for CPython 3.11).
PINS=(
  "torch==2.15.0"
  "transformers==5.25.0"
  "peft==0.21.2"
  "gguf==0.19.0"
  "safetensors==0.8.0"
  "numpy==2.4.6"
)

usage() {
  cat <<EOF
Usage: scripts/setup-torch-bench.sh [--help] [--force]

Creates, once, a Python virtualenv for scripts/bench_train_torch.py at
  \${SMALL_AGENT_HOME:-\$HOME/.cache/small-agent}/torch-venv
with these pinned packages from PyPI:
$(printf '  %s\n' "${PINS[@]}")

If the venv exists and is complete (same pins, all packages import), it is
reused and nothing is downloaded. An incomplete venv is completed in place.

Options:
  --force   reinstall the pinned packages even if the venv looks complete
  --help    show this help

Environment:
  SMALL_AGENT_HOME  cache root (default \$HOME/.cache/small-agent)
  PYTHON            CPython 3.11 interpreter to build the venv with
                    (default: python3.11, else python3 if it is 3.11)

The torch wheel brings several GB of CUDA libraries; this is expected and is
why CI never runs this script. On success it prints the venv's python path
on the last line of stdout.
EOF
}

FORCE=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --force) FORCE=1 ;;
    *) echo "setup-torch-bench: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="${SMALL_AGENT_HOME:-$HOME/.cache/small-agent}"
VENV="$ROOT/torch-venv"
MARKER="$VENV/.small-agent-pins"
PY_IN_VENV="$VENV/bin/python"
WANT="$(printf '%s\n' "${PINS[@]}")"

log() { echo "==> $*" >&2; }

is_complete() {
  [[ -x "$PY_IN_VENV" && -f "$MARKER" ]] || return 1
  [[ "$(cat "$MARKER")" == "$WANT" ]] || return 1
  "$PY_IN_VENV" -c 'import torch, transformers, peft, gguf, safetensors, numpy' >/dev/null 2>&1
}

if [[ "$FORCE" == 0 ]] && is_complete; then
  log "torch venv already complete at $VENV (reusing)"
  echo "$PY_IN_VENV"
  exit 0
fi

# Pick an interpreter: CPython 3.11 (the versions above are pinned for it).
pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  if command -v python3.11 >/dev/null 2>&1; then echo python3.11; return; fi
  if command -v python3 >/dev/null 2>&1; then echo python3; return; fi
  echo ""
}
BASE_PY="$(pick_python)"
if [[ -z "$BASE_PY" ]]; then
  echo "setup-torch-bench: no python3.11 or python3 found; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
PYVER="$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$PYVER" != "3.11" ]]; then
  echo "setup-torch-bench: warning: $BASE_PY is Python $PYVER, pins were chosen for 3.11" >&2
fi

mkdir -p "$ROOT"
if [[ ! -x "$PY_IN_VENV" ]]; then
  log "creating virtualenv $VENV with $BASE_PY (Python $PYVER)"
  "$BASE_PY" -m venv "$VENV"
else
  log "completing existing virtualenv $VENV"
fi

rm -f "$MARKER"
log "upgrading pip in the venv"
"$PY_IN_VENV" -m pip install --disable-pip-version-check --quiet --upgrade pip
log "installing pinned packages from PyPI (torch brings several GB of CUDA libraries; this takes a while):"
printf '      %s\n' "${PINS[@]}" >&2
"$PY_IN_VENV" -m pip install --disable-pip-version-check --progress-bar off "${PINS[@]}"

log "checking imports"
"$PY_IN_VENV" - <<'EOF' >&2
import torch, transformers, peft, gguf, safetensors, numpy
print("torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| numpy", numpy.__version__,
      "| threads", torch.get_num_threads())
EOF
printf '%s\n' "$WANT" > "$MARKER"
log "venv ready: $(du -sh "$VENV" 2>/dev/null | cut -f1) at $VENV"
echo "$PY_IN_VENV"
