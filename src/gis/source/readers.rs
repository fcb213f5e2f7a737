//! Streaming readers of GeoJSON (FeatureCollection and newline-delimited) and CSV (longitude and
//! latitude columns by name, or a WKT column) that write a GeoPackage layer. Files are read
//! feature by feature, never whole in memory: GeoJSON once (its fields are found as they come),
//! CSV twice (once for the column types, once for the rows).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use geozero::ToGeo;
use rusqlite::types::Value;

use crate::gis::source::geojson_rows::read_feature;
use crate::gis::source::gpkg_write::{Cells, Field, FieldType, LayerWriter, WriteError};

/// A file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The content is not what its extension says.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// The GeoPackage could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// An open option (`-oo`) with an unknown key or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

/// GDAL-style open options (`-oo KEY=VALUE`) for CSV and Shapefile sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// `SEPARATOR`: COMMA, SEMICOLON, TAB, SPACE or PIPE (default: guessed from the header).
    pub separator: Option<u8>,
    /// `X_POSSIBLE_NAMES`: longitude column names, comma-separated.
    pub x_names: Option<Vec<String>>,
    /// `Y_POSSIBLE_NAMES`: latitude column names.
    pub y_names: Option<Vec<String>>,
    /// `GEOM_POSSIBLE_NAMES`: WKT column names.
    pub geom_names: Option<Vec<String>>,
    /// `ENCODING`: the text encoding (`UTF-8`, `ISO-8859-1`, `CP1252`…), overriding a `.cpg`.
    pub encoding: Option<&'static encoding_rs::Encoding>,
}

impl OpenOptions {
    /// Reads `KEY=VALUE` pairs.
    ///
    /// # Errors
    /// A message naming an unknown key or value.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, OptionError> {
        Self::read(pairs).map_err(OptionError)
    }

    fn read(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut options = Self::default();
        let list = |v: &str| {
            Some(
                v.split(',')
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect(),
            )
        };
        for (key, value) in pairs {
            match key.to_ascii_uppercase().as_str() {
                "SEPARATOR" => {
                    options.separator = Some(match value.to_ascii_uppercase().as_str() {
                        "COMMA" => b',',
                        "SEMICOLON" => b';',
                        "TAB" => b'\t',
                        "SPACE" => b' ',
                        "PIPE" => b'|',
                        _ => {
                            return Err(format!(
                                "-oo SEPARATOR={value}: use COMMA, SEMICOLON, TAB, SPACE or PIPE"
                            ));
                        }
                    });
                }
                "X_POSSIBLE_NAMES" => options.x_names = list(value),
                "Y_POSSIBLE_NAMES" => options.y_names = list(value),
                "GEOM_POSSIBLE_NAMES" => options.geom_names = list(value),
                "ENCODING" => {
                    let label = match value.to_ascii_uppercase().as_str() {
                        "CP1252" => "windows-1252".to_owned(),
                        other => other.to_owned(),
                    };
                    options.encoding = Some(
                        encoding_rs::Encoding::for_label(label.as_bytes())
                            .ok_or_else(|| format!("-oo ENCODING={value}: unknown encoding"))?,
                    );
                }
                _ => {
                    return Err(format!(
                        "-oo {key}: supported are SEPARATOR, X_POSSIBLE_NAMES, Y_POSSIBLE_NAMES, GEOM_POSSIBLE_NAMES and ENCODING"
                    ));
                }
            }
        }
        Ok(options)
    }

    /// A short stable name for these options, for cache file names.
    #[must_use]
    pub fn key(&self) -> String {
        if *self == Self::default() {
            return "0".to_owned();
        }
        let text = format!(
            "{:?}{:?}{:?}{:?}{:?}",
            self.separator,
            self.x_names,
            self.y_names,
            self.geom_names,
            self.encoding.map(encoding_rs::Encoding::name)
        );
        format!("{:x}", crate::gis::stable_hash(&text))
    }
}

/// The formats read natively (besides GeoPackage and SQLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A GeoJSON FeatureCollection.
    GeoJson,
    /// Newline-delimited GeoJSON features.
    GeoJsonSeq,
    /// Comma, semicolon or tab separated values.
    Csv,
    /// An ESRI Shapefile (`.shp` with `.dbf`, `.prj`, `.cpg`).
    Shapefile,
    /// A zipped Shapefile (`.zip`, or `.shz` as GDAL names it).
    ZippedShapefile,
}

impl Format {
    /// The format for a file extension.
    #[must_use]
    pub fn of(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "geojson" | "json" => Some(Self::GeoJson),
            "geojsonl" | "geojsons" | "ndjson" | "jsonl" => Some(Self::GeoJsonSeq),
            "csv" | "tsv" => Some(Self::Csv),
            "shp" => Some(Self::Shapefile),
            "zip" | "shz" => Some(Self::ZippedShapefile),
            _ => None,
        }
    }
}

/// Converts `source` into a GeoPackage at `destination` with one layer named `layer`.
///
/// # Errors
/// When the source cannot be read or is malformed (with the feature or line), or the
/// GeoPackage cannot be written. Nothing is left at `destination` then.
pub fn convert(
    source: &Path,
    destination: &Path,
    layer: &str,
    options: &OpenOptions,
) -> Result<u64, ReadError> {
    convert_counting(source, destination, layer, options, &AtomicU64::new(0))
}

/// [`convert`], adding one to `rows` for every feature read (a progress bar's count).
///
/// # Errors
/// As [`convert`].
pub fn convert_counting(
    source: &Path,
    destination: &Path,
    layer: &str,
    options: &OpenOptions,
    rows: &AtomicU64,
) -> Result<u64, ReadError> {
    match Format::of(source) {
        Some(Format::GeoJson | Format::GeoJsonSeq) => {
            geojson_to_gpkg(source, destination, layer, rows)
        }
        Some(Format::Csv) => csv_to_gpkg(source, destination, layer, options, rows),
        Some(Format::Shapefile) => shapefile_to_gpkg(source, destination, layer, options, rows),
        Some(Format::ZippedShapefile) => {
            zipped_shapefile_to_gpkg(source, destination, layer, options, rows)
        }
        None => Err(ReadError::Format {
            path: source.display().to_string(),
            reason: "not a format read natively".to_owned(),
        }),
    }
}

impl ReadError {
    /// What went wrong, without the file's path (for answers to clients, which name the file
    /// as they asked for it).
    #[must_use]
    pub fn reason(&self) -> String {
        match self {
            Self::Io { reason, .. } | Self::Format { reason, .. } => reason.clone(),
            Self::Write(e) => e.reason.clone(),
        }
    }
}

fn open(path: &Path) -> Result<BufReader<File>, ReadError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(256 * 1024, f))
        .map_err(|e| ReadError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// The bytes of each feature, or why they could not be read.
type FeatureBytesIter = Box<dyn Iterator<Item = Result<Vec<u8>, String>> + Send>;

/// The bytes of every feature of a GeoJSON file (a FeatureCollection, or one feature per
/// line), one at a time, each with its place for errors.
fn feature_bytes(path: &Path) -> Result<FeatureBytesIter, ReadError> {
    let reader = open(path)?;
    Ok(match Format::of(path) {
        Some(Format::GeoJsonSeq) => Box::new(Lines {
            reader,
            line: 0,
            limit: crate::gis::source::json_split::MAX_FEATURE_BYTES,
            done: false,
        }),
        _ => Box::new(crate::gis::source::json_split::FeatureBytes::new(reader)),
    })
}

/// Features per batch handed from the reading thread to the parser.
const READ_AHEAD_FEATURES: usize = 1024;

/// Bytes after which a batch is handed over even if it holds fewer features.
const READ_AHEAD_BYTES: usize = 1024 * 1024;

/// Batches the reading thread may have waiting for the parser. What is held at once is this
/// many batches, plus the one being parsed and the one being read: a few megabytes, or three
/// features when single features are larger than a batch.
const READ_AHEAD_BATCHES: usize = 1;

/// Calls `each` with every feature of `features` in order, the features cut out of the file on
/// a thread of their own, so that reading and splitting the file runs beside parsing instead
/// of before it. An error from `each` ends the reading (the thread stops after the batch it is
/// reading); a panic of the reading thread reaches `each` as an error, never as the end of
/// the file.
fn read_ahead<E>(
    features: FeatureBytesIter,
    mut each: impl FnMut(Result<Vec<u8>, String>) -> Result<(), E>,
) -> Result<(), E> {
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Vec<_>>(READ_AHEAD_BATCHES);
        let reader = std::thread::Builder::new()
            .name("geojson-read".to_owned())
            .spawn_scoped(scope, move || {
                let mut features = features;
                loop {
                    let mut batch = Vec::with_capacity(READ_AHEAD_FEATURES);
                    let mut bytes = 0;
                    let mut last = true;
                    for feature in features.by_ref() {
                        let failed = feature.is_err();
                        bytes += feature.as_ref().map_or(0, Vec::len);
                        batch.push(feature);
                        if failed {
                            break;
                        }
                        if batch.len() == READ_AHEAD_FEATURES || bytes >= READ_AHEAD_BYTES {
                            last = false;
                            break;
                        }
                    }
                    // A parser that stopped drops its end of the channel: the send fails.
                    if batch.is_empty() || send.send(batch).is_err() || last {
                        return;
                    }
                }
            });
        let reader = match reader {
            Ok(reader) => reader,
            Err(e) => return each(Err(format!("cannot start a thread to read the file: {e}"))),
        };
        let parsed = receive.iter().flatten().try_for_each(&mut each);
        drop(receive);
        // Joined here, so that a panic is an error and not the scope's own panic.
        match (parsed, reader.join()) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(_)) => each(Err("the thread reading the file failed".to_owned())),
            (Ok(()), Ok(())) => Ok(()),
        }
    })
}

/// The lines of newline-delimited GeoJSON (blank ones empty, so that they can be counted), each
/// at most
/// [`MAX_FEATURE_BYTES`](crate::gis::source::json_split::MAX_FEATURE_BYTES) (a longer one is an
/// error, not read whole), RFC 8142 record separators removed.
struct Lines<R> {
    reader: R,
    line: usize,
    limit: usize,
    /// Set after an error: nothing more is read.
    done: bool,
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::Read;
        if self.done {
            return None;
        }
        let limit = self.limit;
        self.line += 1;
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(limit as u64 + 1)
            .read_until(b'\n', &mut line);
        match read {
            Err(e) => {
                self.done = true;
                return Some(Err(format!("line {}: {e}", self.line)));
            }
            Ok(0) => return None,
            Ok(_) if line.len() > limit && line.last() != Some(&b'\n') => {
                self.done = true;
                return Some(Err(format!(
                    "line {}: longer than {limit} bytes",
                    self.line
                )));
            }
            Ok(_) => {}
        }
        line.retain(|b| *b != 0x1e);
        if !line.iter().any(|b| !b.is_ascii_whitespace()) {
            line.clear();
        }
        Some(Ok(line))
    }
}

/// Where a feature is, for errors.
fn place(path: &Path, n: usize) -> String {
    if Format::of(path) == Some(Format::GeoJsonSeq) {
        format!("line {}", n + 1)
    } else {
        format!("feature {}", n + 1)
    }
}

fn geojson_to_gpkg(
    source: &Path,
    destination: &Path,
    layer: &str,
    rows: &AtomicU64,
) -> Result<u64, ReadError> {
    let shown = source.display().to_string();
    let bad = |reason: String| ReadError::Format {
        path: shown.clone(),
        reason,
    };
    // One pass: fields are added to the layer as they first appear, and widened as values of
    // other types come; the table is made from them when the rows are written.
    let mut writer = LayerWriter::create(destination, layer, 4326, &[])?;
    let mut cells = Cells::default();
    let mut n = 0;
    read_ahead(feature_bytes(source)?, |bytes| {
        let at = n;
        n += 1;
        let bytes = bytes.map_err(&bad)?;
        if bytes.is_empty() {
            // A blank line of newline-delimited GeoJSON, kept so that `n` counts lines.
            return Ok(());
        }
        let geometry = read_feature(&bytes, writer.fields_mut(), &mut cells)
            .map_err(|e| bad(format!("{}: {e}", place(source, at))))?;
        writer.add_cells(geometry.as_ref(), &cells)?;
        rows.fetch_add(1, Ordering::Relaxed);
        Ok::<(), ReadError>(())
    })?;
    Ok(writer.finish()?)
}

/// Column names taken as longitude and latitude, and as WKT geometry.
const X_NAMES: &[&str] = &["x", "lon", "long", "lng", "longitude"];
const Y_NAMES: &[&str] = &["y", "lat", "latitude"];
const WKT_NAMES: &[&str] = &["wkt", "geometry", "the_geom", "geom"];

/// UTF-8, or else Windows-1252's ASCII-compatible superset read as Latin-1.
fn text(bytes: &[u8], encoding: Option<&'static encoding_rs::Encoding>) -> String {
    match encoding {
        Some(encoding) => encoding.decode(bytes).0.into_owned(),
        None => String::from_utf8(bytes.to_vec())
            .unwrap_or_else(|_| bytes.iter().map(|b| char::from(*b)).collect()),
    }
}

fn csv_to_gpkg(
    source: &Path,
    destination: &Path,
    layer: &str,
    options: &OpenOptions,
    rows: &AtomicU64,
) -> Result<u64, ReadError> {
    let shown = source.display().to_string();
    let bad = |reason: String| ReadError::Format {
        path: shown.clone(),
        reason,
    };
    // The separator is whichever of , ; tab is most common in the header line, as GDAL guesses.
    let mut first = String::new();
    open(source)?
        .read_line(&mut first)
        .map_err(|e| bad(e.to_string()))?;
    let delimiter = options.separator.unwrap_or_else(|| {
        [b',', b';', b'\t']
            .into_iter()
            .max_by_key(|d| first.bytes().filter(|b| b == d).count())
            .unwrap_or(b',')
    });
    let encoding = options.encoding;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(open(source)?);
    let mut headers: Vec<String> = reader
        .byte_headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(|h| {
            text(h, encoding)
                .trim_start_matches('\u{feff}')
                .trim()
                .to_owned()
        })
        .collect();
    // As GDAL: a trailing separator adds no column; other blank names become field_N.
    while headers.last().is_some_and(String::is_empty) {
        headers.pop();
    }
    for (i, header) in headers.iter_mut().enumerate() {
        if header.is_empty() {
            *header = format!("field_{}", i + 1);
        }
    }
    let find = |chosen: &Option<Vec<String>>, defaults: &[&str]| {
        let names: Vec<&str> = chosen.as_ref().map_or_else(
            || defaults.to_vec(),
            |c| c.iter().map(String::as_str).collect(),
        );
        headers
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
    };
    let (x, y, wkt) = (
        find(&options.x_names, X_NAMES),
        find(&options.y_names, Y_NAMES),
        find(&options.geom_names, WKT_NAMES),
    );
    // As GDAL's CSV driver, every column is kept as text, except coordinate columns named
    // through `X_POSSIBLE_NAMES`/`Y_POSSIBLE_NAMES`, which GDAL then reads as numbers.
    let numeric = |i: usize| {
        (options.x_names.is_some() && Some(i) == x) || (options.y_names.is_some() && Some(i) == y)
    };
    let fields: Vec<Field> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != wkt)
        .map(|(i, h)| Field {
            name: h.clone(),
            kind: if numeric(i) {
                FieldType::Real
            } else {
                FieldType::Text
            },
        })
        .collect();
    let mut writer = LayerWriter::create(destination, layer, 4326, &fields)?;
    for (n, record) in reader.byte_records().enumerate() {
        let record = record.map_err(|e| bad(format!("line {}: {e}", n + 2)))?;
        let cell = |i: usize| record.get(i).map(|b| text(b, encoding)).unwrap_or_default();
        let values = (0..headers.len())
            .filter(|i| Some(*i) != wkt)
            .map(|i| {
                if numeric(i) {
                    cell(i)
                        .trim()
                        .parse::<f64>()
                        .map_or(Value::Null, Value::Real)
                } else {
                    Value::Text(cell(i))
                }
            })
            .collect();
        let geometry = match (wkt, x, y) {
            (Some(w), _, _) if !cell(w).trim().is_empty() => Some(
                crate::gis::wkb::check_wkt(&cell(w))
                    .map_err(|e| e.to_owned())
                    .and_then(|()| {
                        geozero::wkt::Wkt(cell(w).as_str())
                            .to_geo()
                            .map_err(|e| e.to_string())
                    })
                    .map_err(|e| bad(format!("line {}: bad WKT: {e}", n + 2)))?,
            ),
            (None, Some(x), Some(y)) => {
                match (cell(x).trim().parse::<f64>(), cell(y).trim().parse::<f64>()) {
                    (Ok(x), Ok(y)) => Some(geo::Geometry::Point(geo::Point::new(x, y))),
                    _ => None,
                }
            }
            _ => None,
        };
        writer.add(values, geometry.as_ref())?;
        rows.fetch_add(1, Ordering::Relaxed);
    }
    Ok(writer.finish()?)
}

fn shapefile_error(path: &Path, e: impl std::fmt::Display) -> ReadError {
    ReadError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The transformation to WGS 84 given by a shapefile's `.prj`, if it needs one.
fn shapefile_projection(
    shp: &Path,
) -> Result<Option<crate::gis::query::reproject::Reprojector>, ReadError> {
    let Ok(wkt) = std::fs::read_to_string(shp.with_extension("prj")) else {
        return Ok(None);
    };
    let definition = crate::gis::source::prj::to_proj(&wkt)
        .map_err(|e| shapefile_error(shp, format!(".prj: {e}")))?;
    let geographic_wgs84 =
        definition.starts_with("+proj=longlat") && definition.contains("+rf=298.257223563");
    if geographic_wgs84 {
        return Ok(None);
    }
    crate::gis::query::reproject::Reprojector::from_proj_string(&definition)
        .map(Some)
        .map_err(|e| shapefile_error(shp, e))
}

fn shapefile_to_gpkg(
    source: &Path,
    destination: &Path,
    layer: &str,
    options: &OpenOptions,
    rows: &AtomicU64,
) -> Result<u64, ReadError> {
    let projection = shapefile_projection(source)?;
    let mut table = crate::gis::source::dbf::Table::open(source, options.encoding)
        .map_err(|e| shapefile_error(source, e))?;
    let fields = table.fields.clone();
    let mut shapes =
        shapefile::ShapeReader::from_path(source).map_err(|e| shapefile_error(source, e))?;
    let mut writer = LayerWriter::create(destination, layer, 4326, &fields)?;
    for (n, shape) in shapes.iter_shapes().enumerate() {
        let record = n + 1;
        let shape = shape.map_err(|e| shapefile_error(source, format!("record {record}: {e}")))?;
        let values = match table
            .next_record()
            .map_err(|e| shapefile_error(source, format!("record {record}: {e}")))?
        {
            Some(Some(values)) => values,
            Some(None) => continue, // deleted
            None => vec![Value::Null; fields.len()],
        };
        let geometry = match shape {
            shapefile::Shape::NullShape => None,
            shape => Some(single_part(geo::Geometry::<f64>::try_from(shape).map_err(
                |e| shapefile_error(source, format!("record {record}: {e}")),
            )?)),
        };
        let geometry = match (geometry, &projection) {
            (Some(g), Some(p)) => Some(
                p.to_wgs84(&g)
                    .map_err(|e| shapefile_error(source, format!("record {record}: {e}")))?,
            ),
            (g, _) => g,
        };
        writer.add(values, geometry.as_ref())?;
        rows.fetch_add(1, Ordering::Relaxed);
    }
    Ok(writer.finish()?)
}

/// A shape of one part as that part, as GDAL's Shapefile driver reads it: a polygon with one
/// exterior ring (and its holes) is a Polygon, a polyline of one part a LineString.
fn single_part(geometry: geo::Geometry<f64>) -> geo::Geometry<f64> {
    match geometry {
        geo::Geometry::MultiPolygon(mut m) if m.0.len() == 1 => {
            geo::Geometry::Polygon(m.0.swap_remove(0))
        }
        geo::Geometry::MultiLineString(mut m) if m.0.len() == 1 => {
            geo::Geometry::LineString(m.0.swap_remove(0))
        }
        other => other,
    }
}

/// A temporary folder removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn zipped_shapefile_to_gpkg(
    source: &Path,
    destination: &Path,
    layer: &str,
    options: &OpenOptions,
    rows: &AtomicU64,
) -> Result<u64, ReadError> {
    let bad = |e: String| shapefile_error(source, e);
    let mut archive = zip::ZipArchive::new(File::open(source).map_err(|e| bad(e.to_string()))?)
        .map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    let shp = names
        .iter()
        .find(|n| n.to_ascii_lowercase().ends_with(".shp"))
        .ok_or_else(|| bad("the archive holds no .shp".to_owned()))?
        .clone();
    let stem = shp[..shp.len() - 4].to_owned();
    let scratch = Scratch(destination.with_extension(format!("unzip.{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| bad(e.to_string()))?;
    for extension in ["shp", "shx", "dbf", "prj", "cpg"] {
        let Some(name) = names.iter().find(|n| {
            n.len() == stem.len() + 4
                && n.starts_with(&stem)
                && n.get(stem.len() + 1..)
                    .is_some_and(|e| e.eq_ignore_ascii_case(extension))
        }) else {
            continue;
        };
        let mut entry = archive.by_name(name).map_err(|e| bad(e.to_string()))?;
        // Only the entry's contents are used, written under a fixed name: no path from the
        // archive reaches the file system.
        let mut out = File::create(scratch.0.join(format!("layer.{extension}")))
            .map_err(|e| bad(e.to_string()))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| bad(e.to_string()))?;
    }
    shapefile_to_gpkg(
        &scratch.0.join("layer.shp"),
        destination,
        layer,
        options,
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Converts `text`, written as a file named `name`, into a GeoPackage layer named after
    /// it: the folder (removed when dropped), the GeoPackage's path and what the conversion
    /// gave.
    fn convert_text(
        name: &str,
        text: &str,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Result<u64, ReadError>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join(name);
        std::fs::write(&source, text).unwrap();
        let layer = name.split('.').next().unwrap_or(name);
        let out = dir.path().join(format!("{layer}.gpkg"));
        let converted = convert(&source, &out, layer, &OpenOptions::default());
        (dir, out, converted)
    }

    #[test]
    fn a_reading_thread_that_panics_is_an_error_not_the_end_of_the_file() {
        let mut count = 0;
        let features = (0..5).map(|i| {
            assert!(i < 3, "a reader failing");
            Ok(vec![b'{'])
        });
        let mut seen = Vec::new();
        let result = read_ahead(Box::new(features), |feature| {
            count += 1;
            feature.map(|_| ()).map_err(|e| seen.push(e))
        });
        assert!(result.is_err());
        assert_eq!(seen, ["the thread reading the file failed"]);
        // The batch being read when the thread failed is not handed on: only the error is.
        assert_eq!(count, 1);
    }

    #[test]
    fn a_parser_that_stops_stops_the_reading() {
        // An endless source: `read_ahead` returns only if the reading thread stops when the
        // parser does.
        let endless = std::iter::repeat_with(|| Ok(vec![b'{']));
        let mut count = 0;
        let result = read_ahead(Box::new(endless), |_| {
            count += 1;
            if count == 10 {
                Err("parser error")
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err("parser error"));
        assert_eq!(count, 10);
    }

    #[test]
    fn geojson_lines_are_bounded_and_blank_ones_kept_empty() {
        let text = b"{\"a\":1}\n\n \x1e{\"b\":2}\r\n0123456789abcdef\n";
        let lines: Vec<_> = Lines {
            reader: &text[..],
            line: 0,
            limit: 12,
            done: false,
        }
        .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].as_deref(), Ok(&b"{\"a\":1}\n"[..]));
        assert_eq!(lines[1].as_deref(), Ok(&b""[..]));
        assert_eq!(lines[2].as_deref(), Ok(&b" {\"b\":2}\r\n"[..]));
        assert_eq!(lines[3], Err("line 4: longer than 12 bytes".to_owned()));
    }

    #[test]
    fn geojson_lines_errors_name_the_line_after_blank_ones() {
        let (_dir, _, converted) = convert_text(
            "lines.geojsonl",
            "{\"type\":\"Feature\",\"properties\":{},\"geometry\":null}\n\n  \n{\"type\":\"Feature\"}\n",
        );
        let error = converted.unwrap_err().reason();
        assert!(error.starts_with("line 4: "), "{error}");
    }

    /// Fields are found as they come in one pass, widened as values of other types come, and
    /// each value is written as its column's final type asks.
    #[test]
    fn geojson_fields_widen_as_values_come() {
        let (_dir, out, converted) = convert_text(
            "mixed.geojson",
            r#"{"type":"FeatureCollection","name":"x","features":[
{"type":"Feature","properties":{"n":1,"s":5,"only_null":null,"b":true,"big":1},"geometry":{"type":"Point","coordinates":[1,2]}},
{"type":"Feature","properties":{"n":2.5,"s":"x","b":false,"big":18446744073709551615,"list":[1,"a"],"obj":{"k":2},"r":0.1,"q\"uote":"y"},"geometry":{"type":"Polygon","coordinates":[[[0,0],[4,0],[4,4],[0,0]],[[1,1],[2,1],[1,2],[1,1]]]}},
{"type":"Feature","properties":{"s":1.5,"r":"t"},"geometry":null},
{"type":"Feature","properties":null,"geometry":{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[3,3]}]}}
]}"#,
        );
        assert_eq!(converted.unwrap(), 4);
        let c = rusqlite::Connection::open(&out).unwrap();
        let columns: Vec<(String, String)> = c
            .prepare("SELECT name, type FROM pragma_table_info('mixed')")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected = [
            ("fid", "INTEGER"),
            ("geom", "GEOMETRY"),
            ("n", "REAL"),
            ("s", "TEXT"),
            ("b", "INTEGER"),
            ("big", "INTEGER"),
            ("list", "TEXT"),
            ("obj", "TEXT"),
            ("r", "TEXT"),
            ("q\"uote", "TEXT"),
        ];
        assert_eq!(
            columns,
            expected
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect::<Vec<_>>()
        );
        type Row = (
            Option<f64>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            bool,
        );
        let mut rows: Vec<Row> = c
            .prepare(
                "SELECT n, s, b, big, list, obj, r, geom IS NULL FROM mixed ORDER BY coalesce(n, 9), s",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        let expected: Vec<Row> = vec![
            (
                Some(1.0),
                Some("5".into()),
                Some(1),
                Some(1),
                None,
                None,
                None,
                false,
            ),
            (
                Some(2.5),
                Some("x".into()),
                Some(0),
                None,
                Some(r#"[1,"a"]"#.into()),
                Some(r#"{"k":2}"#.into()),
                Some("0.1".into()),
                false,
            ),
            (
                None,
                Some("1.5".into()),
                None,
                None,
                None,
                None,
                Some("t".into()),
                true,
            ),
            (None, None, None, None, None, None, None, false),
        ];
        let mut expected = expected;
        expected.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(rows, expected);
        // Every geometry is in the R*Tree, and the file is sound.
        let indexed: i64 = c
            .query_row("SELECT count(*) FROM rtree_mixed_geom", [], |r| r.get(0))
            .unwrap();
        assert_eq!(indexed, 3);
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
