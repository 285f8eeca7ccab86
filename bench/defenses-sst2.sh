#!/usr/bin/env bash
# The defenses table: ACC and ASR of every defense of the two papers against the BadNets victim of
# bench/attacks-sst2.sh on real SST-2, in both scenarios, through the real CLI.
# - outsourcing: the defender holds the attacker's classifier and 10% of the clean train split;
# - transfer: the defender holds the poisoned encoder only (each defense resets the head) and the full
#   clean train split; the "FT" row is then the user's ordinary clean fine-tune, i.e. the victim.
#
#   BDCLI_DATA_DIR=../shared/data RUNS=runs/paper bash bench/defenses-sst2.sh
#
# SCENARIOS and DEFENSES pick a subset (default: all). TRANSFER_EPOCHS is the CPU budget (the
# defenses' own default is 3 epochs). MAXENT adds options to maxent and variational; by default they
# run with bdcli's defaults, which the knob study set (bench/maxent-knobs.sh, docs/maxent.md).
RUNS=${RUNS:-runs/paper}
SCENARIOS=${SCENARIOS:-outsourcing transfer}
TRANSFER_EPOCHS=${TRANSFER_EPOCHS:-1}
MAXENT=${MAXENT:-}
CLEAN_MODEL=${CLEAN_MODEL:-minilm}  # NAD-C: the clean pre-trained checkpoint the student starts from
source "$(dirname "$0")/lib.sh"
machine
V=victim
D="$RUNS/sst2-badnets"
[ -f "$RUNS/$V/manifest.json" ] || { echo "run bench/attacks-sst2.sh first (needs $RUNS/$V)" >&2; exit 1; }

declare -A LABELS=([ft]=FT [fth]=FTH [freelb]=FreeLB [fine-pruning]=FP [nad]=NAD [nad-c]=NAD-C [gba]=GBA
  [variational]=Variational [maxent]=MaxEnt)

defend_all() {  # TABLE PREFIX NAD-TEACHER-EPOCHS OPTIONS...
  local t=$1 p=$2 teacher=$3; shift 3
  local d
  for d in ${DEFENSES:-ft fth freelb fine-pruning nad nad-c gba variational maxent}; do
    local extra=()
    # shellcheck disable=SC2206
    case $d in
      maxent|variational) extra=($MAXENT) ;;
      nad) extra=(--nad-teacher-epochs "$teacher") ;;
      nad-c) extra=(--nad-teacher-epochs "$teacher" --clean-model "$CLEAN_MODEL") ;;
    esac
    step "$p$d" defend "$d" --model "$RUNS/$V" --data sst2 "$@" "${extra[@]}"
    evaluate "$p$d" "$D" "${LABELS[$d]}" "$t"
  done
}

for scenario in $SCENARIOS; do
  case $scenario in
    outsourcing)
      evaluate "$V" "$D" "Victim" defenses-outsourcing
      defend_all defenses-outsourcing out- 3 --scenario outsourcing ;;
    transfer)
      # The attacker's classifier as shipped, for reference (the papers' tables print the same victim row).
      evaluate "$V" "$D" "Victim" defenses-transfer
      defend_all defenses-transfer tr- "$TRANSFER_EPOCHS" --scenario transfer --clean-fraction 1.0 --epochs "$TRANSFER_EPOCHS" ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
  bdcli report "$RUNS/eval/defenses-$scenario" | tee "$RUNS/defenses-$scenario.md"
done
