#!/usr/bin/env bash
# The maximum-entropy knob study behind docs/maxent.md: ACC and ASR of `defend maxent` against the
# BadNets victim of bench/attacks-sst2.sh (outsourcing, 10% clean SST-2), varying what the paper leaves
# open: stage 1's learning rate and length (a step floor under the SD rule), whether the head trains in
# stage 1, and the length of stage 2.
#
#   BDCLI_DATA_DIR=../shared/data RUNS=runs/paper bash bench/maxent-knobs.sh
RUNS=${RUNS:-runs/paper}
source "$(dirname "$0")/lib.sh"
machine
T=maxent-knobs
V=victim                       # made by bench/attacks-sst2.sh
D="$RUNS/sst2-badnets"
[ -f "$RUNS/$V/manifest.json" ] || { echo "run bench/attacks-sst2.sh first (needs $RUNS/$V)" >&2; exit 1; }
common=(--model "$RUNS/$V" --data sst2 --sd 0.01 --sd-every 50)

evaluate "$V" "$D" "Victim (BadNets)" $T
# Controls: plain FT as long as the longer stage 2s, so that an ASR drop can be put on stage 1.
for e in 10 20; do
  step "ft-ce$e" defend ft --model "$RUNS/$V" --data sst2 --epochs "$e"
  evaluate "ft-ce$e" "$D" "FT, $e ep (control)" $T
done
# key | label | options
while IFS='|' read -r key label opts; do
  key=${key//[[:space:]]/}; label=$(sed 's/^ *//; s/ *$//' <<< "$label")
  [ -z "$key" ] && continue
  # shellcheck disable=SC2086
  step "maxent-$key" defend maxent "${common[@]}" $opts
  evaluate "maxent-$key" "$D" "$label" $T
done <<'ROWS'
lr1e-4             | lr 1e-4; SD rule; stage 2 3 ep              | --maxent-lr 1e-4
lr1e-4-min250      | lr 1e-4; >= 250 steps; stage 2 3 ep         | --maxent-lr 1e-4 --maxent-min-steps 250
lr1e-4-ce10        | lr 1e-4; SD rule; stage 2 10 ep             | --maxent-lr 1e-4 --epochs 10
lr1e-4-min250-ce10 | lr 1e-4; >= 250 steps; stage 2 10 ep        | --maxent-lr 1e-4 --maxent-min-steps 250 --epochs 10
lr1e-4-ce20        | lr 1e-4; SD rule; stage 2 20 ep             | --maxent-lr 1e-4 --epochs 20
lr1e-4-nohead-ce10 | lr 1e-4; SD rule, head frozen; stage 2 10 ep | --maxent-lr 1e-4 --no-train-head --epochs 10
lr1e-4-min500      | lr 1e-4; >= 500 steps; stage 2 3 ep         | --maxent-lr 1e-4 --maxent-min-steps 500
lr2e-5-ce10        | lr 2e-5; SD rule (paper reading); stage 2 10 ep | --maxent-lr 2e-5 --maxent-max-steps 1500 --epochs 10
ROWS

bdcli report "$RUNS/eval/$T" | tee "$RUNS/$T.md"
