#!/usr/bin/env bash
# A `file` sync job against `ogr2ogr -f GPKG` on the same GeoJSON of generated points
# (scripts/gen_points.py: 1,000,000 points, about 219 MB): both write a GeoPackage with its
# R*Tree. Each side runs ROUNDS times, alternating; the script checks both files hold the same
# number of features, then prints each side's wall time and peak memory (RSS, from
# /usr/bin/time), and the ratios. The job runs as `poziserver sync run` (in its own process, as
# it does when the server is not running), with the default config.
# With --kill N it then kills N runs with SIGKILL at random moments and checks each time that
# the published file passes integrity_check and holds one complete version.
# Usage: bench/ingest-vs-ogr2ogr/run.sh [POINTS] [ROUNDS] [--kill N]   (defaults 1000000 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
points=1000000; rounds=3; kills=0
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        --kill) kills=$2; shift 2 ;;
        *) positional+=("$1"); shift ;;
    esac
done
[ ${#positional[@]} -ge 1 ] && points=${positional[0]}
[ ${#positional[@]} -ge 2 ] && rounds=${positional[1]}

need=()
command -v ogr2ogr >/dev/null || need+=(gdal-bin)
[ -x /usr/bin/time ] || need+=(time)
# shellcheck source=bench/lib.sh
source bench/lib.sh
install_missing "${need[@]}"
cargo build --release -q --bin poziserver
bin=$PWD/target/release/poziserver

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/data" "$root/userdata/local"
echo "generating $points points..."
python3 scripts/gen_points.py "$points" --out "$root/data/points.geojson"
ls -l "$root/data/points.geojson" | awk '{printf "source: %.0f MB of GeoJSON\n", $5 / 1e6}'
cat > "$root/config.json" <<JSON
{"sync": {"jobs": [{"name": "points", "source": {"type": "file", "path": "data/points.geojson"},
                    "target": {"dataset": "local/points.gpkg"}}]}}
JSON

count() { python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute("select count(*) from "+sys.argv[2]).fetchone()[0])' "$@"; }
measure() { # label command...: prints "seconds kb"
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { echo "$label failed:"; cat "$work/err"; exit 1; }
    cat "$work/time"
}
ours_s=(); ours_kb=(); gdal_s=(); gdal_kb=()
for r in $(seq "$rounds"); do
    read -r s kb < <(measure ours "$bin" sync run points --root "$root")
    ours_s+=("$s"); ours_kb+=("$kb")
    rm -f "$work/ogr.gpkg"
    read -r s kb < <(measure gdal ogr2ogr -f GPKG "$work/ogr.gpkg" "$root/data/points.geojson" -nln points)
    gdal_s+=("$s"); gdal_kb+=("$kb")
    echo "round $r: sync job ${ours_s[-1]} s, ${ours_kb[-1]} KB peak; ogr2ogr ${gdal_s[-1]} s, ${gdal_kb[-1]} KB peak"
done
n_ours=$(count "$root/userdata/local/points.gpkg" points)
n_gdal=$(count "$work/ogr.gpkg" points)
[ "$n_ours" = "$n_gdal" ] || { echo "feature counts differ: $n_ours (ours) vs $n_gdal (GDAL)"; exit 1; }
echo "both wrote $n_ours features"
python3 - "${ours_s[*]}" "${gdal_s[*]}" "${ours_kb[*]}" "${gdal_kb[*]}" <<'PY'
import statistics, sys
ours, gdal, ours_kb, gdal_kb = ([float(x) for x in a.split()] for a in sys.argv[1:5])
mo, mg = statistics.median(ours), statistics.median(gdal)
print(f"median: sync job {mo:.2f} s, ogr2ogr {mg:.2f} s: {mg / mo:.2f}x faster (floor 8x)")
print(f"peak RSS: sync job {max(ours_kb) / 1024:.0f} MB, ogr2ogr {max(gdal_kb) / 1024:.0f} MB "
      f"({max(ours_kb) / max(gdal_kb):.2f} of ogr2ogr's)")
PY

if [ "$kills" -gt 0 ]; then
    full=$(python3 -c "import statistics; print(statistics.median([$(IFS=,; echo "${ours_s[*]}")]))")
    cp "$root/data/points.geojson" "$work/a.geojson"
    python3 scripts/gen_points.py "$((points * 9 / 10))" --seed 7 --out "$work/b.geojson"
    for i in $(seq "$kills"); do
        if [ $((i % 2)) -eq 0 ]; then cp "$work/a.geojson" "$root/data/points.geojson"; else cp "$work/b.geojson" "$root/data/points.geojson"; fi
        delay=$(python3 -c "import random; print(random.uniform(0, $full * 1.05))")
        "$bin" sync run points --root "$root" >/dev/null 2>&1 &
        pid=$!
        sleep "$delay"
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        python3 - "$root/userdata/local/points.gpkg" "$points" "$((points * 9 / 10))" "$i" "$delay" <<'PY'
import sqlite3, sys
path, a, b, i, delay = sys.argv[1:6]
c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
ok = c.execute("pragma integrity_check").fetchone()[0]
n = c.execute("select count(*) from points").fetchone()[0]
r = c.execute("select count(*) from rtree_points_geom").fetchone()[0]
assert ok == "ok" and n == r and str(n) in (a, b), (ok, n, r)
print(f"kill {i} after {float(delay):.1f} s: intact, {n} features")
PY
    done
fi
