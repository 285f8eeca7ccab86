#!/usr/bin/env bash
# Run one test file N times in a row and print one line per run (exit status, wall seconds, load
# average, pytest's summary); used for the "20 in a row" checks in docs/trust-resume.md.
#   bash scripts/repeat_tests.sh tests/test_trust.py 20 [LABEL]
# To load the CPU with a second job meanwhile, start one yourself (the quick start, say) beforehand.
set -uo pipefail
cd "$(dirname "$0")/.."
file=$1 n=$2 label=${3:-run}
logs=$(mktemp -d)
failed=0
for i in $(seq 1 "$n"); do
    start=$(date +%s)
    CI=1 .venv/bin/python -m pytest -q -p no:cacheprovider "$file" > "$logs/$i.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || failed=$((failed + 1))
    echo "$label run $i rc=$rc $(( $(date +%s) - start )) s load=$(cut -d' ' -f1 /proc/loadavg) $(tail -1 "$logs/$i.log")"
done
echo "$label: $((n - failed)) of $n runs passed (logs in $logs)"
[ $failed -eq 0 ]
