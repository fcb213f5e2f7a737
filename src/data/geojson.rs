//! Streaming RFC 7946 FeatureCollections: features are written into a buffer that is handed
//! on in chunks, so a response is never built whole in memory.

use bytes::Bytes;
use geozero::error::Result as GeozeroResult;
use geozero::wkb::GpkgWkb;
use geozero::{CoordDimensions, GeomProcessor, GeozeroGeometry};
use rusqlite::types::ValueRef;

/// Size at which a chunk is handed to the response.
pub const CHUNK: usize = 64 * 1024;

/// A feature's geometry as stored, or as computed (clipped to a filter, simplified).
#[derive(Debug, Clone, Copy)]
pub enum Geometry<'a> {
    /// No geometry.
    None,
    /// A GeoPackage geometry blob, written straight through.
    Gpkg(&'a [u8]),
    /// A decoded geometry.
    Geo(&'a geo::Geometry<f64>),
}

/// Writes a FeatureCollection feature by feature.
#[derive(Debug)]
pub struct FeatureWriter {
    buffer: Vec<u8>,
    features: u64,
    /// Where the last feature starts in `buffer`.
    last: usize,
}

/// Whether a blob is a GeoPackage geometry (`GP` magic).
#[must_use]
pub fn is_gpkg_geometry(blob: &[u8]) -> bool {
    blob.len() >= 8 && blob.starts_with(b"GP")
}

impl FeatureWriter {
    /// Starts a collection named `name`.
    #[must_use]
    pub fn new(name: &str) -> Self {
        let mut buffer = Vec::with_capacity(CHUNK + 4096);
        buffer.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"name\":");
        buffer.extend_from_slice(serde_json::Value::from(name).to_string().as_bytes());
        buffer.extend_from_slice(b",\"features\":[");
        Self {
            buffer,
            features: 0,
            last: 0,
        }
    }

    /// Features written so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.features
    }

    /// Writes one feature from `(name, value, boolean)` properties and its geometry; `boolean`
    /// marks a BOOLEAN column, whose integers are written as `true`/`false` (as GDAL does).
    ///
    /// # Errors
    /// When the geometry blob is malformed.
    pub fn feature<'a>(
        &mut self,
        id: Option<i64>,
        properties: impl Iterator<Item = (&'a str, ValueRef<'a>, bool)>,
        geometry: Geometry<'_>,
    ) -> geozero::error::Result<()> {
        let (length, features, last) = (self.buffer.len(), self.features, self.last);
        let written = self.write_feature(id, properties, geometry);
        if written.is_err() {
            // Nothing of a feature that could not be written stays in the collection.
            self.buffer.truncate(length);
            (self.features, self.last) = (features, last);
        }
        written
    }

    fn write_feature<'a>(
        &mut self,
        id: Option<i64>,
        properties: impl Iterator<Item = (&'a str, ValueRef<'a>, bool)>,
        geometry: Geometry<'_>,
    ) -> geozero::error::Result<()> {
        self.begin();
        self.buffer.extend_from_slice(b"{\"type\":\"Feature\",");
        if let Some(id) = id {
            self.buffer.extend_from_slice(b"\"id\":");
            self.buffer
                .extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
            self.buffer.push(b',');
        }
        self.buffer.extend_from_slice(b"\"properties\":{");
        for (i, (name, value, boolean)) in properties.enumerate() {
            if i > 0 {
                self.buffer.push(b',');
            }
            write_string(&mut self.buffer, name);
            self.buffer.push(b':');
            match value {
                ValueRef::Integer(i) if boolean => {
                    self.buffer
                        .extend_from_slice(if i == 0 { b"false" } else { b"true" });
                }
                _ => write_value(&mut self.buffer, value),
            }
        }
        self.buffer.extend_from_slice(b"},\"geometry\":");
        match geometry {
            Geometry::Gpkg(blob) if is_gpkg_geometry(blob) && !is_empty_gpkg(blob) => {
                GpkgWkb(blob).process_geom(&mut GeometryWriter(&mut self.buffer))?;
            }
            Geometry::Geo(geometry) => {
                geometry.process_geom(&mut GeometryWriter(&mut self.buffer))?;
            }
            _ => self.buffer.extend_from_slice(b"null"),
        }
        self.buffer.push(b'}');
        Ok(())
    }

    /// Writes one feature already written by [`FeatureWriter::feature`] (see
    /// [`FeatureWriter::last`]).
    pub fn raw(&mut self, feature: &[u8]) {
        self.begin();
        self.buffer.extend_from_slice(feature);
    }

    /// The `Feature` object written last, until the next write or [`FeatureWriter::take_chunk`].
    #[must_use]
    pub fn last(&self) -> &[u8] {
        self.buffer.get(self.last..).unwrap_or_default()
    }

    fn begin(&mut self) {
        if self.features > 0 {
            self.buffer.push(b',');
        }
        self.features += 1;
        self.last = self.buffer.len();
    }

    /// Bytes written and not yet taken.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// Takes the bytes written so far when they make a full chunk.
    pub fn take_chunk(&mut self) -> Option<Bytes> {
        (self.buffer.len() >= CHUNK).then(|| {
            self.last = 0;
            Bytes::from(std::mem::replace(
                &mut self.buffer,
                Vec::with_capacity(CHUNK + 4096),
            ))
        })
    }

    /// Closes the collection, with `tail` (`,"member":value…`) after the features, and returns
    /// the remaining bytes.
    #[must_use]
    pub fn finish(mut self, tail: &str) -> Bytes {
        self.buffer.push(b']');
        self.buffer.extend_from_slice(tail.as_bytes());
        self.buffer.extend_from_slice(b"}\n");
        Bytes::from(self.buffer)
    }
}

/// The empty-geometry flag of a GeoPackage geometry header (QGIS writes an empty geometry for a
/// feature without one).
#[must_use]
pub fn is_empty_gpkg(blob: &[u8]) -> bool {
    blob.get(3).is_some_and(|flags| flags & 0b1_0000 != 0)
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A number as JSON: shortest round-trip digits, `null` when not finite.
fn write_number(out: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(value).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_value(out: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.extend_from_slice(b"null"),
        ValueRef::Integer(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        ValueRef::Real(f) => write_number(out, f),
        ValueRef::Text(t) => write_string(out, &String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => write_string(out, &format!("<{} bytes>", b.len())),
    }
}

/// Writes geometries as compact RFC 7946 GeoJSON, with a Z coordinate when there is one.
struct GeometryWriter<'a>(&'a mut Vec<u8>);

impl GeometryWriter<'_> {
    fn separator(&mut self, index: usize) {
        if index > 0 {
            self.0.push(b',');
        }
    }

    fn open(&mut self, index: usize, kind: &str) {
        self.separator(index);
        self.0.extend_from_slice(b"{\"type\":\"");
        self.0.extend_from_slice(kind.as_bytes());
        self.0.extend_from_slice(b"\",\"coordinates\":[");
    }

    /// A ring or line: tagged when it is a geometry of its own, else a bare array.
    fn open_part(&mut self, tagged: bool, index: usize, kind: &str) {
        if tagged {
            self.open(index, kind);
        } else {
            self.separator(index);
            self.0.push(b'[');
        }
    }

    fn close(&mut self) {
        self.0.extend_from_slice(b"]}");
    }

    fn close_part(&mut self, tagged: bool) {
        if tagged {
            self.close();
        } else {
            self.0.push(b']');
        }
    }
}

impl GeomProcessor for GeometryWriter<'_> {
    fn dimensions(&self) -> CoordDimensions {
        CoordDimensions::xyz()
    }

    fn xy(&mut self, x: f64, y: f64, index: usize) -> GeozeroResult<()> {
        self.coordinate(x, y, None, None, None, None, index)
    }

    fn coordinate(
        &mut self,
        x: f64,
        y: f64,
        z: Option<f64>,
        _m: Option<f64>,
        _t: Option<f64>,
        _tm: Option<u64>,
        index: usize,
    ) -> GeozeroResult<()> {
        // GeoJSON has no NaN or infinity: such a geometry is not written at all.
        if !(x.is_finite() && y.is_finite() && z.is_none_or(f64::is_finite)) {
            return Err(geozero::error::GeozeroError::Geometry(
                "a coordinate is not a finite number".to_owned(),
            ));
        }
        self.separator(index);
        self.0.push(b'[');
        write_number(self.0, x);
        self.0.push(b',');
        write_number(self.0, y);
        if let Some(z) = z {
            self.0.push(b',');
            write_number(self.0, z);
        }
        self.0.push(b']');
        Ok(())
    }

    fn empty_point(&mut self, index: usize) -> GeozeroResult<()> {
        self.open(index, "Point");
        self.close();
        Ok(())
    }

    fn point_begin(&mut self, index: usize) -> GeozeroResult<()> {
        self.separator(index);
        self.0
            .extend_from_slice(b"{\"type\":\"Point\",\"coordinates\":");
        Ok(())
    }

    fn point_end(&mut self, _index: usize) -> GeozeroResult<()> {
        self.0.push(b'}');
        Ok(())
    }

    fn multipoint_begin(&mut self, _size: usize, index: usize) -> GeozeroResult<()> {
        self.open(index, "MultiPoint");
        Ok(())
    }

    fn multipoint_end(&mut self, _index: usize) -> GeozeroResult<()> {
        self.close();
        Ok(())
    }

    fn linestring_begin(&mut self, tagged: bool, _size: usize, index: usize) -> GeozeroResult<()> {
        self.open_part(tagged, index, "LineString");
        Ok(())
    }

    fn linestring_end(&mut self, tagged: bool, _index: usize) -> GeozeroResult<()> {
        self.close_part(tagged);
        Ok(())
    }

    fn multilinestring_begin(&mut self, _size: usize, index: usize) -> GeozeroResult<()> {
        self.open(index, "MultiLineString");
        Ok(())
    }

    fn multilinestring_end(&mut self, _index: usize) -> GeozeroResult<()> {
        self.close();
        Ok(())
    }

    fn polygon_begin(&mut self, tagged: bool, _size: usize, index: usize) -> GeozeroResult<()> {
        self.open_part(tagged, index, "Polygon");
        Ok(())
    }

    fn polygon_end(&mut self, tagged: bool, _index: usize) -> GeozeroResult<()> {
        self.close_part(tagged);
        Ok(())
    }

    fn multipolygon_begin(&mut self, _size: usize, index: usize) -> GeozeroResult<()> {
        self.open(index, "MultiPolygon");
        Ok(())
    }

    fn multipolygon_end(&mut self, _index: usize) -> GeozeroResult<()> {
        self.close();
        Ok(())
    }

    fn geometrycollection_begin(&mut self, _size: usize, index: usize) -> GeozeroResult<()> {
        self.separator(index);
        self.0
            .extend_from_slice(b"{\"type\":\"GeometryCollection\",\"geometries\":[");
        Ok(())
    }

    fn geometrycollection_end(&mut self, _index: usize) -> GeozeroResult<()> {
        self.close();
        Ok(())
    }
}

/// The bounding box in a GeoPackage geometry header, or of a point without one.
#[must_use]
pub fn gpkg_envelope(blob: &[u8]) -> Option<[f64; 4]> {
    if !is_gpkg_geometry(blob) {
        return None;
    }
    let flags = blob[3];
    let little = flags & 1 == 1;
    let read = |at: usize| -> Option<f64> {
        let bytes: [u8; 8] = blob.get(at..at + 8)?.try_into().ok()?;
        Some(if little {
            f64::from_le_bytes(bytes)
        } else {
            f64::from_be_bytes(bytes)
        })
    };
    match (flags >> 1) & 0b111 {
        0 => {
            // No envelope: only a point's bounds can be read directly from its WKB.
            let wkb = blob.get(8..)?;
            let wkb_little = *wkb.first()? == 1;
            let kind: [u8; 4] = wkb.get(1..5)?.try_into().ok()?;
            let kind = if wkb_little {
                u32::from_le_bytes(kind)
            } else {
                u32::from_be_bytes(kind)
            };
            if kind % 1000 != 1 {
                return None;
            }
            let coordinate = |at: usize| -> Option<f64> {
                let bytes: [u8; 8] = wkb.get(at..at + 8)?.try_into().ok()?;
                Some(if wkb_little {
                    f64::from_le_bytes(bytes)
                } else {
                    f64::from_be_bytes(bytes)
                })
            };
            let (x, y) = (coordinate(5)?, coordinate(13)?);
            Some([x, y, x, y])
        }
        _ => Some([read(8)?, read(24)?, read(16)?, read(32)?]),
    }
}
