#!/usr/bin/env bash
# CPU per request of one gateway with a setting on and off in turns, switched live through the
# admin API (`PUT /admin/v1/config`) between loads: both sides run in the same process, so its
# lasting bias (its memory's layout, say: two processes of one build differ by a point or two
# for their whole life, more than most settings cost) weighs on both alike, and each round's
# two loads follow each other within seconds. The gateway is pinned to core 0, the load to
# core 1; each side is loaded one second unmeasured after the switch, then measured. Every
# RESTART_EVERY rounds (default 5) the gateway is started anew, so the figures span several
# processes; each takes the sides in turn A B, B A, ..., every other process starting B A.
# Output as `ab_together.sh`'s (one line per side and round), read the same way. PORT (default
# 18095) and PORT + 100 (the admin API) must be free.
#
# Usage: perf/scripts/ab_toggle.sh PERF_BIN GATEWAY ROUNDS SECONDS ON=CONFIG OFF=CONFIG [FLAGS...]
#   e.g. perf/scripts/ab_toggle.sh target/release/ringway-perf target/release/ringway 30 5 \
#          ship=ship.yaml stats=off.yaml
# The origin must listen where the configs point (as for `ab_together.sh`); the path is /bench/x.
set -euo pipefail
# shellcheck source=cpu_per_request.sh
. "$(dirname "$0")/cpu_per_request.sh"
perf=$1; gw=$2; rounds=$3; secs=$4
names=("${5%%=*}" "${6%%=*}"); configs=("${5#*=}" "${6#*=}"); shift 6
dir=$(mktemp -d)
port=${PORT:-18095}; admin=$((port + 100)); pid=0; every=${RESTART_EVERY:-5}
if ! [ "$every" -ge 1 ] 2>/dev/null; then echo "RESTART_EVERY must be 1 or more" >&2; exit 2; fi
for p in "$port" "$admin"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$p/"; then echo "port $p is taken" >&2; exit 2; fi
done
# On failure the gateway's log is kept, and where it is said.
finish() {
  local rc=$?
  if [ "$pid" -gt 0 ]; then kill "$pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [ "$rc" -eq 0 ]; then rm -rf "$dir"; else echo "failed; the gateway's log is $dir/log" >&2; fi
}
trap finish EXIT
start() {
  rm -rf "${dir:?}/data"
  taskset -c 0 "$gw" --config "${configs[0]}" --workers 1 --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" --data-dir "$dir/data" --max-connections-per-ip 0 "$@" \
    >> "$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    curl -s -o /dev/null "http://127.0.0.1:$port/" && return
    sleep 0.2
  done
  echo "the gateway did not start: $(tail -5 "$dir/log")" >&2
  exit 1
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=0; }
load() {
  taskset -c 1 "$perf" load --url "http://127.0.0.1:$port/bench/x" --connections 50 --duration "$1" > "$dir/load" 2>&1
}
for r in $(seq 1 "$rounds"); do
  if [ $(((r - 1) % every)) -eq 0 ]; then
    if [ "$pid" -gt 0 ]; then stop; fi
    start "$@"
  fi
  # Every other round of a process in the opposite order, so a drift within a round weighs on
  # both alike and neither side always has a process's first load.
  order=(0 1)
  if [ $((((r - 1) % every + (r - 1) / every) % 2)) -eq 1 ]; then order=(1 0); fi
  for j in "${order[@]}"; do
    if ! answer=$(curl -sS -X PUT -H 'content-type: application/yaml' --data-binary @"${configs[$j]}" \
      -w '\n%{http_code}' "http://127.0.0.1:$admin/admin/v1/config"); then
      echo "the admin API did not answer" >&2
      exit 1
    fi
    if [ "${answer##*$'\n'}" != 200 ]; then
      echo "PUT ${configs[$j]} refused: $answer" >&2
      exit 1
    fi
    load 1
    threads "$pid" > "$dir/before"
    load "$secs"
    threads "$pid" > "$dir/after"
    n=$(awk '/^requests/{print $2}' "$dir/load")
    cpu_report "$dir/before" "$dir/after" "$n" "$r" "${names[$j]}" "$secs" | tee -a "$dir/rounds"
  done
done
python3 - "$dir/rounds" "${names[1]}" "${names[0]}" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
off, on = sys.argv[2], sys.argv[3]
by = {}
for r in rows:
    by.setdefault(r[0], {})[r[1]] = float(r[2])
ratios = [100 * (v[on] / v[off] - 1) for v in by.values() if on in v and off in v]
se = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else float("nan")
print(f"{on} against {off} over {len(ratios)} rounds: mean {statistics.mean(ratios):+.2f}% "
      f"(SE {se:.2f}), median {statistics.median(ratios):+.2f}%")
EOF
