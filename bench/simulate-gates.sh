#!/usr/bin/env bash
# The canary gate `error_rate < 0.1%` through the whole state machine: `ramp simulate` of the
# seed plan for 37 h (canary phase, its extension, the start of the next) with the canary
# exactly at the threshold and at half of it, over SEEDS seeds (default 200). Prints how many
# runs ended where ("held expanded": promoted, stopped at 37 h), held or rolled back. ~1-3 s a run (release).
#
#   bench/simulate-gates.sh [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-200}"
cargo build --release --locked -p ramp >/dev/null 2>&1
ramp="${CARGO_TARGET_DIR:-target}/release/ramp"
for sc in gate-at-threshold gate-at-half; do
  for seed in $(seq 1 "$seeds"); do
    "$ramp" simulate examples/payments-backend.toml --scenario "bench/scenarios/$sc.toml" \
      --seed "$seed" --json |
      python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["outcome"], v["final_phase"])'
  done | sort | uniq -c | sed "s/^/$sc: /"
done
