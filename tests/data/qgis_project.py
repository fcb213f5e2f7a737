"""Writes tests/data/qgis_project.qgs with QGIS itself (PyQGIS, Debian's python3-qgis): the
project the QGIS Server tests serve behind the server's reverse proxy.

    apt-get install -y python3-qgis
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/data/qgis_project.py tests/data

Two layers of qgis_written.gpkg (read through a relative path, so the project works wherever the
folder is copied), both published over WMS and WFS:
  countries  the Oceania countries (MultiPolygon, EPSG:4326)
  assets     five points in GDA2020 / MGA zone 55 (EPSG:7855), one with a null geometry
The project names no service URL of its own: QGIS Server then builds the URLs it advertises
from the request, or from the X-Qgis-*-Service-Url headers a proxy sends.
"""
import os
import sys

from qgis.core import QgsApplication, QgsCoordinateReferenceSystem, QgsProject, QgsVectorLayer

out = os.path.abspath(sys.argv[1])
target = os.path.join(out, "qgis_project.qgs")

QgsApplication.setPrefixPath("/usr", True)
app = QgsApplication([], False)
app.initQgis()

project = QgsProject.instance()
project.setFileName(target)
project.setTitle("Pozi Server proxy test")
project.setCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
project.writeEntryBool("Paths", "/Absolute", False)

ids = []
for name in ("countries", "assets"):
    layer = QgsVectorLayer(
        os.path.join(out, "qgis_written.gpkg") + f"|layername={name}", name, "ogr"
    )
    assert layer.isValid(), f"cannot open layer {name} of qgis_written.gpkg"
    project.addMapLayer(layer)
    ids.append(layer.id())

project.writeEntry("WMSServiceCapabilities", "/", True)
project.writeEntry("WMSServiceTitle", "/", "Pozi Server proxy test")
project.writeEntry("WMSCrsList", "/", ["EPSG:4326", "EPSG:3857", "EPSG:7855"])
project.writeEntry("WFSLayers", "/", ids)
for layer_id in ids:
    project.writeEntry("WFSLayersPrecision", "/" + layer_id, 8)
assert project.write(), "cannot write the project"
print("wrote", target)
app.exitQgis()
