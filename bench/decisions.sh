#!/usr/bin/env bash
# Decision-quality tables (docs/decisions.md): seeded Monte Carlo of ramp-core's rate trigger,
# gates under repeated looks and dispersion-corrected bounds. Builds ramp-core in release and
# runs the ignored tests of crates/ramp-core/tests/it/decision_quality.rs, printing markdown
# tables. Deterministic (fixed seeds); each table uses two threads.
#
#   bench/decisions.sh            # all tables
#   bench/decisions.sh trigger    # only the tests whose name contains "trigger"
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
filter="${1:-table_}"
cargo test -p ramp-core --release --locked --test it --no-run
start=$(date +%s)
cargo test -p ramp-core --release --locked --test it -- \
  --ignored --nocapture --test-threads=1 "decision_quality::$filter" 2>&1 | grep -v '^test \|^running\|^$'
echo "elapsed: $(( $(date +%s) - start )) s"
