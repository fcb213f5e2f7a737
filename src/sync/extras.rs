//! What a job may publish besides its GeoPackage: the layer as a GeoJSON file beside it, with
//! gzip and brotli siblings that the static server sends to clients that accept them.

use std::io::Write;
use std::path::{Path, PathBuf};

use geozero::ToJson;
use rusqlite::types::ValueRef;

use crate::sync::{JobPaths, SyncError};

/// Writes `<stem>.geojson`, `.geojson.gz` and `.geojson.br` beside the target from the
/// published layer; each appears by a rename, whole.
///
/// # Errors
/// [`SyncError::Publish`] when a file cannot be written.
pub fn write_geojson(paths: &JobPaths, layer: &str) -> Result<(), SyncError> {
    let fail = |path: &Path, e: &dyn std::fmt::Display| {
        SyncError::Publish(format!("{}: {e}", path.display()))
    };
    let geojson = paths.target.with_extension("geojson");
    let work = |suffix: &str| -> PathBuf { paths.beside(&format!("geojson{suffix}")) };
    let plain = work("");
    write_collection(&paths.target, layer, &plain).map_err(|e| fail(&plain, &e))?;
    let gz = work(".gz");
    let br = work(".br");
    compress(&plain, &gz, false).map_err(|e| fail(&gz, &e))?;
    compress(&plain, &br, true).map_err(|e| fail(&br, &e))?;
    for (from, suffix) in [(&gz, ".gz"), (&br, ".br"), (&plain, "")] {
        let mut to = geojson.clone().into_os_string();
        to.push(suffix);
        std::fs::rename(from, &to).map_err(|e| fail(Path::new(&to), &e))?;
    }
    Ok(())
}

fn write_collection(gpkg: &Path, layer: &str, out: &Path) -> Result<(), String> {
    let c = rusqlite::Connection::open_with_flags(gpkg, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let mut statement = c
        .prepare(&format!(
            "SELECT * FROM {} ORDER BY fid",
            crate::gis::quote(layer)
        ))
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = statement
        .column_names()
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(|e| e.to_string())?);
    let name = serde_json::to_string(layer).map_err(|e| e.to_string())?;
    write!(
        file,
        "{{\"type\":\"FeatureCollection\",\"name\":{name},\"features\":["
    )
    .map_err(|e| e.to_string())?;
    let mut rows = statement.query([]).map_err(|e| e.to_string())?;
    let mut first = true;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let mut properties = serde_json::Map::new();
        let mut geometry = "null".to_owned();
        let mut id = serde_json::Value::Null;
        for (i, column) in names.iter().enumerate() {
            let value = row.get_ref(i).map_err(|e| e.to_string())?;
            if column == "geom" {
                if let ValueRef::Blob(blob) = value
                    && crate::gis::wkb::check_gpkg(blob).is_ok()
                {
                    geometry = geozero::wkb::GpkgWkb(&crate::gis::wkb::decodable(blob))
                        .to_json()
                        .map_err(|e| e.to_string())?;
                }
                continue;
            }
            let json = match value {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(n) => n.into(),
                ValueRef::Real(f) => {
                    serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
                }
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    String::from_utf8_lossy(t).into_owned().into()
                }
            };
            if column == "fid" {
                id = json;
            } else {
                properties.insert(column.clone(), json);
            }
        }
        let properties = serde_json::Value::Object(properties);
        write!(
            file,
            "{}\n{{\"type\":\"Feature\",\"id\":{id},\"properties\":{properties},\"geometry\":{geometry}}}",
            if first { "" } else { "," }
        )
        .map_err(|e| e.to_string())?;
        first = false;
    }
    write!(file, "\n]}}\n").map_err(|e| e.to_string())?;
    file.flush().map_err(|e| e.to_string())
}

fn compress(from: &Path, to: &Path, brotli: bool) -> std::io::Result<()> {
    let mut input = std::io::BufReader::new(std::fs::File::open(from)?);
    let output = std::fs::File::create(to)?;
    if brotli {
        let mut writer = brotli::CompressorWriter::new(output, 64 * 1024, 9, 22);
        std::io::copy(&mut input, &mut writer)?;
        writer.flush()?;
    } else {
        let mut writer = flate2::write::GzEncoder::new(output, flate2::Compression::new(6));
        std::io::copy(&mut input, &mut writer)?;
        writer.finish()?;
    }
    Ok(())
}
