#!/usr/bin/env bash
# Quick start: install bdcli into .venv (pinned CPU torch first), then run the main job: plant a
# BadNets backdoor in the packaged MiniLM on SST-2, remove it with FT, FTH and the maximum-entropy
# defense (outsourcing scenario: the defender holds 10% of the clean data), evaluate, and print the
# table in the layout of Table 2 of the maximum-entropy paper.
#
#   BDCLI_DATA_DIR=../shared/data bash quickstart.sh        # outputs in runs/quickstart
#
# Every step is a plain bdcli command; rerunning reuses finished steps.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export BDCLI_DATA_DIR=${BDCLI_DATA_DIR:-../shared/data}
B=.venv/bin/bdcli
R=${RUNS:-runs/quickstart}

$B poison badnets --data sst2 --rate 0.1 --target 1 --out $R/sst2-badnets
$B attack finetune --model minilm --data $R/sst2-badnets --lr 5e-5 --epochs 3 --out $R/victim
$B defend ft  --model $R/victim --data sst2 --out $R/ft
$B defend fth --model $R/victim --data sst2 --out $R/fth
$B defend maxent --model $R/victim --data sst2 --sd 0.01 --maxent-lr 1e-4 --maxent-max-steps 3000 --out $R/maxent
for m in victim ft fth maxent; do
  $B evaluate --model $R/$m --data $R/sst2-badnets --out $R/eval/$m
done
$B report $R/eval --format markdown
