#!/usr/bin/env bash
# Create (or bring up to date) the peers' own environment for the benchmarks under tests/benchmarks.
#
# Vowpal Wabbit, MABWiser and Open Bandit Pipeline are measured beside recsys but must never become
# project dependencies, so they live in a separate plain venv (tests/benchmarks/.peers-venv,
# git-ignored). The benchmarks measure recsys in-process and run each peer in a subprocess with this
# venv's python (peers_runner.py, obp_runner.py), on the same inputs.
#
# Idempotent: an existing venv is kept, pip skips what is already installed at the pinned version,
# and a final import check proves the environment works. Safe to rerun at any time.
#
# Usage: bash tests/benchmarks/setup_peers.sh [python-executable]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.peers-venv"
python="${1:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# Pins: the versions this was verified with (numpy 2.4, scikit-learn 1.9, scipy 1.17 run obp 0.5.7's
# OPE code unchanged). pandas < 3 because obp 0.5.7 was written for pandas 1.x/2.x.
"${pip[@]}" "numpy==2.4.*" "scipy==1.17.*" "scikit-learn==1.9.*" "pandas>=2.2,<3" \
    "matplotlib>=3.8" "seaborn>=0.13" "pyyaml>=6" "tqdm>=4.62" "mypy-extensions>=1.0"
# vowpalwabbit ships only the Python extension (pylibvw), not the `vw` command-line binary.
"${pip[@]}" "vowpalwabbit==9.11.*" "mabwiser==2.7.*"
# obp 0.5.7 declares python < 3.11 and pins torch, pyieoe and pingouin. Its OPE estimators need none
# of them (torch is used by its policy-learning modules and one tensor type check): install it
# without its declared dependencies (the ones it does use are installed above) and without the
# Python-version check; pip then warns that obp's declared pins are not met, which is expected.
# obp_runner.py loads obp.ope without obp/__init__.py (which imports the torch-based policies).
"${pip[@]}" --no-deps --ignore-requires-python "obp==0.5.7"

"$venv/bin/python" -c "import importlib.metadata as m; import vowpalwabbit, mabwiser; \
print('peers ready:', ', '.join(f'{p} {m.version(p)}' for p in \
('vowpalwabbit', 'mabwiser', 'obp', 'numpy', 'pandas', 'scikit-learn')))"
"$venv/bin/python" "$here/obp_runner.py" check
