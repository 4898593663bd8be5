#!/usr/bin/env bash
# Run the three benchmarks one after another (never in parallel: they would disturb each other's timings).
# Usage: bash bench/run_all.sh [outdir]   (logs and JSON figures go to outdir, default bench/results/<date>)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
source "$root/env.sh"
py="${PYTHON:-$root/.venv/bin/python}"
out="${1:-$here/results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
for b in load_speed generate_speed train_speed; do
  echo "== $b"
  "$py" "$here/$b.py" --json "$out/$b.json" 2>&1 | grep -v '^Loading weights' | tee "$out/$b.log"
done
echo "logs and figures in $out"
