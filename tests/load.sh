#!/usr/bin/env bash
# The test suite on a busy machine: pytest with CPU hogs beside it (two by default: on a 2-core machine that
# is a load of 3-6 with the suite's own processes), the hogs killed afterwards however pytest ends.
#   tests/load.sh                      the whole suite
#   tests/load.sh tests/e2e -k blue    any pytest arguments
#   X0TTA6BL4_LOAD_HOGS=4 tests/load.sh
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOGS=${X0TTA6BL4_LOAD_HOGS:-2}
hogs=()
stop_hogs() {
    for p in "${hogs[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${hogs[@]}"; do wait "$p" 2>/dev/null; done
    hogs=()
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$HOGS"); do
    python3 -c 'while True: pass' &
    hogs+=($!)
done
echo "load.sh: $HOGS CPU hogs (pids ${hogs[*]}) beside pytest on $(nproc) cores"
start=$(date +%s)
"$PY" -m pytest -q -ra "$@"
rc=$?
echo "load.sh: pytest exited $rc after $(( $(date +%s) - start )) s beside $HOGS CPU hogs" \
     "(load average $(cut -d' ' -f1-3 /proc/loadavg))"
exit $rc
