#!/usr/bin/env bash
# Wall time of re-engineering two targets one after the other vs in parallel, both through
# DVC's experiment queue (one queued experiment per `reengineer@<target>` stage), then a
# check that the parallel run gave the same per-epoch logs.
#
# Run it in a workspace where `dvc repro prepare fetch_model` has run, with absolute
# dataset.source and SEAM_MODEL_MIRROR (queued runs start from a copy elsewhere):
#   uv run benchmarks/parallel_targets.sh [TARGET_A] [TARGET_B] [EPOCHS]
set -euo pipefail
a=${1:-cat}
b=${2:-truck}
epochs=${3:-4}
cores=$(nproc)
export DVC_NO_ANALYTICS=1 NM_DISABLE_ANALYTICS=1
logs=$(mktemp -d)

batch() {  # workers, threads per worker, early_stop
  local jobs=$1 threads=$2 early_stop=$3
  # A worker keeps the environment it started with: wait until the previous batch's are gone.
  until dvc queue status 2>/dev/null | grep -q "Worker status: 0 active, 0 idle"; do sleep 1; done
  # early_stop > epochs never fires; a new value per batch only keeps it from being a
  # run-cache hit of an earlier batch
  for t in "$a" "$b"; do
    dvc exp run --queue -q -S "reengineer.max_epochs=$epochs" -S "reengineer.early_stop=$early_stop" "reengineer@$t"
  done
  local start end
  start=$(date +%s.%N)
  OMP_NUM_THREADS=$threads dvc exp run --run-all -j "$jobs" >"$logs/j$jobs.log" 2>&1
  end=$(date +%s.%N)
  grep -h "threads)\|threads$\|kept epoch" "$logs/j$jobs.log" | sed 's/^/    /' || true
  printf '%d worker(s) x %d thread(s): %.1f s\n' "$jobs" "$threads" "$(echo "$end - $start" | bc)"
}

echo "two targets ($a, $b), $epochs search epochs each, $cores cores"
stamp=$(date +%s)  # early_stop values unseen before: no batch is a run-cache hit of an earlier one
batch 1 "$cores" "$stamp"
batch 2 $((cores / 2 > 0 ? cores / 2 : 1)) $((stamp + 1))

# Same logs both ways? Each experiment's dvc.lock records the md5 of the CSV its target wrote.
for t in "$a" "$b"; do
  sums=""
  for ref in $(git for-each-ref --sort=creatordate --format='%(refname)' refs/exps | tail -4); do
    sum=$(git show "$ref:dvc.lock" | python -c "
import sys, yaml
outs = yaml.safe_load(sys.stdin)['stages'].get('reengineer@$t', {}).get('outs', [])
print(''.join(o['md5'][:12] for o in outs if o['path'].endswith('.csv')))")
    if [ -n "$sum" ]; then sums="$sums $sum"; fi
  done
  echo "plots/reengineer/$t.csv md5, sequential then parallel:$sums (equal only at equal threads per run)"
done
rm -rf "$logs"
