#!/usr/bin/env bash
# An `arcgis` sync job against ogr2ogr reading the same layer with paging, from a loopback
# stand-in for an ArcGIS REST FeatureServer (server.py): 100,000 generated points in pages of
# 2,000, each page delayed 20 ms. Both write a GeoPackage; the script checks both hold every
# feature, then prints each side's wall time (median of ROUNDS) and the ratio.
# The job runs as `poziserver sync run` with its defaults (4 pages at a time, GeoJSON where the
# server offers it); ogr2ogr reads `…/query?…&f=json&resultRecordCount=2000` and pages itself.
# Usage: bench/arcgis-paging/run.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
need=()
command -v ogr2ogr >/dev/null || need+=(gdal-bin)
# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing "${need[@]}"
cargo build --release -q --bin poziserver
bin=$PWD/target/release/poziserver

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
python3 scripts/gen_points.py 100000 --out "$work/points.geojson"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
python3 bench/arcgis-paging/server.py "$work/points.geojson" "$port" --page 2000 --delay-ms 20 &
server=$!
layer="http://127.0.0.1:$port/arcgis/rest/services/points/FeatureServer/0"
for _ in $(seq 100); do curl -sf "$layer?f=json" >/dev/null 2>&1 && break; sleep 0.2; done

root="$work/root"
mkdir -p "$root/userdata/local"
cat > "$root/config.json" <<JSON
{"sync": {"jobs": [{"name": "points", "source": {"type": "arcgis", "url": "$layer"},
                    "target": {"dataset": "local/points.gpkg"}}]}}
JSON
count() { python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute("select count(*) from "+sys.argv[2]).fetchone()[0])' "$@"; }
ours=(); gdal=()
for r in $(seq "$rounds"); do
    start=$(date +%s.%N)
    "$bin" sync run points --root "$root" >/dev/null
    ours+=("$(python3 -c "import time; print(time.time() - $start)")")
    rm -f "$work/ogr.gpkg"
    start=$(date +%s.%N)
    ogr2ogr -f GPKG "$work/ogr.gpkg" "$layer/query?where=1%3D1&outFields=*&outSR=4326&f=json&resultRecordCount=2000" -nln points
    gdal+=("$(python3 -c "import time; print(time.time() - $start)")")
    echo "round $r: arcgis job ${ours[-1]:0:5} s, ogr2ogr ${gdal[-1]:0:5} s"
done
n_ours=$(count "$root/userdata/local/points.gpkg" points); n_gdal=$(count "$work/ogr.gpkg" points)
[ "$n_ours" = 100000 ] && [ "$n_gdal" = 100000 ] || { echo "feature counts: ours $n_ours, GDAL $n_gdal (want 100000)"; exit 1; }
echo "both wrote 100000 features"
python3 -c "
import statistics
o, g = statistics.median([$(IFS=,; echo "${ours[*]}")]), statistics.median([$(IFS=,; echo "${gdal[*]}")])
print(f'median: arcgis job {o:.2f} s, ogr2ogr {g:.2f} s: {g / o:.2f}x faster (floor 3x)')"
