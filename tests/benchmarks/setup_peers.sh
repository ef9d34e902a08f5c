#!/usr/bin/env bash
# Create the peers' own environment for tests/benchmarks/bench_bandits.py.
#
# Vowpal Wabbit and MABWiser are measured beside recsys but must never become project
# dependencies, so they live in a separate plain venv (tests/benchmarks/.peers-venv, git-ignored).
# The benchmark measures recsys in-process and runs each peer in a subprocess with this venv's
# python, feeding it the same synthetic problem through an .npz file.
#
# Usage: bash tests/benchmarks/setup_peers.sh [python-executable]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.peers-venv"
python="${1:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# vowpalwabbit ships only the Python extension (pylibvw), not the `vw` command-line binary.
"$venv/bin/python" -m pip install --quiet numpy vowpalwabbit mabwiser
"$venv/bin/python" -c "import vowpalwabbit, mabwiser, numpy; print('peers ready:', \
vowpalwabbit.__version__ if hasattr(vowpalwabbit, '__version__') else 'vowpalwabbit', \
'mabwiser', mabwiser.__version__ if hasattr(mabwiser, '__version__') else '')"
