#!/usr/bin/env bash
# Static file over HTTPS: this server against nginx, same certificate, same file.
# Each server is pinned to core 0, wrk (1 thread, 32 keep-alive connections) to core 1.
# The shared machine drifts, so the two servers are measured in alternating rounds and the
# median of each is reported.
# Usage: bench/static-vs-nginx/run.sh [SECONDS_PER_ROUND] [ROUNDS]   (default 5 s, 5 rounds)
# With AA=1 a second nginx takes this server's place (an A/A run): the spread of its ratios is
# what the machine's noise alone does to the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-5}
rounds=${2:-5}

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing "${need[@]}"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q --bin poziserver
work=$(mktemp -d)
chmod 755 "$work" # nginx workers run as an unprivileged user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
pozi_port=$(free_port); nginx_port=$(free_port)

# This server, quiet (no access log, warnings only), on a fresh root: it lays out the resource
# check and makes the self-signed certificate that nginx then uses too.
root="$work/root"
mkdir -p "$root"
cat > "$root/config.json" <<JSON
{"listen": ["127.0.0.1:$pozi_port"], "log": {"level": "warn", "console": false},
 "http": {"access_log": {"mode": "off"}}}
JSON
taskset -c 0 target/release/poziserver run --root "$root" > "$work/pozi.out" 2>&1 &
pozi_pid=$!; pids+=("$pozi_pid")
for _ in $(seq 100); do [ -f "$root/state/self-signed.key" ] && curl -skf "https://127.0.0.1:$pozi_port/health" >/dev/null && break; sleep 0.1; done

chmod -R a+rX "$root/userdata"
start_nginx() { # prefix-dir port
    mkdir -p "$1/logs"
    cat > "$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $1/logs/error.log warn;
pid $1/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$2 ssl;
        ssl_certificate $root/state/self-signed.cer;
        ssl_certificate_key $root/state/self-signed.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $root/userdata/local;
        etag on;
    }
}
CONF
    taskset -c 0 "$nginx_bin" -p "$1" -c "$1/nginx.conf" &
    pids+=("$!")
}
start_nginx "$work/nginx" "$nginx_port"
if [ "${AA:-0}" = 1 ]; then
    echo "A/A run: a second nginx in this server's place"
    kill "$pozi_pid"; wait "$pozi_pid" 2>/dev/null || true
    start_nginx "$work/nginx2" "$pozi_port"
    pozi_pid=$!
fi
sleep 1

path=/resourcecheck/local.json
curl -skf "https://127.0.0.1:$pozi_port$path" | cmp - "$root/userdata/local$path"
curl -skf "https://127.0.0.1:$nginx_port$path" | cmp - "$root/userdata/local$path"

run() { # name port -> appends "req/s p99_ms" to $work/name.results
    taskset -c 1 wrk -t1 -c32 -d"${seconds}s" --latency "https://127.0.0.1:$2$path" > "$work/$1.wrk"
    local rps p99
    rps=$(awk '/^Requests\/sec/ {print $2}' "$work/$1.wrk")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' "$work/$1.wrk")
    echo "$rps $p99" >> "$work/$1.results"
    printf '  round %s %-10s %10.0f req/s  p99 %.2f ms\n' "$round" "$1" "$rps" "$p99"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

taskset -c 1 wrk -t1 -c32 -d2s "https://127.0.0.1:$nginx_port$path" >/dev/null # warm-up
taskset -c 1 wrk -t1 -c32 -d2s "https://127.0.0.1:$pozi_port$path" >/dev/null
for round in $(seq "$rounds"); do
    run nginx "$nginx_port"
    run pozi "$pozi_port"
done
nginx_rps=$(cut -d' ' -f1 "$work/nginx.results" | median); nginx_p99=$(cut -d' ' -f2 "$work/nginx.results" | median)
pozi_rps=$(cut -d' ' -f1 "$work/pozi.results" | median); pozi_p99=$(cut -d' ' -f2 "$work/pozi.results" | median)
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pozi_pid/status")

echo "medians over $rounds alternating rounds of ${seconds}s (wrk -t1 -c32, servers on core 0, wrk on core 1):"
printf '%-12s %12s %12s\n' server "req/s" "p99 (ms)"
printf '%-12s %12.0f %12.2f\n' nginx "$nginx_rps" "$nginx_p99"
printf '%-12s %12.0f %12.2f\n' poziserver "$pozi_rps" "$pozi_p99"
awk -v a="$pozi_rps" -v b="$nginx_rps" 'BEGIN { printf "ratio (poziserver / nginx req/s): %.2fx\n", a / b }'
awk -v a="$pozi_p99" -v b="$nginx_p99" 'BEGIN { printf "p99 ratio (poziserver / nginx): %.2f (lower is better)\n", a / b }'
# Rounds are paired (nginx then this server, seconds apart), so each pair's ratio cancels most
# of the machine's drift; the median of those ratios is the steadier figure.
paired() { # column -> median of per-round pozi/nginx ratios
    paste -d' ' <(cut -d' ' -f"$1" "$work/pozi.results") <(cut -d' ' -f"$1" "$work/nginx.results") |
        awk '{print $1 / $2}' | median
}
printf 'paired per-round ratios (median): req/s %.2fx, p99 %.2f\n' "$(paired 1)" "$(paired 2)"
echo "poziserver peak RSS: $((rss_kb / 1024)) MB"
echo "latency distribution of the last round (wrk):"
for name in nginx pozi; do
    printf '  %-6s %s\n' "$name" "$(awk '$1 ~ /^(50|75|90|99)%$/ {printf "%s %s  ", $1, $2}' "$work/$name.wrk")"
done
