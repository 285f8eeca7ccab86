#!/usr/bin/env bash
# Feed every command bad input and print what it answers: exit code, stderr, and whether anything was
# left behind. A living record of bdcli's error contract (one line, exit 2 for usage, 1 for failures,
# nothing half-written).
#
#   BDCLI_DATA_DIR=../shared/data bash scripts/bad-inputs.sh
set -uo pipefail
cd "$(dirname "$0")/.."
B=${BDCLI:-.venv/bin/bdcli}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export HF_HUB_OFFLINE=1

printf 'text\tlabel\ngood film\t1\n' > "$W/nolabelcol.tsv"; sed -i 's/label/sentiment/' "$W/nolabelcol.tsv"
printf 'text\tlabel\n' > "$W/header-only.tsv"
: > "$W/empty.tsv"
printf 'text\tlabel\ncaf\xe9\t0\n' > "$W/latin1.tsv"
printf 'text\tlabel\nfine\t1\nno label here\nfine\t1\n' > "$W/malformed.tsv"
printf 'text\tlabel\nfine\t5\n' > "$W/badlabel.jsonl"
printf '{"text": "fine", "label": 1}\n{"text": broken\n' > "$W/broken.jsonl"
mkdir -p "$W/pickle-model" && printf '{"model_type": "bert"}' > "$W/pickle-model/config.json" && printf 'x' > "$W/pickle-model/pytorch_model.bin"
mkdir -p "$W/remote-code" && printf '{"model_type": "bert", "auto_map": {"AutoModel": "evil.Model"}}' > "$W/remote-code/config.json" && printf 'x' > "$W/remote-code/model.safetensors"

try() {
  local out="$W/out-$RANDOM"
  printf '\n$ bdcli %s\n' "$*"
  "$B" "$@" --out "$out" >/dev/null 2>"$W/err"
  local rc=$?
  sed 's/^/  /' "$W/err" | head -5
  printf '  -> exit %s, output folder left: %s\n' "$rc" "$([ -e "$out" ] && echo yes || echo no)"
}

try poison badnets --data sst2 --data-dir /nonexistent
try poison badnets --data imdb
try poison badnets --data "$W/nolabelcol.tsv"
try poison badnets --data "$W/header-only.tsv"
try poison badnets --data "$W/empty.tsv"
try poison badnets --data "$W/latin1.tsv"
try poison badnets --data "$W/malformed.tsv"
try poison badnets --data "$W/broken.jsonl"
try poison badnets --data sst2 --target neutral
try poison badnets --data sst2 --target 7
try poison badnets --data sst2 --rate 0
try poison badnets --data sst2 --rate 1.5
try poison badnets --data sst2 --rate 0.00001
try poison badnets --data sst2 --rate 0.9
try poison badnets --data sst2 --insertions 0
try poison hiddenkiller --data agnews
try poison sos --data sst2 --trigger-words friends,friends
try attack finetune --model /no/such/model --data sst2
try attack finetune --model "$W/pickle-model" --data sst2
try attack finetune --model "$W/remote-code" --data sst2
try attack finetune --model minilm --data sst2 --lr -1
try attack finetune --model minilm --data sst2 --scenario cloud
try defend maxent --model minilm --data sst2
try defend maxent --model /no/such/victim --data sst2
try defend maxent --model minilm --data sst2 --sd -1
try defend maxent --model minilm --data sst2 --preset medium
try defend maxent --model minilm --data sst2 --clean-fraction 2
try probe-sd --model minilm --data sst2 --sd ""
try probe-sd --model minilm --data sst2 --sd 0.01,0.05
try probe-sd --model minilm --data sst2 --sd 0.05,0.05
try probe-sd --model minilm --data sst2 --sd 0.05,inf
try probe-sd --model minilm --data sst2 --asr-data sst2 --sd 0.05
try defend nad --model minilm --data sst2 --nad-beta -1
try defend fine-pruning --model minilm --data sst2 --prune-ratio 1.5
try evaluate --model ./missing --data sst2
try evaluate --model minilm --data sst2
try defend unknown-defense --model minilm --data sst2

# bdcli archive takes two folders (no --out): a folder that is no store, and a store whose plan is broken.
archive() {
  printf '\n$ bdcli archive %s\n' "$*"
  "$B" archive "$@" >/dev/null 2>"$W/err"
  local rc=$?
  sed 's/^/  /' "$W/err" | head -5
  printf '  -> exit %s, archive left: %s\n' "$rc" "$([ -e "${@: -1}" ] && echo yes || echo no)"
}
mkdir -p "$W/not-a-store" "$W/broken-store" && printf '{"nodes": ' > "$W/broken-store/plan.json"
archive "$W/not-a-store" "$W/arch1"
archive "$W/broken-store" "$W/arch2"
