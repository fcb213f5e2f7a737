"""Writes tests/data/qgis_written.gpkg with QGIS itself (PyQGIS, Debian's python3-qgis), so the
tests read a GeoPackage as QGIS writes one: its writer's table and column choices, a second
layer added to the same file, and a style saved into the file (QGIS's `layer_styles` table).

    apt-get install -y python3-qgis
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/data/qgis_fixture.py tests/data tests/data

Layers:
  countries  the Oceania countries of Natural Earth (MultiPolygon, EPSG:4326), as QGIS's
             vector file writer copies them from the Natural Earth GeoPackage in tests/data
  assets     five points made in QGIS in GDA2020 / MGA zone 55 (EPSG:7855) with integer, real,
             text, date and boolean fields, one with a null geometry
"""
import os
import sys

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsFeature,
    QgsFeatureRequest,
    QgsField,
    QgsGeometry,
    QgsPointXY,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QDate, QVariant

data, out = sys.argv[1], sys.argv[2]
target = os.path.join(out, "qgis_written.gpkg")
if os.path.exists(target):
    os.remove(target)

QgsApplication.setPrefixPath("/usr", True)
app = QgsApplication([], False)
app.initQgis()
context = QgsCoordinateTransformContext()

source = QgsVectorLayer(
    os.path.join(data, "naturalearth_lowres.gpkg") + "|layername=naturalearth_lowres",
    "source",
    "ogr",
)
assert source.isValid(), "cannot open naturalearth_lowres.gpkg"
oceania = QgsVectorLayer(f"MultiPolygon?crs=EPSG:4326", "countries", "memory")
oceania.dataProvider().addAttributes(source.fields().toList())
oceania.updateFields()
oceania.dataProvider().addFeatures(
    list(source.getFeatures(QgsFeatureRequest().setFilterExpression("continent = 'Oceania'")))
)
options = QgsVectorFileWriter.SaveVectorOptions()
options.driverName = "GPKG"
options.layerName = "countries"
error = QgsVectorFileWriter.writeAsVectorFormatV3(oceania, target, context, options)
assert error[0] == QgsVectorFileWriter.NoError, error

assets = QgsVectorLayer("Point?crs=EPSG:7855", "assets", "memory")
assets.dataProvider().addAttributes(
    [
        QgsField("asset_id", QVariant.Int),
        QgsField("kind", QVariant.String),
        QgsField("value", QVariant.Double),
        QgsField("installed", QVariant.Date),
        QgsField("active", QVariant.Bool),
    ]
)
assets.updateFields()
rows = [
    (1, "bin", 120.5, QDate(2019, 3, 1), True, (320000.0, 5812000.0)),
    (2, "light", 880.0, QDate(2020, 7, 15), False, (321500.5, 5813250.25)),
    (3, "tree", 0.0, QDate(1998, 11, 30), True, (319750.0, 5811500.0)),
    (4, "bench", 455.25, None, None, (322000.0, 5814000.0)),
    (5, "sign", None, QDate(2021, 1, 1), True, None),
]
features = []
for asset_id, kind, value, installed, active, xy in rows:
    feature = QgsFeature(assets.fields())
    feature.setAttributes([asset_id, kind, value, installed, active])
    if xy:
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(*xy)))
    features.append(feature)
assets.dataProvider().addFeatures(features)
options = QgsVectorFileWriter.SaveVectorOptions()
options.driverName = "GPKG"
options.layerName = "assets"
options.actionOnExistingFile = QgsVectorFileWriter.CreateOrOverwriteLayer
error = QgsVectorFileWriter.writeAsVectorFormatV3(assets, target, context, options)
assert error[0] == QgsVectorFileWriter.NoError, error

# A style saved into the GeoPackage, as QGIS's "Save to Datasource Database" does.
written = QgsVectorLayer(target + "|layername=assets", "assets", "ogr")
assert written.isValid()
message = written.saveStyleToDatabase("assets style", "written by QGIS", True, "")
print("style:", message or "saved")
print("wrote", target)
app.exitQgis()
