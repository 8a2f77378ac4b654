#!/usr/bin/env bash
# CPU per request of several gateway settings loaded at the same time: every gateway runs
# pinned to core 0 and every load (one per gateway, the same for each) to core 1, so whatever
# else the shared machine does in a round slows all sides alike. Each round prints, per side,
# the CPU microseconds per request of the whole process (every thread, from
# /proc/PID/task/*/schedstat, in nanoseconds), of its busiest threads and its request rate
# (krps); the summary gives each side's median against the first side's in the same rounds.
# Two processes of one build can differ by a point or two for their whole life: name each side
# twice, in the order A B B A, and read both.
#
# Gateways sharing one core also share its caches: the more sides, the more each one's memory
# traffic (a log's records and lines) costs the others and itself. With ALONE=1 in the
# environment each side is loaded on its own in turn (the others idle), as a gateway runs on a
# node of its own; the rounds then take as many times longer as there are sides. With FRESH=1
# as well, each side's gateway is started anew for each of its turns (loaded one second before
# it is measured, and stopped after): a process's own lasting bias (its memory's layout, say:
# two processes of one build can differ by a point or two for their whole life) then varies from
# round to round, and shrinks with the rounds, instead of weighing on every round of its side.
#
# Usage: perf/scripts/ab_together.sh PERF_BIN ROUNDS SECONDS NAME=BINARY,CONFIG[,FLAGS...] ...
#   e.g. perf/scripts/ab_together.sh target/release/ringway-perf 10 5 \
#          off=target/release/ringway,off.yaml,--no-stats ship=target/release/ringway,ship.yaml
# The origin must listen where the configs point (e.g. `ringway-perf origin --listen
# 127.0.0.1:18081 --body-size 13 --threads 1`, pinned to core 1); the path is /bench/x.
set -euo pipefail
# shellcheck source=cpu_per_request.sh
. "$(dirname "$0")/cpu_per_request.sh"
perf=$1; rounds=$2; secs=$3; shift 3
dir=$(mktemp -d)
pids=(); ports=(); names=()
stop_all() { for p in "${pids[@]}"; do if [ "$p" -gt 0 ]; then kill "$p" 2>/dev/null || true; fi; done; }
trap 'stop_all; wait 2>/dev/null; rm -rf "$dir"' EXIT
specs=()
# Starts side $1's gateway (a new data directory each time) and waits until it answers.
start() {
  local j=$1 spec
  IFS=, read -r -a spec <<< "${specs[$j]}"
  rm -rf "${dir:?}/${names[$j]}"
  taskset -c 0 "${spec[0]}" --config "${spec[1]}" --workers 1 --listen "127.0.0.1:${ports[$j]}" \
    --admin-listen 127.0.0.1:0 --data-dir "$dir/${names[$j]}" --max-connections-per-ip 0 "${spec[@]:2}" \
    >> "$dir/${names[$j]}.log" 2>&1 &
  pids[j]=$!
}
ready() {
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:${ports[$1]}/" && return
    sleep 0.2
  done
}
i=0
for side in "$@"; do
  names+=("${side%%=*}"); specs+=("${side#*=}"); ports+=($((18095 + i))); pids+=(0)
  if [ -z "${FRESH:-}" ]; then start "$i"; fi
  i=$((i + 1))
done
if [ -z "${FRESH:-}" ]; then for j in "${!names[@]}"; do ready "$j"; done; fi
# One side's load for SECS seconds.
load() {
  taskset -c 1 "$perf" load --url "http://127.0.0.1:${ports[$1]}/bench/x" --connections 50 \
    --duration "$secs" > "$dir/load.$1" 2>&1
}
# One side's figures for the round, from its threads before and after its load.
report() {
  local j=$1 r=$2
  threads "${pids[$j]}" > "$dir/after.$j"
  n=$(awk '/^requests/{print $2}' "$dir/load.$j")
  cpu_report "$dir/before.$j" "$dir/after.$j" "$n" "$r" "${names[$j]}" "$secs" | tee -a "$dir/rounds"
}
for r in $(seq 1 "$rounds"); do
  if [ -n "${ALONE:-}" ]; then
    # Each side loaded on its own, the others idle, in turn; every other round in the
    # opposite order, so a drift of the machine within a round weighs on all sides alike.
    order=("${!pids[@]}")
    if [ $((r % 2)) -eq 0 ]; then mapfile -t order < <(printf '%s\n' "${order[@]}" | tac); fi
    for j in "${order[@]}"; do
      if [ -n "${FRESH:-}" ]; then
        start "$j"
        ready "$j"
        taskset -c 1 "$perf" load --url "http://127.0.0.1:${ports[$j]}/bench/x" --connections 50 \
          --duration 1 > /dev/null 2>&1
      fi
      threads "${pids[$j]}" > "$dir/before.$j"
      load "$j"
      report "$j" "$r"
      if [ -n "${FRESH:-}" ]; then
        kill "${pids[$j]}"
        wait "${pids[$j]}" 2>/dev/null || true
        pids[j]=0
      fi
    done
    continue
  fi
  for j in "${!pids[@]}"; do threads "${pids[$j]}" > "$dir/before.$j"; done
  loads=()
  for j in "${!pids[@]}"; do
    load "$j" &
    loads+=($!)
  done
  wait "${loads[@]}"
  for j in "${!pids[@]}"; do report "$j" "$r"; done
done
python3 - "$dir/rounds" "${names[0]}" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
first = sys.argv[2]
by = {}
for r in rows:
    by.setdefault(r[1], {})[r[0]] = float(r[2])
print(f"median CPU us per request over {len(by[first])} rounds, and against {first} (median of the rounds' ratios):")
for side, v in by.items():
    ratio = statistics.median(v[k] / by[first][k] for k in v)
    print(f"  {side:12} {statistics.median(v.values()):8.3f}  {100 * (ratio - 1):+5.1f}%")
EOF
