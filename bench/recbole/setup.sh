#!/usr/bin/env bash
# Create bench/.venv-recbole: a separate virtual environment for RecBole 1.2.1 (the peer run by
# bench/recbole_sasrec.py). Kept apart from .venv so RecBole's old pins never touch towerrec's packages.
# Pins (after ../shared/peers/recbole.md): numpy<2 (RecBole uses removed numpy APIs), pandas 2.0.3 (its id
# remapping breaks on pandas >= 2.1), and a setuptools that still ships pkg_resources (ray, imported by RecBole's
# quick_start, needs it). The peer note's "setuptools<70" cannot be installed beside torch 2.13.0, which requires
# setuptools>=77.0.3; 77.0.3-80.x satisfy both.
# Usage: bash bench/recbole/setup.sh   (PY=python3.11 TORCH="torch==2.13.0" to override)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$here/.venv-recbole}"
PY="${PY:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q $TORCH recbole "numpy<2" "setuptools>=77.0.3,<81" "pandas==2.0.3"
"$venv/bin/python" -c "import recbole, torch, numpy, pandas; print('recbole', recbole.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__)"
