"""A desktop-GIS-like client for the QGIS Server tests: OWSLib (Debian's python3-owslib) reads
the WMS and WFS capabilities at the URL it is given, then follows the operation URLs they
advertise, as QGIS Desktop and most clients do.

    /usr/bin/python3 tests/data/owslib_client.py https://127.0.0.1:8443/iis/wms ca.pem

Prints one JSON object: the layers, the advertised operation URLs, the map's format and how
many of its pixels are painted, and the number of features of each layer (python3-pil reads
the map).
"""
import io
import json
import re
import sys

from PIL import Image

from owslib.util import Authentication
from owslib.wfs import WebFeatureService
from owslib.wms import WebMapService

url, ca = sys.argv[1], sys.argv[2]
auth = Authentication(verify=ca)

wms = WebMapService(url, version="1.3.0", auth=auth, timeout=60)
getmap = wms.getOperationByName("GetMap")
image = wms.getmap(
    layers=["countries", "assets"],
    srs="EPSG:4326",
    bbox=(110.0, -50.0, 180.0, 0.0),  # x, y order: OWSLib swaps the axes for WMS 1.3.0
    size=(256, 256),
    format="image/png",
    transparent=True,
)
png = image.read()
painted = sum(1 for _, _, _, a in Image.open(io.BytesIO(png)).convert("RGBA").getdata() if a > 0)

wfs = WebFeatureService(url, version="1.1.0", auth=auth, timeout=60)
getfeature = wfs.getOperationByName("GetFeature")
counts = {}
for name in ("countries", "assets"):
    gml = wfs.getfeature(typename=[name]).read()
    if isinstance(gml, bytes):
        gml = gml.decode("utf-8")
    counts[name] = len(re.findall(r"<gml:featureMember>", gml))

print(
    json.dumps(
        {
            "wms_layers": sorted(wms.contents),
            "getmap_urls": [m["url"] for m in getmap.methods],
            "png_bytes": len(png),
            "png": png[:8] == b"\x89PNG\r\n\x1a\n",
            "painted_pixels": painted,
            "wfs_layers": sorted(wfs.contents),
            "getfeature_urls": [m["url"] for m in getfeature.methods],
            "features": counts,
        }
    )
)
