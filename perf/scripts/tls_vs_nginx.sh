#!/usr/bin/env bash
# HTTPS side by side: ringway and nginx terminate TLS (the same ECDSA P-256 certificate, TLS
# 1.2 and 1.3, session tickets) in front of the same origin, both pinned to core 0 with one
# worker; the clients run on core 1. Both servers run at once and are loaded in turn (A, B,
# A, B, ...), so drift on a shared machine hits both alike.
#
#   1. kept-alive HTTPS small GETs (wrk, 50 connections): server CPU per request;
#   1b. HTTP/2 over TLS small GETs (h2load, 10 connections of 10 streams each): the same;
#   2. new TLS connections, full and resumed handshakes (`openssl s_time -new` / `-reuse`):
#      server CPU per handshake, and handshakes per server CPU-second (what one core can take).
#
#   The plaintext listeners of both are measured the same way in step 1, for the cost of TLS
#   itself on each.
#
# Usage: [ONLY=get|h2|handshakes] perf/scripts/tls_vs_nginx.sh RINGWAY_BIN PERF_BIN [ROUNDS] [SECONDS]
# Needs nginx, wrk and openssl (apt-get install -y nginx wrk openssl).
set -euo pipefail
bin=$1; perf=$2; rounds=${3:-5}; secs=${4:-8}
dir=$(mktemp -d)
trap 'kill $po $pr $(cat "$dir/nginx.pid" 2>/dev/null) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=bench.local \
  -addext subjectAltName=DNS:bench.local -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null

taskset -c 1 "$perf" origin --listen 127.0.0.1:18081 --body-size 13 --threads 1 > "$dir/origin.log" 2>&1 & po=$!
cat > "$dir/ringway.yaml" <<YAML
upstreams:
  o:
    targets:
      - addr: "127.0.0.1:18081"
routes:
  bench:
    paths: ["/*"]
    upstream: o
YAML
taskset -c 0 "$bin" --config "$dir/ringway.yaml" --workers 1 --listen 127.0.0.1:18095 --tls-listen 127.0.0.1:18443 \
  --admin-listen 127.0.0.1:18090 --data-dir "$dir/data" --max-connections-per-ip 0 > "$dir/ringway.log" 2>&1 & pr=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18090/admin/v1/status && break; sleep 0.1; done
python3 - "$dir" <<'PY' > "$dir/cert.json"
import json, sys
d = sys.argv[1]
print(json.dumps({"snis": ["bench.local"], "default": True,
                  "cert": open(f"{d}/cert.pem").read(), "key": open(f"{d}/key.pem").read()}))
PY
curl -sf -X PUT --data-binary @"$dir/cert.json" -H 'content-type: application/json' \
  http://127.0.0.1:18090/admin/v1/certificates/bench > /dev/null

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
    upstream origin { server 127.0.0.1:18081; keepalive 64; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:18444 ssl http2;
        listen 127.0.0.1:18445;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
taskset -c 0 nginx -c "$dir/nginx.conf" -e "$dir/nginx-error.log"
for _ in $(seq 1 50); do [ -s "$dir/nginx.pid" ] && break; sleep 0.1; done
sleep 0.5
nginx_worker=$(pgrep -P "$(cat "$dir/nginx.pid")" | head -1)
for port in 18443 18444; do
  curl -sfk --resolve "bench.local:$port:127.0.0.1" "https://bench.local:$port/bench/x" > /dev/null
done

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
pid_of() { case $1 in ringway*) echo $pr ;; *) echo "$nginx_worker" ;; esac; }
url_of() {
  case $1 in
    ringway) echo https://127.0.0.1:18443/bench/x ;; nginx) echo https://127.0.0.1:18444/bench/x ;;
    ringway-plain) echo http://127.0.0.1:18095/bench/x ;; nginx-plain) echo http://127.0.0.1:18445/bench/x ;;
  esac
}
port_of() { if [ "$1" = ringway ]; then echo 18443; else echo 18444; fi; }
if [ "${ONLY:-get}" = get ] || [ -z "${ONLY:-}" ]; then
echo "# kept-alive GETs: kind round side requests cpu_ticks us_per_request"
for r in $(seq 1 "$rounds"); do
  for side in ringway nginx ringway-plain nginx-plain; do
    pid=$(pid_of $side)
    c0=$(cpu "$pid")
    n=$(taskset -c 1 wrk -t1 -c50 -d"${secs}s" "$(url_of $side)" | awk '/requests in/ {print $1}')
    c1=$(cpu "$pid")
    echo "get $r $side $n $((c1 - c0)) $(python3 -c "print(round(($c1-$c0)*1e4/$n, 2))")"
  done
done
fi
if [ "${ONLY:-h2}" = h2 ]; then
echo "# HTTP/2 GETs (h2load -c 10 -m 10): kind round side requests cpu_ticks us_per_request"
for r in $(seq 1 "$rounds"); do
  for side in ringway nginx; do
    pid=$(pid_of $side)
    c0=$(cpu "$pid")
    n=$(taskset -c 1 h2load -c 10 -m 10 -D "$secs" "$(url_of $side)" | awk '/^requests:/ {print $8}')
    c1=$(cpu "$pid")
    echo "h2 $r $side $n $((c1 - c0)) $(python3 -c "print(round(($c1-$c0)*1e4/$n, 2))")"
  done
done
fi
[ "${ONLY:-handshakes}" = handshakes ] || exit 0
echo "# new TLS connections: kind round side connections cpu_ticks handshakes_per_cpu_second"
for kind in new reuse; do
  for r in $(seq 1 "$rounds"); do
    for side in ringway nginx; do
      pid=$(pid_of $side); port=$(port_of $side)
      c0=$(cpu "$pid")
      n=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$port" -$kind -time "$secs" 2>/dev/null \
        | awk '/connections in/ {print $1; exit}')
      c1=$(cpu "$pid")
      echo "$kind $r $side $n $((c1 - c0)) $(python3 -c "print(round($n*100/max($c1-$c0,1)))")"
    done
  done
done
