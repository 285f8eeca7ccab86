#!/usr/bin/env bash
# Quick start: install bdcli into .venv (pinned CPU torch first), then run the main job, the recipe
# recipes/quickstart.yaml: plant a BadNets backdoor in the packaged MiniLM on SST-2, remove it with FT,
# FTH and the maximum-entropy defense (outsourcing scenario: the defender holds 10% of the clean data),
# evaluate each model, and print the table in the layout of Table 2 of the maximum-entropy paper with
# the paper's numbers beside. Rerunning reuses every finished step.
#
#   BDCLI_DATA_DIR=../shared/data bash quickstart.sh        # outputs in runs/quickstart
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export BDCLI_DATA_DIR=${BDCLI_DATA_DIR:-../shared/data}
.venv/bin/bdcli run recipes/quickstart.yaml --out "${RUNS:-runs/quickstart}" "$@"
