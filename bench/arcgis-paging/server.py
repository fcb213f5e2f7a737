#!/usr/bin/env python3
"""A loopback stand-in for an ArcGIS REST FeatureServer layer: the points of a GeoJSON file as
layer 0, with its metadata (maxRecordCount, pagination, JSON and GeoJSON), counts, object ids,
and pages (resultOffset/resultRecordCount or objectIds) in Esri JSON or GeoJSON, each query
delayed as a real server would be. Pages are rendered once at start, so the server's own speed
does not limit either client.

usage: server.py GEOJSON PORT [--page 2000] [--delay-ms 20]
"""
import argparse, json, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("geojson"); p.add_argument("port", type=int)
p.add_argument("--page", type=int, default=2000); p.add_argument("--delay-ms", type=int, default=20)
a = p.parse_args()

features = json.load(open(a.geojson))["features"]
for i, f in enumerate(features):
    f["properties"]["OBJECTID"] = i + 1
fields = [{"name": "OBJECTID", "type": "esriFieldTypeOID", "alias": "OBJECTID"}] + [
    {"name": k, "type": "esriFieldTypeDouble" if isinstance(v, float) else
     "esriFieldTypeInteger" if isinstance(v, int) else "esriFieldTypeString", "alias": k}
    for k, v in features[0]["properties"].items() if k != "OBJECTID"]
meta = json.dumps({"currentVersion": 10.91, "id": 0, "name": "points", "type": "Feature Layer",
    "geometryType": "esriGeometryPoint", "objectIdField": "OBJECTID", "maxRecordCount": a.page,
    "supportedQueryFormats": "JSON, geoJSON, PBF",
    "advancedQueryCapabilities": {"supportsPagination": True},
    "extent": {"xmin": 141, "ymin": -39.1, "xmax": 149.9, "ymax": -34, "spatialReference": {"wkid": 4326}},
    "fields": fields}).encode()

def esri(f):
    x, y = f["geometry"]["coordinates"]
    return {"attributes": f["properties"], "geometry": {"x": x, "y": y}}

cache = {}
lock = threading.Lock()
def page(offset, count, fmt):
    key = (offset, count, fmt)
    with lock:
        if key in cache:
            return cache[key]
    chosen = features[offset:offset + count]
    more = offset + len(chosen) < len(features)
    if fmt == "geojson":
        body = {"type": "FeatureCollection", "features": chosen, "properties": {"exceededTransferLimit": more}}
    else:
        body = {"objectIdFieldName": "OBJECTID", "geometryType": "esriGeometryPoint",
                "spatialReference": {"wkid": 4326}, "fields": fields,
                "features": [esri(f) for f in chosen], "exceededTransferLimit": more}
    data = json.dumps(body).encode()
    with lock:
        cache[key] = data
    return data

for offset in range(0, len(features), a.page):
    page(offset, a.page, "json"); page(offset, a.page, "geojson")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def answer(self, data):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.do_GET(urllib.parse.parse_qs(self.rfile.read(n).decode()))
    def do_GET(self, form=None):
        url = urllib.parse.urlparse(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        q.update({k: v[-1] for k, v in (form or {}).items()})
        if url.path.endswith("/FeatureServer/0"):
            return self.answer(meta)
        if not url.path.endswith("/FeatureServer/0/query"):
            self.send_error(404); return
        if q.get("returnCountOnly") == "true":
            return self.answer(json.dumps({"count": len(features)}).encode())
        if q.get("returnIdsOnly") == "true":
            return self.answer(json.dumps({"objectIdFieldName": "OBJECTID", "objectIds": list(range(1, len(features) + 1))}).encode())
        time.sleep(a.delay_ms / 1000)
        offset = int(q.get("resultOffset", 0))
        count = min(int(q.get("resultRecordCount", a.page)), a.page)
        self.answer(page(offset, count, "geojson" if q.get("f") == "geojson" else "json"))

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()
