#!/usr/bin/env bash
# /ogr2ogr answered by this server against spawning GDAL's ogr2ogr per request (as the original
# server does), on the same GeoPackages, with the same options; checks both return the same
# features, then prints each throughput and the ratio.
#   1. -where continent='Oceania' on naturalearth_lowres.gpkg
#   2. a -spat box returning about 1,000 of 1,000,000 generated points (generated GeoJSON,
#      converted once to a GeoPackage by GDAL: both sides read that GeoPackage)
# This server is measured with its response cache (the default: repeated queries are answered
# from memory) and without it ("data": {"response_cache_mb": 0}).
# Both sides may use both cores: wrk (2 threads, 16 connections) for this server, two
# ogr2ogr processes at a time for GDAL.
# Usage: bench/ogr2ogr-compat/run.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
shared=$(cd ../shared && pwd)

need=()
command -v ogr2ogr >/dev/null || need+=(gdal-bin)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi
cargo build --release -q --bin poziserver

work=$(mktemp -d)
pid=""
pid2=""
cleanup() { for p in $pid $pid2; do kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

data="$work/root/userdata/local"
mkdir -p "$data"
cp "$shared/data/naturalearth_lowres.gpkg" "$data/"
echo "generating 1,000,000 points..."
python3 "$shared/tools/gen_points.py" 1000000 --out "$work/points.geojson"
ogr2ogr -f GPKG "$data/points.gpkg" "$work/points.geojson" -nln points
rm "$work/points.geojson"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# Two instances on the same data: the default (with the response cache) and one without it.
port=$(free_port); uncached_port=$(free_port)
cp -r "$work/root" "$work/root-uncached"
cat > "$work/root/config.json" <<JSON
{"listen": ["127.0.0.1:$port"], "log": {"level": "warn", "console": false}, "http": {"access_log": {"mode": "off"}}}
JSON
cat > "$work/root-uncached/config.json" <<JSON
{"listen": ["127.0.0.1:$uncached_port"], "log": {"level": "warn", "console": false}, "http": {"access_log": {"mode": "off"}},
 "data": {"response_cache_mb": 0}}
JSON
target/release/poziserver run --root "$work/root" >/dev/null 2>&1 &
pid=$!
target/release/poziserver run --root "$work/root-uncached" >/dev/null 2>&1 &
pid2=$!
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$port/health" >/dev/null && curl -skf "https://127.0.0.1:$uncached_port/health" >/dev/null && break; sleep 0.1; done

# Find a box holding about 1,000 points: the data's extent scaled by sqrt(1000 / 1000000).
read -r box < <(python3 - "$data/points.gpkg" <<'PY'
import sqlite3, sys, math
c = sqlite3.connect(sys.argv[1])
minx, maxx, miny, maxy = c.execute("SELECT min(minx), max(maxx), min(miny), max(maxy) FROM rtree_points_geom").fetchone()
f = math.sqrt(1000 / 1_000_000) / 2
cx, cy, w, h = (minx + maxx) / 2, (miny + maxy) / 2, (maxx - minx) * f, (maxy - miny) * f
print(f"{cx - w} {cy - h} {cx + w} {cy + h}")
PY
)

compare() { # source options-for-url argv... -> checks equality, prints the feature count
    local source=$1 options=$2; shift 2
    curl -skfG "https://127.0.0.1:$port/ogr2ogr" --data-urlencode "source=$source" --data-urlencode "options=$options" > "$work/ours.json"
    ogr2ogr -f GeoJSON /vsistdout/ "$data/$source" "$@" > "$work/gdal.json"
    python3 - "$work/ours.json" "$work/gdal.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["features"] for p in sys.argv[1:3])
assert len(a) == len(b), f"feature counts differ: {len(a)} vs {len(b)}"
key = lambda f: json.dumps(f["properties"], sort_keys=True)
assert sorted(map(key, a)) == sorted(map(key, b)), "properties differ"
print(len(a))
PY
}

gdal_rate() { # argv for ogr2ogr -> requests per second with 2 processes at a time
    python3 - "$seconds" "$@" <<'PY'
import subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
seconds, argv = float(sys.argv[1]), sys.argv[2:]
end = time.monotonic() + seconds
def worker():
    n = 0
    while time.monotonic() < end:
        subprocess.run(["ogr2ogr", "-f", "GeoJSON", "/vsistdout/"] + argv, stdout=subprocess.DEVNULL, check=True)
        n += 1
    return n
start = time.monotonic()
with ThreadPoolExecutor(2) as pool:
    total = sum(pool.map(lambda _: worker(), range(2)))
print(f"{total / (time.monotonic() - start):.2f}")
PY
}

our_rate() { # url -> requests per second
    wrk -t2 -c16 -d"${seconds}s" "$1" | awk '/^Requests\/sec/ {print $2}'
}

bench() { # name source options argv...
    local name=$1 source=$2 options=$3; shift 3
    local features cached uncached gdal query
    features=$(compare "$source" "$options" "$@")
    query="ogr2ogr?source=$source&options=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$options")"
    uncached=$(our_rate "https://127.0.0.1:$uncached_port/$query")
    cached=$(our_rate "https://127.0.0.1:$port/$query")
    gdal=$(gdal_rate "$data/$source" "$@")
    printf '%s (%s features)\n' "$name" "$features"
    printf '  ogr2ogr per request      %10.2f req/s\n' "$gdal"
    printf '  poziserver, no cache     %10.1f req/s  ratio %6.0fx\n' "$uncached" "$(awk -v a="$uncached" -v b="$gdal" 'BEGIN {print a / b}')"
    printf '  poziserver (default)     %10.1f req/s  ratio %6.0fx\n' "$cached" "$(awk -v a="$cached" -v b="$gdal" 'BEGIN {print a / b}')"
}

bench "-where continent='Oceania'" naturalearth_lowres.gpkg "-where|continent='Oceania'" -where "continent='Oceania'"
# shellcheck disable=SC2086
bench "-spat (about 1,000 of 1,000,000)" points.gpkg "-spat|${box// /|}" -spat $box
