//! Streaming RFC 7946 FeatureCollections: features are written into a buffer that is handed
//! on in chunks, so a response is never built whole in memory.

use bytes::Bytes;
use geozero::error::Result as GeozeroResult;
use geozero::wkb::GpkgWkb;
use geozero::{CoordDimensions, GeomProcessor, GeozeroGeometry};
use rusqlite::types::ValueRef;

/// Size at which a chunk is handed to the response.
pub const CHUNK: usize = 256 * 1024;

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
    /// Scratch for a polygon ring's coordinates.
    ring: Vec<(f64, f64, Option<f64>)>,
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
            ring: Vec::new(),
        }
    }

    /// Features written so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.features
    }

    /// Writes one feature from `(key, value, boolean)` properties and its geometry: `key` is
    /// the property's name as written by [`key`]; `boolean` marks a BOOLEAN column, whose
    /// integers are written as `true`/`false` (as GDAL does).
    ///
    /// # Errors
    /// When the geometry blob is malformed.
    pub fn feature<'a>(
        &mut self,
        id: Option<i64>,
        properties: impl Iterator<Item = (&'a [u8], ValueRef<'a>, bool)>,
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
        properties: impl Iterator<Item = (&'a [u8], ValueRef<'a>, bool)>,
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
        for (i, (key, value, boolean)) in properties.enumerate() {
            if i > 0 {
                self.buffer.push(b',');
            }
            self.buffer.extend_from_slice(key);
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
            Geometry::Gpkg(blob) if let Some((x, y)) = gpkg_point(blob) => {
                self.buffer
                    .extend_from_slice(b"{\"type\":\"Point\",\"coordinates\":[");
                write_coordinate(&mut self.buffer, x);
                self.buffer.push(b',');
                write_coordinate(&mut self.buffer, y);
                self.buffer.extend_from_slice(b"]}");
            }
            Geometry::Gpkg(blob) if is_gpkg_geometry(blob) && !is_empty_gpkg(blob) => {
                GpkgWkb(&crate::gis::wkb::decodable(blob))
                    .process_geom(&mut GeometryWriter::new(&mut self.buffer, &mut self.ring))?;
            }
            Geometry::Geo(geometry) => {
                geometry
                    .process_geom(&mut GeometryWriter::new(&mut self.buffer, &mut self.ring))?;
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
        // A small answer does not keep a whole chunk's memory while its client reads it (the
        // answer's memory is counted by its length).
        if self.buffer.capacity() > 2 * self.buffer.len() {
            self.buffer.shrink_to_fit();
        }
        Bytes::from(self.buffer)
    }
}

/// The empty-geometry flag of a GeoPackage geometry header (QGIS writes an empty geometry for a
/// feature without one).
#[must_use]
pub fn is_empty_gpkg(blob: &[u8]) -> bool {
    blob.get(3).is_some_and(|flags| flags & 0b1_0000 != 0)
}

/// A property's name as written before its value: `"name":`, escaped once per query rather
/// than once per feature.
#[must_use]
pub fn key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 3);
    write_text(&mut key, name.as_bytes());
    key.push(b':');
    key
}

/// The coordinates of a GeoPackage geometry that is a plain two-dimensional point (the common
/// case, written without the general geometry reader), when both are finite.
fn gpkg_point(blob: &[u8]) -> Option<(f64, f64)> {
    let (flags, wkb) = crate::gis::wkb::gpkg_wkb(blob)?;
    // Not standard binary, or empty, or not exactly a point: the general path decides.
    if flags & 0b11_0000 != 0 || wkb.len() != 21 {
        return None;
    }
    let (kind, x, y) = crate::gis::wkb::wkb_point(wkb)?;
    (kind == 1 && x.is_finite() && y.is_finite()).then_some((x, y))
}

/// Writes text as a JSON string. Text that is ASCII with nothing to escape (nearly every
/// value) is copied as it is; anything else goes through `serde_json`, with invalid UTF-8
/// replaced.
fn write_text(out: &mut Vec<u8>, text: &[u8]) {
    if is_plain(text) {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text);
        out.push(b'"');
        return;
    }
    // Writing a &str into a Vec cannot fail.
    let _ = match std::str::from_utf8(text) {
        Ok(text) => serde_json::to_writer(&mut *out, text),
        Err(_) => serde_json::to_writer(&mut *out, &String::from_utf8_lossy(text)),
    };
}

/// Whether text is ASCII without quotes, backslashes or control characters: checked eight
/// bytes at a time (a byte below 0x20, or equal to `"` or `\`, after subtracting makes a high
/// bit that the byte itself does not have).
fn is_plain(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let word = |w: u64| {
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
        let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
        below_space | quote | backslash | (w & HIGH) == 0
    };
    let mut words = text.chunks_exact(8);
    let plain_words = words
        .by_ref()
        .all(|w| word(u64::from_le_bytes(w.try_into().unwrap_or([0x80; 8]))));
    plain_words
        && words
            .remainder()
            .iter()
            .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
}

/// A number as JSON: shortest round-trip digits, `null` when not finite.
fn write_number(out: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(value).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Decimal places of coordinates, as GDAL writes RFC 7946 GeoJSON (`-lco RFC7946=YES`): about
/// 1 cm in degrees, and no `180.00000000000006` from a reprojection's rounding.
pub const COORDINATE_DECIMALS: i32 = 7;

/// A coordinate rounded to [`COORDINATE_DECIMALS`] places as `printf("%.7f")` rounds it (the
/// exact binary value, to the nearest), written without trailing zeros.
fn write_coordinate(out: &mut Vec<u8>, value: f64) {
    const SCALE: f64 = 1e7;
    // Beyond 2^53 / 10^7 the scaled value is not exact; such numbers are written as they are.
    if !value.is_finite() || value.abs() >= 9.0e8 {
        return write_number(out, value);
    }
    let scaled = value * SCALE;
    let fraction = scaled - scaled.floor();
    // The product is off from the exact one by half a unit in its last place at most: only
    // values that close to a tie need the exact (slower) decimal rounding.
    if (fraction - 0.5).abs() <= scaled.abs() * 2.0 * f64::EPSILON + 1e-9 {
        let exact = format!("{value:.7}");
        let trimmed = exact.trim_end_matches('0');
        out.extend_from_slice(trimmed.as_bytes());
        if trimmed.ends_with('.') {
            out.push(b'0');
        }
        return;
    }
    let rounded = scaled.round();
    // Between 10^-4 and 2^26, the rounded value's shortest round-trip digits are its seven
    // decimals less trailing zeros (neighbouring doubles are closer than 10^-7 there, and the
    // shortest form is not in exponent notation): written from the integer directly.
    if (1e3..=67_108_864e7).contains(&rounded.abs()) {
        #[allow(clippy::cast_possible_truncation)] // |rounded| < 2^53: exact
        let units = rounded.abs() as u64;
        if rounded < 0.0 {
            out.push(b'-');
        }
        let mut buffer = itoa::Buffer::new();
        let digits = buffer.format(units).as_bytes();
        // Seven decimals, with leading zeros below 1.
        let mut padded = [b'0'; 8];
        let (whole, decimals): (&[u8], &[u8]) = match digits.len().checked_sub(7) {
            Some(split) if split > 0 => digits.split_at(split),
            _ => {
                padded[8 - digits.len()..].copy_from_slice(digits);
                (&padded[..1], &padded[1..])
            }
        };
        let kept = decimals
            .iter()
            .rposition(|&d| d != b'0')
            .map_or(1, |last| last + 1);
        out.extend_from_slice(whole);
        out.push(b'.');
        out.extend_from_slice(&decimals[..kept]);
        return;
    }
    write_number(out, rounded / SCALE);
}

fn write_value(out: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.extend_from_slice(b"null"),
        ValueRef::Integer(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        ValueRef::Real(f) => write_number(out, f),
        ValueRef::Text(t) => write_text(out, t),
        ValueRef::Blob(b) => write_text(out, format!("<{} bytes>", b.len()).as_bytes()),
    }
}

/// Writes geometries as compact RFC 7946 GeoJSON, with a Z coordinate when there is one.
/// Polygon rings are oriented as RFC 7946 asks (and GDAL writes with `RFC7946=YES`): the
/// exterior counter-clockwise, holes clockwise.
struct GeometryWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Inside a polygon: the number of the next ring (0 is the exterior).
    ring: Option<usize>,
    /// The coordinates of the ring being read, written at its end.
    coordinates: &'a mut Vec<(f64, f64, Option<f64>)>,
    buffering: bool,
    /// A MultiPolygon or MultiLineString of one part is being written as that part alone (as
    /// GDAL does for RFC 7946).
    single: bool,
}

impl<'a> GeometryWriter<'a> {
    fn new(out: &'a mut Vec<u8>, coordinates: &'a mut Vec<(f64, f64, Option<f64>)>) -> Self {
        Self {
            out,
            ring: None,
            coordinates,
            buffering: false,
            single: false,
        }
    }

    fn point(&mut self, x: f64, y: f64, z: Option<f64>, index: usize) {
        self.separator(index);
        self.out.push(b'[');
        write_coordinate(self.out, x);
        self.out.push(b',');
        write_coordinate(self.out, y);
        if let Some(z) = z {
            self.out.push(b',');
            write_coordinate(self.out, z);
        }
        self.out.push(b']');
    }

    /// Writes the buffered ring, reversed when it turns the wrong way for its place.
    fn write_ring(&mut self, exterior: bool) {
        let ring = std::mem::take(self.coordinates);
        // Twice the signed area (shoelace): positive when counter-clockwise.
        let area: f64 = ring
            .iter()
            .zip(ring.iter().cycle().skip(1))
            .map(|(a, b)| a.0 * b.1 - b.0 * a.1)
            .sum();
        let reverse = if exterior { area < 0.0 } else { area > 0.0 };
        if reverse {
            for (i, (x, y, z)) in ring.iter().rev().enumerate() {
                self.point(*x, *y, *z, i);
            }
        } else {
            for (i, (x, y, z)) in ring.iter().enumerate() {
                self.point(*x, *y, *z, i);
            }
        }
        *self.coordinates = ring;
        self.coordinates.clear();
    }

    fn separator(&mut self, index: usize) {
        if index > 0 {
            self.out.push(b',');
        }
    }

    fn open(&mut self, index: usize, kind: &str) {
        self.separator(index);
        self.out.extend_from_slice(b"{\"type\":\"");
        self.out.extend_from_slice(kind.as_bytes());
        self.out.extend_from_slice(b"\",\"coordinates\":[");
    }

    /// A ring or line: tagged when it is a geometry of its own, else a bare array.
    fn open_part(&mut self, tagged: bool, index: usize, kind: &str) {
        if tagged {
            self.open(index, kind);
        } else {
            self.separator(index);
            self.out.push(b'[');
        }
    }

    fn close(&mut self) {
        self.out.extend_from_slice(b"]}");
    }

    fn close_part(&mut self, tagged: bool) {
        if tagged {
            self.close();
        } else {
            self.out.push(b']');
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
        if self.buffering {
            self.coordinates.push((x, y, z));
        } else {
            self.point(x, y, z, index);
        }
        Ok(())
    }

    fn empty_point(&mut self, index: usize) -> GeozeroResult<()> {
        self.open(index, "Point");
        self.close();
        Ok(())
    }

    fn point_begin(&mut self, index: usize) -> GeozeroResult<()> {
        self.separator(index);
        self.out
            .extend_from_slice(b"{\"type\":\"Point\",\"coordinates\":");
        Ok(())
    }

    fn point_end(&mut self, _index: usize) -> GeozeroResult<()> {
        self.out.push(b'}');
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
        if !(self.single && self.ring.is_none()) {
            self.open_part(tagged, index, "LineString");
        }
        if !tagged && self.ring.is_some() {
            self.buffering = true;
            self.coordinates.clear();
        }
        Ok(())
    }

    fn linestring_end(&mut self, tagged: bool, _index: usize) -> GeozeroResult<()> {
        if self.buffering {
            self.buffering = false;
            let ring = self.ring.unwrap_or(0);
            self.write_ring(ring == 0);
            self.ring = Some(ring + 1);
        }
        if !(self.single && self.ring.is_none()) {
            self.close_part(tagged);
        }
        Ok(())
    }

    fn multilinestring_begin(&mut self, size: usize, index: usize) -> GeozeroResult<()> {
        self.single = size == 1;
        self.open(
            index,
            if self.single {
                "LineString"
            } else {
                "MultiLineString"
            },
        );
        Ok(())
    }

    fn multilinestring_end(&mut self, _index: usize) -> GeozeroResult<()> {
        self.single = false;
        self.close();
        Ok(())
    }

    fn polygon_begin(&mut self, tagged: bool, _size: usize, index: usize) -> GeozeroResult<()> {
        if !self.single {
            self.open_part(tagged, index, "Polygon");
        }
        self.ring = Some(0);
        Ok(())
    }

    fn polygon_end(&mut self, tagged: bool, _index: usize) -> GeozeroResult<()> {
        self.ring = None;
        if !self.single {
            self.close_part(tagged);
        }
        Ok(())
    }

    fn multipolygon_begin(&mut self, size: usize, index: usize) -> GeozeroResult<()> {
        self.single = size == 1;
        self.open(
            index,
            if self.single {
                "Polygon"
            } else {
                "MultiPolygon"
            },
        );
        Ok(())
    }

    fn multipolygon_end(&mut self, _index: usize) -> GeozeroResult<()> {
        self.single = false;
        self.close();
        Ok(())
    }

    fn geometrycollection_begin(&mut self, _size: usize, index: usize) -> GeozeroResult<()> {
        self.separator(index);
        self.out
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
            let (_, x, y) = crate::gis::wkb::wkb_point(blob.get(8..)?)?;
            Some([x, y, x, y])
        }
        _ => Some([read(8)?, read(24)?, read(16)?, read(32)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rounding of [`write_coordinate`] written the slow way: the exact decimal rounding
    /// near a tie, else the shortest digits of the value rounded to seven places.
    fn slow_coordinate(value: f64) -> String {
        let scaled = value * 1e7;
        if !value.is_finite() || value.abs() >= 9.0e8 {
            let mut out = Vec::new();
            write_number(&mut out, value);
            return String::from_utf8(out).unwrap_or_default();
        }
        let fraction = scaled - scaled.floor();
        if (fraction - 0.5).abs() <= scaled.abs() * 2.0 * f64::EPSILON + 1e-9 {
            let exact = format!("{value:.7}");
            let trimmed = exact.trim_end_matches('0');
            return if trimmed.ends_with('.') {
                format!("{trimmed}0")
            } else {
                trimmed.to_owned()
            };
        }
        let mut out = Vec::new();
        write_number(&mut out, scaled.round() / 1e7);
        String::from_utf8(out).unwrap_or_default()
    }

    fn coordinate(value: f64) -> String {
        let mut out = Vec::new();
        write_coordinate(&mut out, value);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Coordinates written from the rounded integer are the digits the shortest round-trip
    /// form gives, at every magnitude, sign and number of decimals.
    #[test]
    fn coordinates_match_the_shortest_form_of_the_rounded_value() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut values = vec![
            0.0,
            -0.0,
            1e-9,
            -1e-9,
            5e-8,
            1e-7,
            1e-5,
            1e-4,
            0.000_123_4,
            0.5,
            1.0,
            -1.0,
            145.0,
            180.0,
            -180.000_000_000_000_06,
            145.123_456_75,
            6.710_886_4e7,
            6.8e7,
            8.999e8,
            9.0e8,
            1e12,
            12_345_678.901_234_5,
        ];
        for _ in 0..200_000 {
            let bits = next();
            #[allow(clippy::cast_precision_loss)] // any spread of values will do
            let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
            let magnitude = 10f64.powi(i32::try_from(next() % 15).unwrap_or(0) - 6);
            let sign = if bits & 1 == 0 { 1.0 } else { -1.0 };
            let value = sign * unit * magnitude;
            values.push(value);
            // Values with few decimals, as surveyed data has.
            values.push((value * 1e4).round() / 1e4);
        }
        for value in values {
            assert_eq!(coordinate(value), slow_coordinate(value), "{value:e}");
        }
    }

    /// Text is written as `serde_json` writes it, invalid UTF-8 replaced.
    #[test]
    fn text_is_escaped_as_serde_json_does() {
        let cases: &[&[u8]] = &[
            b"",
            b"plain text",
            b"quote \" and backslash \\",
            b"control \x01\x1f tab\t newline\n",
            "caf\u{e9} \u{1f600} \u{2028}".as_bytes(),
            b"\x7f delete",
            b"bad \xff\xfe utf-8",
        ];
        for &text in cases {
            let mut out = Vec::new();
            write_text(&mut out, text);
            let expected = serde_json::to_string(&String::from_utf8_lossy(text))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(String::from_utf8_lossy(&out), expected);
        }
        // Every escaped or non-ASCII byte at every place of a longer text, so that each lane
        // of the eight-byte check and the bytes after the last whole word are tried.
        for special in [b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, 0xc3, 0xff] {
            for at in 0..21 {
                let mut text = b"abcdefghijklmnopqrstu".to_vec();
                text[at] = special;
                let mut out = Vec::new();
                write_text(&mut out, &text);
                let expected = serde_json::to_string(&String::from_utf8_lossy(&text))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    expected,
                    "{special:#x} at {at}"
                );
            }
        }
        assert_eq!(key("na\"me"), br#""na\"me":"#);
    }

    /// A plain point is written as the general geometry writer writes it, whatever its byte
    /// order and envelope; other blobs are left to that writer.
    #[test]
    fn points_are_written_as_the_geometry_writer_writes_them() {
        let blob = |header_flags: u8, envelope: usize, little: bool, kind: u32, xy: [f64; 2]| {
            let mut blob = vec![b'G', b'P', 0, header_flags];
            blob.extend_from_slice(&4326i32.to_le_bytes());
            blob.extend(std::iter::repeat_n(0u8, envelope));
            blob.push(u8::from(little));
            let number = |v: f64| {
                if little {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                }
            };
            blob.extend_from_slice(&if little {
                kind.to_le_bytes()
            } else {
                kind.to_be_bytes()
            });
            blob.extend_from_slice(&number(xy[0]));
            blob.extend_from_slice(&number(xy[1]));
            blob
        };
        let general = |blob: &[u8]| {
            let mut out = Vec::new();
            let mut ring = Vec::new();
            let written = GpkgWkb(&crate::gis::wkb::decodable(blob))
                .process_geom(&mut GeometryWriter::new(&mut out, &mut ring));
            written.map(|()| String::from_utf8_lossy(&out).into_owned())
        };
        let fast = |blob: &[u8]| {
            let mut writer = FeatureWriter::new("t");
            writer
                .feature(None, std::iter::empty(), Geometry::Gpkg(blob))
                .map(|()| String::from_utf8_lossy(writer.last()).into_owned())
        };
        for (envelope_kind, envelope) in [(0, 0), (1, 32), (2, 48), (3, 48), (4, 64)] {
            for little in [true, false] {
                let flags = envelope_kind << 1 | u8::from(little);
                let point = blob(flags, envelope, little, 1, [145.123_456_789, -36.5]);
                assert!(gpkg_point(&point).is_some());
                let expected = general(&point).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    fast(&point).unwrap_or_else(|e| panic!("{e}")),
                    format!(r#"{{"type":"Feature","properties":{{}},"geometry":{expected}}}"#),
                    "flags {flags}, little {little}"
                );
            }
        }
        // A WKB in another byte order than its header is read by the WKB's order (as GDAL
        // reads it), on this path and the general one.
        let mixed = blob(1, 0, false, 1, [1.5, 2.5]);
        assert_eq!(gpkg_point(&mixed), Some((1.5, 2.5)));
        assert_eq!(
            general(&mixed).unwrap_or_else(|e| panic!("{e}")),
            r#"{"type":"Point","coordinates":[1.5,2.5]}"#
        );
        assert!(
            fast(&mixed)
                .unwrap_or_else(|e| panic!("{e}"))
                .ends_with(r#""coordinates":[1.5,2.5]}}"#)
        );
        // Not plain points: a 3D type, trailing bytes, a non-finite coordinate, an empty flag.
        assert!(gpkg_point(&blob(1, 0, true, 1001, [1.0, 2.0])).is_none());
        let mut trailing = blob(1, 0, true, 1, [1.0, 2.0]);
        trailing.push(0);
        assert!(gpkg_point(&trailing).is_none());
        assert!(gpkg_point(&blob(1, 0, true, 1, [f64::NAN, 2.0])).is_none());
        assert!(gpkg_point(&blob(0b1_0001, 0, true, 1, [1.0, 2.0])).is_none());
        assert!(fast(&blob(1, 0, true, 1, [f64::INFINITY, 2.0])).is_err());
    }
}
