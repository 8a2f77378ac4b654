#!/usr/bin/env bash
# Side-by-side CPU cost of two gateway settings: both gateways run at once, pinned to core 0,
# and are loaded in turn (A, B, A, B, ...) from core 1, so drift on a shared machine hits both
# alike. Prints the CPU ticks (1/100 s, user + system, from /proc) each one spent per segment.
#
# Usage: A_CONFIG=a.yaml A_FLAGS="..." B_CONFIG=b.yaml B_FLAGS="..." \
#        [LOAD_ARGS="--header 'apikey: ...'"] perf/scripts/ab_cpu.sh RINGWAY_BIN PERF_BIN [ROUNDS] [REQUESTS]
# LOAD_ARGS go to every load run (both sides get the same requests). B_BIN runs side B on
# another build (before/after a change).
# The origin must listen where the configs point (e.g. `ringway-perf origin --listen
# 127.0.0.1:18081 --body-size 13 --threads 1`, pinned to core 1); the path is /bench/x.
set -euo pipefail
bin=$1; perf=$2; rounds=${3:-6}; requests=${4:-150000}
dir=$(mktemp -d)
trap 'kill $pa $pb 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
start() { # config flags port data [binary]
  # shellcheck disable=SC2086
  taskset -c 0 "${5:-$bin}" --config "$1" --workers 1 --listen "127.0.0.1:$3" --admin-listen 127.0.0.1:0 \
    --data-dir "$dir/$4" --max-connections-per-ip 0 $2 > "$dir/$4.log" 2>&1 &
}
start "$A_CONFIG" "${A_FLAGS:-}" 18095 a; pa=$!
start "$B_CONFIG" "${B_FLAGS:-}" 18096 b "${B_BIN:-$bin}"; pb=$!
# Both must answer before the first round (a large document takes a while to load).
for port in 18095 18096; do
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
  done
done
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
for r in $(seq 1 "$rounds"); do
  for side in a b; do
    if [ $side = a ]; then pid=$pa; port=18095; else pid=$pb; port=18096; fi
    c0=$(cpu $pid)
    # shellcheck disable=SC2086
    eval taskset -c 1 "$perf" load --url "http://127.0.0.1:$port/bench/x" --connections 50 --requests "$requests" \
      "${LOAD_ARGS:-}" > /dev/null
    c1=$(cpu $pid)
    echo "$r $side $((c1 - c0))"
  done
done
