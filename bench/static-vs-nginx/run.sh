#!/usr/bin/env bash
# Static file over HTTPS: this server against nginx, same certificate, same file, twice:
# both with their access logs on (this server as configured by default; nginx's default
# `access_log` to a file) and both with them off (this server tuned: access log off, warnings
# only). Each server is pinned to core 0, wrk (1 thread, 32 keep-alive connections) to core 1.
# The shared machine drifts, so the servers are measured in alternating rounds and the median
# of each is reported. A third server, tuned with request metrics off as well, gives the cost of
# recording metrics (on / off, paired per round).
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

start_pozi() { # name config-json -> sets port_<name>, pid_<name>
    local root="$work/$1" port
    port=$(free_port)
    mkdir -p "$root"
    echo "${2//PORT/$port}" > "$root/config.json"
    taskset -c 0 target/release/poziserver run --root "$root" > "$work/$1.out" 2>&1 &
    pids+=("$!")
    eval "port_$1=$port pid_$1=$!"
    for _ in $(seq 100); do [ -f "$root/state/self-signed.key" ] && curl -skf "https://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
}
# Access log off, warnings only (metrics on, as by default): the tuned set-up. It lays out the
# resource check and makes the self-signed certificate that nginx then uses too.
start_pozi pozi_off '{"listen": ["127.0.0.1:PORT"], "log": {"level": "warn", "console": false}, "http": {"access_log": {"mode": "off"}}}'
# The defaults a user gets: access log on, info level, console on (to a file here); metrics on.
start_pozi pozi_on '{"listen": ["127.0.0.1:PORT"]}'
# The tuned set-up with request metrics off too: what recording a request costs.
start_pozi pozi_nometrics '{"listen": ["127.0.0.1:PORT"], "log": {"level": "warn", "console": false}, "http": {"access_log": {"mode": "off"}}, "metrics": {"enabled": false}}'
root="$work/pozi_off"

chmod -R a+rX "$root/userdata"
start_nginx() { # name access-log-directive -> sets port_<name>
    local dir="$work/$1" port
    port=$(free_port)
    mkdir -p "$dir/logs"
    cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    access_log ${2//DIR/$dir};
    sendfile on;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $root/state/self-signed.cer;
        ssl_certificate_key $root/state/self-signed.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $root/userdata/local;
        etag on;
    }
}
CONF
    taskset -c 0 "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" &
    pids+=("$!")
    eval "port_$1=$port pid_$1=$!"
}
start_nginx nginx_off off
start_nginx nginx_on DIR/logs/access.log
if [ "${AA:-0}" = 1 ]; then
    echo "A/A run: a second nginx in this server's place"
    kill "$pid_pozi_off" "$pid_pozi_on"; wait "$pid_pozi_off" "$pid_pozi_on" 2>/dev/null || true
    start_nginx pozi_off off
    start_nginx pozi_on DIR/logs/access.log
fi
sleep 1

path=/resourcecheck/local.json
for name in pozi_off pozi_on pozi_nometrics nginx_off nginx_on; do
    port_var="port_$name"
    curl -skf "https://127.0.0.1:${!port_var}$path" | cmp - "$root/userdata/local$path"
done

run() { # name -> appends "req/s p99_ms" to $work/name.results
    local port_var="port_$1" rps p99
    taskset -c 1 wrk -t1 -c32 -d"${seconds}s" --latency "https://127.0.0.1:${!port_var}$path" > "$work/$1.wrk"
    rps=$(awk '/^Requests\/sec/ {print $2}' "$work/$1.wrk")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' "$work/$1.wrk")
    echo "$rps $p99" >> "$work/$1.results"
    printf '  round %s %-10s %10.0f req/s  p99 %.2f ms\n' "$round" "$1" "$rps" "$p99"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for name in nginx_off pozi_off nginx_on pozi_on pozi_nometrics; do # warm-up
    port_var="port_$name"
    taskset -c 1 wrk -t1 -c32 -d2s "https://127.0.0.1:${!port_var}$path" >/dev/null
done
for round in $(seq "$rounds"); do
    run nginx_off
    run pozi_off
    run pozi_nometrics
    run nginx_on
    run pozi_on
done

# Rounds are paired (nginx then this server, seconds apart), so each pair's ratio cancels most
# of the machine's drift; the median of those ratios is the steadier figure.
paired() { # mode column -> median of per-round pozi/nginx ratios
    paste -d' ' <(cut -d' ' -f"$2" "$work/pozi_$1.results") <(cut -d' ' -f"$2" "$work/nginx_$1.results") |
        awk '{print $1 / $2}' | median
}
report() { # mode title
    local nginx_rps nginx_p99 pozi_rps pozi_p99
    nginx_rps=$(cut -d' ' -f1 "$work/nginx_$1.results" | median); nginx_p99=$(cut -d' ' -f2 "$work/nginx_$1.results" | median)
    pozi_rps=$(cut -d' ' -f1 "$work/pozi_$1.results" | median); pozi_p99=$(cut -d' ' -f2 "$work/pozi_$1.results" | median)
    echo "$2: medians over $rounds alternating rounds of ${seconds}s (wrk -t1 -c32, servers on core 0, wrk on core 1):"
    printf '  %-12s %12s %12s\n' server "req/s" "p99 (ms)"
    printf '  %-12s %12.0f %12.2f\n' nginx "$nginx_rps" "$nginx_p99"
    printf '  %-12s %12.0f %12.2f\n' poziserver "$pozi_rps" "$pozi_p99"
    awk -v a="$pozi_rps" -v b="$nginx_rps" 'BEGIN { printf "  ratio (poziserver / nginx req/s): %.2fx\n", a / b }'
    awk -v a="$pozi_p99" -v b="$nginx_p99" 'BEGIN { printf "  p99 ratio (poziserver / nginx): %.2f (lower is better)\n", a / b }'
    printf '  paired per-round ratios (median): req/s %.2fx, p99 %.2f\n' "$(paired "$1" 1)" "$(paired "$1" 2)"
    for name in nginx pozi; do
        printf '  last round %-6s %s\n' "$name" "$(awk '$1 ~ /^(50|75|90|99)%$/ {printf "%s %s  ", $1, $2}' "$work/${name}_$1.wrk")"
    done
}
report on "ACCESS LOGS ON (defaults)"
report off "ACCESS LOGS OFF (tuned)"
# The cost of request metrics: the tuned set-up with them on (pozi_off) against off, paired
# (each pair measured back to back).
metrics_ratio=$(paste -d' ' <(cut -d' ' -f1 "$work/pozi_off.results") <(cut -d' ' -f1 "$work/pozi_nometrics.results") | awk '{print $1 / $2}' | median)
printf 'METRICS: tuned set-up, req/s with metrics on / off (paired per-round median): %.3f (median off: %.0f req/s)\n' \
    "$metrics_ratio" "$(cut -d' ' -f1 "$work/pozi_nometrics.results" | median)"
for name in pozi_off pozi_on; do
    pid_var="pid_$name"
    [ -r "/proc/${!pid_var}/status" ] && echo "$name peak RSS: $(( $(awk '/VmHWM/ {print $2}' "/proc/${!pid_var}/status") / 1024 )) MB"
done
lines=$(cat "$work"/pozi_on/logs/access.log.* 2>/dev/null | wc -l)
echo "poziserver access log lines written (logs on): $lines"
