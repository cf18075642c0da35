#!/usr/bin/env bash
# Issue 19's GPU checks (bench/gpu.py): every check in under 5 minutes on one GPU, figures
# printed with the device's name and a final table. Without a GPU: the same checks on the
# CPU at tiny sizes. Arguments go to bench/gpu.py (--quick, --sections, --npz, --budget).
#
#   bash bench/gpu.sh                       # PYTHON=... to choose the interpreter
#   bash bench/gpu.sh --npz /data/mnist-t10k.npz
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# What engine/ imports: fail here in one line, not in every section.
missing=$("$py" -c '
import importlib.util as u
names = "torch torchvision numpy sklearn typer tomli_w torchmetrics psutil".split()
print(" ".join(n for n in names if u.find_spec(n) is None))')
if [ -n "$missing" ]; then
    echo "bench/gpu.sh: $py has no $missing; pip install -e . (or bring their wheels)" >&2
    exit 2
fi
exec "$py" bench/gpu.py "$@"
