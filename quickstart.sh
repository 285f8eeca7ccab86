#!/usr/bin/env bash
# Quick start: install bdcli into .venv (pinned CPU torch first), then run the main job: plant a
# BadNets backdoor in the packaged MiniLM on SST-2, remove it with FT, FTH and the maximum-entropy
# defense (outsourcing scenario: the defender holds 10% of the clean data), evaluate each model, and
# print the table in the layout of Table 2 of the maximum-entropy paper. Every step is a plain bdcli
# command, printed as it runs and timed (bench/chain.py); rerunning reuses finished steps.
#
#   BDCLI_DATA_DIR=../shared/data bash quickstart.sh        # outputs in runs/quickstart
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export BDCLI_DATA_DIR=${BDCLI_DATA_DIR:-../shared/data}
.venv/bin/python bench/chain.py --out "${RUNS:-runs/quickstart}" "$@"
