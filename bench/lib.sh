# Shared by the bench/*.sh table scripts: run one bdcli step through the real CLI, log its JSON summary
# and wall time. An output folder that already exists is kept as it is (its manifest says how it was
# made), so that an interrupted script picks up where it stopped: delete a folder to make it again.
# Source it after setting RUNS (the folder every output goes under).
set -euo pipefail
: "${RUNS:?set RUNS}"
BDCLI=${BDCLI:-bdcli}
mkdir -p "$RUNS/logs"

# step OUT ARGS...: bdcli ARGS --out $RUNS/OUT --json, timed; stops the script on failure.
step() {
  local out=$1; shift
  local t0=$SECONDS
  if [ -f "$RUNS/$out/manifest.json" ]; then echo "  $out: kept (exists)"; return; fi
  echo "\$ bdcli $* --out $RUNS/$out"
  mkdir -p "$(dirname "$RUNS/logs/$out")"
  if ! "$BDCLI" "$@" --out "$RUNS/$out" --json > "$RUNS/logs/$out.json" 2> "$RUNS/logs/$out.err"; then
    echo "  FAILED: $(tail -n 1 "$RUNS/logs/$out.err")" >&2
    exit 1
  fi
  echo "  $out: $((SECONDS - t0)) s"
}

# evaluate MODEL POISONED-DATA LABEL TABLE [NAME]: ACC on the clean test split, ASR on the data's ASR
# set, into eval/TABLE/NAME (default: the model's name).
evaluate() {
  step "eval/$4/${5:-$1}" evaluate --model "$RUNS/$1" --data "$2" --label "$3"
}

machine() {  # with the interpreter bdcli runs in, so that it sees the same torch
  "$(dirname "$(command -v "$BDCLI")")/python" - <<'PY'
import os, platform, torch
print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads, {platform.platform()}")
PY
}
