#!/usr/bin/env bash
# /ogr2ogr answered by this server against spawning GDAL's ogr2ogr per request (as the original
# server does), on the same GeoPackages, with the same options; checks both return the same
# features, then prints each throughput and the ratio.
#   1. -where continent='Oceania' on naturalearth_lowres.gpkg
#   2. a -spat box returning about 1,000 of 1,000,000 generated points (generated GeoJSON,
#      converted once to a GeoPackage by GDAL: both sides read that GeoPackage)
# This server runs three times on the same data: as configured by default (a repeated query is
# answered from the response cache; boxes over features read before, from rendered copies),
# without the response cache, and with no caches at all (every answer read from rows).
# The million-point box is also asked as a map being panned: a box of the same size at a random
# place within an area 4 boxes wide and high (pan.lua), so no two requests are the same; and
# wandering: such boxes anywhere over the whole layer, far more features than the feature cache
# holds. Then a fresh box on a spatially ordered file: the same points dropped in as GeoJSON,
# which this server converts once into a GeoPackage written in spatial order (no caches; GDAL
# still reads its own GeoPackage). Then the whole countries layer uncompressed, gzip and
# brotli: bytes and rates. Last,
# each instance's memory is printed, at once and after 30 s idle.
# Both sides may use both cores: wrk (2 threads, 16 connections) for this server, two
# ogr2ogr processes at a time for GDAL.
# Usage: bench/ogr2ogr-compat/run.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}

need=()
command -v ogr2ogr >/dev/null || need+=(gdal-bin)
command -v wrk >/dev/null || need+=(wrk)
# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing "${need[@]}"
cargo build --release -q --bin poziserver

work=$(mktemp -d)
pids=""
cleanup() { for p in $pids; do kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

data="$work/root/userdata/local"
mkdir -p "$data"
cp tests/data/naturalearth_lowres.gpkg "$data/"
echo "generating 1,000,000 points..."
python3 scripts/gen_points.py 1000000 --out "$work/points.geojson"
ogr2ogr -f GPKG "$data/points.gpkg" "$work/points.geojson" -nln points

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# Three instances on the same data: the default, no response cache, and no caches at all.
port=$(free_port); copies_port=$(free_port); rows_port=$(free_port)
instance() { # name port data-config
    [ "$1" = root ] || cp -r "$work/root" "$work/$1"
    cat > "$work/$1/config.json" <<JSON
{"listen": ["127.0.0.1:$2"], "log": {"level": "warn", "console": false}, "http": {"access_log": {"mode": "off"}},
 "data": $3}
JSON
}
instance root "$port" '{}'
instance root-copies "$copies_port" '{"response_cache_mb": 0}'
instance root-rows "$rows_port" '{"response_cache_mb": 0, "feature_cache_mb": 0}'
# The same points dropped in as GeoJSON, for the instance without caches: it converts them once
# into a GeoPackage written in spatial order (GDAL's GeoPackage is in the generator's order).
mv "$work/points.geojson" "$work/root-rows/userdata/local/points.geojson"
declare -A pid_of
for name in root root-copies root-rows; do
    target/release/poziserver run --root "$work/$name" >/dev/null 2>&1 &
    pids="$pids $!"
    pid_of[$name]=$!
done
for p in $port $copies_port $rows_port; do
    for _ in $(seq 100); do curl -skf "https://127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
done

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
    # Read twice, so the second answer comes from rendered copies, and compare that one.
    curl -skfG "https://127.0.0.1:$copies_port/ogr2ogr" --data-urlencode "source=$source" --data-urlencode "options=$options" >/dev/null
    curl -skfG "https://127.0.0.1:$copies_port/ogr2ogr" --data-urlencode "source=$source" --data-urlencode "options=$options" > "$work/ours.json"
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

our_rate() { # url [pan.lua arguments...] -> requests per second
    local url=$1 script=(); shift
    [ $# -eq 0 ] || script=(-s bench/ogr2ogr-compat/pan.lua)
    wrk -t2 -c16 -d"${seconds}s" "${script[@]}" "$url" "$@" | awk '/^Requests\/sec/ {print $2}'
}

line() { # label rate gdal-rate
    printf '  %-34s %10.1f req/s  ratio %6.0fx\n' "$1" "$2" "$(awk -v a="$2" -v b="$3" 'BEGIN {print a / b}')"
}

bench() { # name source options argv...
    local name=$1 source=$2 options=$3; shift 3
    local features gdal query
    features=$(compare "$source" "$options" "$@")
    query="ogr2ogr?source=$source&options=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$options")"
    gdal=$(gdal_rate "$data/$source" "$@")
    printf '%s (%s features)\n' "$name" "$features"
    printf '  %-34s %10.2f req/s\n' "ogr2ogr per request" "$gdal"
    line "poziserver, no caches" "$(our_rate "https://127.0.0.1:$rows_port/$query")" "$gdal"
    line "poziserver, no response cache" "$(our_rate "https://127.0.0.1:$copies_port/$query")" "$gdal"
    line "poziserver (default)" "$(our_rate "https://127.0.0.1:$port/$query")" "$gdal"
    last_gdal=$gdal
}

bench "-where continent='Oceania'" naturalearth_lowres.gpkg "-where|continent='Oceania'" -where "continent='Oceania'"
# shellcheck disable=SC2086
bench "-spat (about 1,000 of 1,000,000)" points.gpkg "-spat|${box// /|}" -spat $box

# Panning: random boxes of the same size around the one above; GDAL's cost per call does not
# depend on where the box is, so its rate above is the peer. One random box is checked first.
read -r pan_x pan_y pan_w pan_h < <(python3 -c '
import sys
x0, y0, x1, y1 = map(float, sys.argv[1:5])
w, h = x1 - x0, y1 - y0
print(x0 - 1.5 * w, y0 - 1.5 * h, w, h)' $box)
check_box=$(python3 -c 'import sys; x, y, w, h = map(float, sys.argv[1:5]); print(x + 1.3 * w, y + 2.1 * h, x + 2.3 * w, y + 3.1 * h)' "$pan_x" "$pan_y" "$pan_w" "$pan_h")
# shellcheck disable=SC2086
pan_features=$(compare points.gpkg "-spat|${check_box// /|}" -spat $check_box)
pan=(-- points.gpkg "$pan_x" "$pan_y" "$pan_w" "$pan_h" 4)
printf 'panning: random boxes of the same size within 4x4 boxes (%s features in the checked one)\n' "$pan_features"
line "poziserver, no caches" "$(our_rate "https://127.0.0.1:$rows_port/" "${pan[@]}")" "$last_gdal"
line "poziserver, no response cache" "$(our_rate "https://127.0.0.1:$copies_port/" "${pan[@]}")" "$last_gdal"
line "poziserver (default)" "$(our_rate "https://127.0.0.1:$port/" "${pan[@]}")" "$last_gdal"

# Wandering: the same boxes anywhere over the whole layer (about 32 x 32 boxes).
read -r wander_x wander_y < <(python3 -c 'import sys; x, y, w, h = map(float, sys.argv[1:5]); print(x - 14.5 * w, y - 14.5 * h)' "$pan_x" "$pan_y" "$pan_w" "$pan_h")
wander=(-- points.gpkg "$wander_x" "$wander_y" "$pan_w" "$pan_h" 32)
echo "wandering: random boxes of the same size anywhere over the layer"
line "poziserver, no caches" "$(our_rate "https://127.0.0.1:$rows_port/" "${wander[@]}")" "$last_gdal"
line "poziserver, no response cache" "$(our_rate "https://127.0.0.1:$copies_port/" "${wander[@]}")" "$last_gdal"

# A fresh box on a spatially ordered file: the GeoJSON above, converted by this server (in
# spatial order), with no caches; GDAL reads the GeoPackage it wrote, as in the lines above.
ordered="ogr2ogr?source=points.geojson&options=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "-spat|${box// /|}")"
started=$(date +%s.%N)
curl -skf "https://127.0.0.1:$rows_port/$ordered" > "$work/ours.json"
# shellcheck disable=SC2086
ogr2ogr -f GeoJSON /vsistdout/ "$data/points.gpkg" -spat $box > "$work/gdal.json"
ordered_features=$(python3 - "$work/ours.json" "$work/gdal.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["features"] for p in sys.argv[1:3])
key = lambda f: json.dumps(f["properties"], sort_keys=True)
assert sorted(map(key, a)) == sorted(map(key, b)), "features differ"
print(len(a))
PY
)
printf 'spatially ordered: the points dropped in as GeoJSON, converted once by this server (%.0f s, first request)
' \
    "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')"
line "no caches, fixed box ($ordered_features)" "$(our_rate "https://127.0.0.1:$rows_port/$ordered")" "$last_gdal"
line "no caches, panned" "$(our_rate "https://127.0.0.1:$rows_port/" -- points.geojson "$pan_x" "$pan_y" "$pan_w" "$pan_h" 4)" "$last_gdal"
line "no caches, wandering" "$(our_rate "https://127.0.0.1:$rows_port/" -- points.geojson "$wander_x" "$wander_y" "$pan_w" "$pan_h" 32)" "$last_gdal"

# Compression: the whole countries layer as each encoding, its size on the wire and the rate
# with no caches (compressed for every answer) and as configured by default (kept as sent).
whole="ogr2ogr?source=naturalearth_lowres.gpkg&options="
echo "compression: the whole countries layer (177 features) by Accept-Encoding"
for encoding in identity gzip br; do
    size=$(curl -skf -H "Accept-Encoding: $encoding" "https://127.0.0.1:$rows_port/$whole" | wc -c)
    rate() { wrk -t2 -c16 -d"${seconds}s" -H "Accept-Encoding: $encoding" "https://127.0.0.1:$1/$whole" | awk '/^Requests\/sec/ {print $2}'; }
    printf '  %-8s %8d bytes   no caches %8.1f req/s   default %8.1f req/s\n' \
        "$encoding" "$size" "$(rate "$rows_port")" "$(rate "$port")"
done

memory() {
    for name in root root-copies root-rows; do
        printf '  %-12s VmRSS %6d MB   RssAnon %6d MB   VmHWM %6d MB\n' "$name" \
            "$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/${pid_of[$name]}/status")" \
            "$(awk '/^RssAnon/ {print int($2 / 1024)}' "/proc/${pid_of[$name]}/status")" \
            "$(awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/${pid_of[$name]}/status")"
    done
}
echo "memory of each instance after all of the above (resident now, anonymous now, peak resident):"
memory
sleep 30
echo "memory after 30 s idle:"
memory
