#!/usr/bin/env bash
# gRPC side by side, ringway and nginx each pinned to core 0 with one worker, the clients and
# origins on core 1. Both servers run at once and are loaded in turn (A, B, A, B, ...), so
# drift on a shared machine hits both alike.
#
#   1. gRPC unary pass-through, HTTP/2 (prior knowledge) on both sides: h2load, 10 connections
#      of 10 streams, every call a framed demo.v1.GetRequest to `ringway-perf grpc-origin`;
#      ringway relays, nginx `grpc_pass`es. Server CPU per call.
#   2. A transcoded unary call (GET /v1/items/7: JSON from the path to demo.v1.Echo/Get and the
#      Item back as JSON) against a plain proxied small GET, both through ringway with wrk (50
#      connections): CPU per request, their ratio, and calls per CPU-second (per core).
#
# Usage: perf/scripts/grpc_vs_nginx.sh RINGWAY_BIN PERF_BIN [ROUNDS] [SECONDS]
# Needs nginx, wrk and h2load (apt-get install -y nginx wrk nghttp2-client).
set -euo pipefail
bin=$1; perf=$2; rounds=${3:-5}; secs=${4:-8}
here=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d)
trap 'kill $po $pg $pr $(cat "$dir/nginx.pid" 2>/dev/null) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT

taskset -c 1 "$perf" origin --listen 127.0.0.1:18081 --body-size 13 --threads 1 > "$dir/origin.log" 2>&1 & po=$!
taskset -c 1 "$perf" grpc-origin --listen 127.0.0.1:18082 > "$dir/grpc-origin.log" 2>&1 & pg=$!
cat > "$dir/ringway.yaml" <<YAML
upstreams:
  o:
    targets:
      - addr: "127.0.0.1:18081"
  g:
    protocol: h2c
    targets:
      - addr: "127.0.0.1:18082"
routes:
  bench:
    paths: ["/bench/*"]
    upstream: o
  grpc:
    paths: ["/demo.v1.Echo/*"]
    upstream: g
YAML
taskset -c 0 "$bin" --config "$dir/ringway.yaml" --workers 1 --listen 127.0.0.1:18095 \
  --admin-listen 127.0.0.1:18090 --data-dir "$dir/data" --max-connections-per-ip 0 > "$dir/ringway.log" 2>&1 & pr=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18090/admin/v1/status && break; sleep 0.1; done
python3 - "$here/tests/grpc/protos" <<'PY' > "$dir/proto.json"
import json, sys
d = sys.argv[1]
print(json.dumps({"files": {f: open(f"{d}/{f}").read() for f in ["demo/v1/echo.proto", "demo/v1/types.proto"]}}))
PY
curl -sf -X PUT --data-binary @"$dir/proto.json" -H 'content-type: application/json' \
  http://127.0.0.1:18090/admin/v1/protos/demo > /dev/null
curl -sf -X PUT -H 'content-type: application/json' http://127.0.0.1:18090/admin/v1/routes/rest --data-binary \
  '{"paths": ["/v1/*"], "upstream": "g", "grpc_transcode": {"proto": "demo", "service": "demo.v1.Echo", "from_annotations": true}}' > /dev/null

mkdir -p "$dir/ng"
cat > "$dir/nginx.conf" <<NGINX
worker_processes 1;
pid $dir/nginx.pid;
worker_rlimit_nofile 30000;
error_log $dir/nginx-error.log warn;
events { worker_connections 24576; }
http {
    access_log off;
    client_body_temp_path $dir/ng; proxy_temp_path $dir/ng; fastcgi_temp_path $dir/ng;
    uwsgi_temp_path $dir/ng; scgi_temp_path $dir/ng;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream grpc_origin { server 127.0.0.1:18082; keepalive 512; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:18446 http2;
        location / { grpc_pass grpc://grpc_origin; }
    }
}
NGINX
taskset -c 0 nginx -c "$dir/nginx.conf" -e "$dir/nginx-error.log"
for _ in $(seq 1 50); do [ -s "$dir/nginx.pid" ] && break; sleep 0.1; done
sleep 0.5
nginx_worker=$(pgrep -P "$(cat "$dir/nginx.pid")" | head -1)

# demo.v1.GetRequest {id: "7"}, framed.
printf '\x00\x00\x00\x00\x03\x0a\x01\x37' > "$dir/get.bin"
for port in 18095 18446; do
  out=$(python3 "$here/tests/grpc/raw.py" "127.0.0.1:$port" /demo.v1.Echo/Get 00000000030a0137)
  echo "$out" | grep -q '"grpc-status": "0"' || { echo "port $port does not answer the call: $out" >&2; exit 1; }
done
curl -sf http://127.0.0.1:18095/v1/items/7 | grep -q '"title":"title of 7"' || { echo "transcoding fails" >&2; exit 1; }

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
pid_of() { case $1 in ringway) echo $pr ;; *) echo "$nginx_worker" ;; esac; }
port_of() { case $1 in ringway) echo 18095 ;; *) echo 18446 ;; esac; }
echo "# gRPC unary pass-through (h2load -c 10 -m 10): kind round side calls cpu_ticks us_per_call"
for r in $(seq 1 "$rounds"); do
  for side in ringway nginx; do
    pid=$(pid_of $side)
    c0=$(cpu "$pid")
    out=$(taskset -c 1 h2load -c 10 -m 10 -D "$secs" -d "$dir/get.bin" -H 'content-type: application/grpc' \
      -H 'te: trailers' "http://127.0.0.1:$(port_of $side)/demo.v1.Echo/Get")
    c1=$(cpu "$pid")
    n=$(echo "$out" | awk '/^requests:/ {print $8}')
    echo "$out" | awk '/^requests:/ {exit ($10 != 0 || $12 != 0)}' || { echo "$side: failed calls: $out" >&2; exit 1; }
    echo "grpc $r $side $n $((c1 - c0)) $(python3 -c "print(round(($c1-$c0)*1e4/$n, 2))")"
  done
done
echo "# transcoded vs plain GET through ringway (wrk -c 50): kind round path requests cpu_ticks us_per_request calls_per_cpu_second"
for r in $(seq 1 "$rounds"); do
  for path in /v1/items/7 /bench/x; do
    c0=$(cpu "$pr")
    out=$(taskset -c 1 wrk -t1 -c50 -d"${secs}s" "http://127.0.0.1:18095$path")
    c1=$(cpu "$pr")
    echo "$out" | grep -q 'Non-2xx' && { echo "non-2xx answers on $path: $out" >&2; exit 1; }
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "json $r $path $n $((c1 - c0)) $(python3 -c "print(round(($c1-$c0)*1e4/$n, 2), round($n*100/($c1-$c0)))")"
  done
done
