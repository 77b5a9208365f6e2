#!/usr/bin/env bash
# The device check (bench/gpu_check.py) on a machine that may lack pydantic, such as the lent
# GPU machine (Python 3.12, PyTorch 2.11, no Ray, Optuna or pydantic). From the repository root:
#
#   bash bench/gpu_check.sh --download-wheels       # here, with network: pydantic and its needs
#                                                   # as Python 3.12 x86_64 wheels in bench/wheels
#   bash bench/gpu_check.sh OUT [gpu_check flags]   # there: installs bench/wheels into a
#                                                   # temporary folder if `import pydantic` fails,
#                                                   # then runs python3 -m bench.gpu_check OUT ...
#
# bench/wheels is ignored by git: name it in the `run` tool's carry list (about 3 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=bench/wheels
# pydantic's needs, pinned as the project's .venv has them (pydantic-core is tied to pydantic)
PACKAGES=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
          typing-inspection==0.4.5 typing-extensions==4.16.0)

if [[ "${1:-}" == "--download-wheels" ]]; then
  mkdir -p "$WHEELS"
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
  exit 0
fi

if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check.sh: no pydantic here and no wheels in $WHEELS:" \
      "run 'bash bench/gpu_check.sh --download-wheels' where pip reaches PyPI, and carry $WHEELS" >&2
    exit 2
  fi
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_check.sh: installed $(ls "$WHEELS" | tr '\n' ' ')into $SITE"
fi
export PYTHONUNBUFFERED=1
exec "$PY" -m bench.gpu_check "$@"
