//! Streaming RFC 7946 FeatureCollections: features are written into a buffer that is handed
//! on in chunks, so a response is never built whole in memory.

use bytes::Bytes;
use geozero::GeozeroGeometry;
use geozero::geojson::GeoJsonWriter;
use geozero::wkb::GpkgWkb;
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
        }
    }

    /// Features written so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.features
    }

    /// Writes one feature from `(name, value)` properties and its geometry.
    ///
    /// # Errors
    /// When the geometry blob is malformed.
    pub fn feature<'a>(
        &mut self,
        id: Option<i64>,
        properties: impl Iterator<Item = (&'a str, ValueRef<'a>)>,
        geometry: Geometry<'_>,
    ) -> geozero::error::Result<()> {
        if self.features > 0 {
            self.buffer.push(b',');
        }
        self.features += 1;
        self.buffer.extend_from_slice(b"{\"type\":\"Feature\",");
        if let Some(id) = id {
            self.buffer
                .extend_from_slice(format!("\"id\":{id},").as_bytes());
        }
        self.buffer.extend_from_slice(b"\"properties\":{");
        for (i, (name, value)) in properties.enumerate() {
            if i > 0 {
                self.buffer.push(b',');
            }
            write_string(&mut self.buffer, name);
            self.buffer.push(b':');
            write_value(&mut self.buffer, value);
        }
        self.buffer.extend_from_slice(b"},\"geometry\":");
        match geometry {
            Geometry::Gpkg(blob) if is_gpkg_geometry(blob) && !is_empty_gpkg(blob) => {
                GpkgWkb(blob).process_geom(&mut GeoJsonWriter::new(&mut self.buffer))?;
            }
            Geometry::Geo(geometry) => {
                geometry.process_geom(&mut GeoJsonWriter::new(&mut self.buffer))?
            }
            _ => self.buffer.extend_from_slice(b"null"),
        }
        self.buffer.push(b'}');
        Ok(())
    }

    /// Takes the bytes written so far when they make a full chunk.
    pub fn take_chunk(&mut self) -> Option<Bytes> {
        (self.buffer.len() >= CHUNK).then(|| {
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

/// The empty-geometry flag of a GeoPackage geometry header.
fn is_empty_gpkg(blob: &[u8]) -> bool {
    blob[3] & 0b1_0000 != 0
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(serde_json::Value::from(text).to_string().as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.extend_from_slice(b"null"),
        ValueRef::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        ValueRef::Real(f) if f.is_finite() => {
            out.extend_from_slice(serde_json::Value::from(f).to_string().as_bytes())
        }
        ValueRef::Real(_) => out.extend_from_slice(b"null"),
        ValueRef::Text(t) => write_string(out, &String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => write_string(out, &format!("<{} bytes>", b.len())),
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
