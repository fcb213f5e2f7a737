#!/usr/bin/env bash
# OGC API Features: items?bbox=…&limit=100 over a 1,000,000-point GeoPackage, this server against
# pygeoapi (PyPI, OGR provider through Debian's python3-gdal, gunicorn with 2 workers), both on
# plain HTTP (pygeoapi has no TLS of its own), same file, same wrk (2 threads, 32 connections).
# Prints each throughput and p99, and the ratio. Checks both return the same 100 features first.
# Usage: bench/features-vs-pygeoapi/run.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}

need=()
command -v ogr2ogr >/dev/null || need+=(gdal-bin)
command -v wrk >/dev/null || need+=(wrk)
dpkg-query -W -f='${Status}' python3-gdal 2>/dev/null | grep -q "ok installed" || need+=(python3-gdal python3-venv)
# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing "${need[@]}"
venv=${PYGEOAPI_VENV:-target/pygeoapi-venv}
if [ ! -x "$venv/bin/pygeoapi" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q pygeoapi gunicorn
fi
cargo build --release -q --bin poziserver

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

data="$work/root/userdata/local"
mkdir -p "$data"
if [ -n "${POINTS_GPKG:-}" ]; then
    cp "$POINTS_GPKG" "$data/points.gpkg"
else
    echo "generating 1,000,000 points..."
    python3 scripts/gen_points.py 1000000 --out "$work/points.geojson"
    ogr2ogr -f GPKG "$data/points.gpkg" "$work/points.geojson" -nln points
    rm "$work/points.geojson"
fi
read -r bbox < <(python3 - "$data/points.gpkg" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
minx, maxx, miny, maxy = c.execute("SELECT min(minx), max(maxx), min(miny), max(maxy) FROM rtree_points_geom").fetchone()
# A box holding about 2,000 points: more than one page of 100.
f = (2000 / 1_000_000) ** 0.5 / 2
cx, cy, w, h = (minx + maxx) / 2, (miny + maxy) / 2, (maxx - minx) * f, (maxy - miny) * f
print(f"{cx - w},{cy - h},{cx + w},{cy + h}")
PY
)

pozi_port=$(free_port); py_port=$(free_port)
cat > "$work/root/config.json" <<JSON
{"listen": ["127.0.0.1:$pozi_port"], "log": {"level": "warn", "console": false},
 "http": {"plain_http": true, "access_log": {"mode": "off"}}}
JSON
target/release/poziserver run --root "$work/root" >/dev/null 2>&1 &
pids+=("$!")

cat > "$work/pygeoapi.yml" <<YAML
server:
  bind: {host: 127.0.0.1, port: $py_port}
  url: http://127.0.0.1:$py_port
  mimetype: application/json; charset=UTF-8
  encoding: utf-8
  languages: [en-US]
  limits: {default_items: 100, max_items: 10000}
  map: {url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png", attribution: "OSM"}
logging: {level: ERROR}
metadata:
  identification: {title: bench, description: bench, keywords: [bench], keywords_type: theme, terms_of_service: none, url: "http://127.0.0.1"}
  license: {name: none, url: "http://127.0.0.1"}
  provider: {name: bench, url: "http://127.0.0.1"}
  contact: {name: bench, url: "http://127.0.0.1", email: "bench@example.org"}
resources:
  points:
    type: collection
    title: points
    description: points
    keywords: [points]
    extents: {spatial: {bbox: [-180, -90, 180, 90], crs: "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}}
    providers:
      - type: feature
        name: OGR
        data: {source_type: GPKG, source: $data/points.gpkg, source_capabilities: {paging: true}}
        id_field: fid
        layer: points
YAML
export PYGEOAPI_CONFIG="$work/pygeoapi.yml" PYGEOAPI_OPENAPI="$work/openapi.yml"
"$venv/bin/pygeoapi" openapi generate "$PYGEOAPI_CONFIG" --output-file "$PYGEOAPI_OPENAPI" >/dev/null 2>&1
(cd "$work" && exec "$venv/bin/gunicorn" -w 2 -b "127.0.0.1:$py_port" --log-level error pygeoapi.flask_app:APP) &
pids+=("$!")
for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$pozi_port/health" >/dev/null && curl -sf "http://127.0.0.1:$py_port/collections" >/dev/null && break
    sleep 0.2
done

ours="http://127.0.0.1:$pozi_port/features/collections/points/items?bbox=$bbox&limit=100"
theirs="http://127.0.0.1:$py_port/collections/points/items?bbox=$bbox&limit=100&f=json"
curl -sf "$ours" > "$work/ours.json"
curl -sf "$theirs" > "$work/theirs.json"
python3 - "$work/ours.json" "$work/theirs.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ids = lambda d: sorted(str(f["id"]) for f in d["features"])
assert len(a["features"]) == len(b["features"]) == 100, (len(a["features"]), len(b["features"]))
print(f"both return 100 features; the same ids: {ids(a) == ids(b)}; numberMatched {a.get('numberMatched')} vs {b.get('numberMatched')}")
PY

measure() { # url -> "req/s p99_ms"
    wrk -t2 -c32 -d2s "$1" >/dev/null
    wrk -t2 -c32 -d"${seconds}s" --latency "$1" > "$work/wrk.out"
    local rps p99
    rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' "$work/wrk.out")
    echo "$rps $p99"
}
read -r py_rps py_p99 < <(measure "$theirs")
read -r pozi_rps pozi_p99 < <(measure "$ours")
printf '%-12s %10s %10s\n' server "req/s" "p99 (ms)"
printf '%-12s %10.1f %10.2f\n' pygeoapi "$py_rps" "$py_p99"
printf '%-12s %10.1f %10.2f\n' poziserver "$pozi_rps" "$pozi_p99"
awk -v a="$pozi_rps" -v b="$py_rps" 'BEGIN { printf "ratio (poziserver / pygeoapi): %.1fx\n", a / b }'
