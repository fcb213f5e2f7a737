//! Where features come from: readers of the formats converted to GeoPackages (GeoJSON,
//! NDJSON, CSV, Shapefile, zipped or not), the dBASE and `.prj` files beside a shapefile, and
//! the GeoPackage writer conversions go through.

pub mod conversions;
pub mod dbf;
pub mod geojson_rows;
pub mod gpkg_write;
pub mod json_split;
pub mod prj;
pub mod readers;
pub mod rtree_pack;
pub mod sorted_runs;
