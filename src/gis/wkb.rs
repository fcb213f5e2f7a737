//! A structural check of GeoPackage geometry blobs before anything decodes them: the decoders
//! recurse into nested collections and reserve memory for the counts a blob claims, so a blob
//! from a hostile `-sql` (or a damaged file) could overflow the stack or ask for terabytes. The
//! check walks the blob without recursion limits of its own beyond [`MAX_DEPTH`], and allows
//! only counts that the bytes left can hold.

/// How deeply collections may nest (GeoJSON from real data nests two or three levels).
pub const MAX_DEPTH: usize = 32;

/// Why a geometry blob is refused.
pub type Malformed = &'static str;

/// Checks a GeoPackage geometry blob (header, optional envelope, WKB).
///
/// # Errors
/// What is wrong: a short header, an unknown envelope or geometry type, nesting deeper than
/// [`MAX_DEPTH`], or a count larger than the bytes that follow.
pub fn check_gpkg(blob: &[u8]) -> Result<(), Malformed> {
    if blob.len() < 8 || !blob.starts_with(b"GP") {
        return Err("not a GeoPackage geometry");
    }
    let envelope = envelope_bytes(blob[3]).ok_or("unknown envelope kind")?;
    let wkb = blob
        .get(8 + envelope..)
        .ok_or("the header is longer than the blob")?;
    if blob[3] & 0b1_0000 != 0 && wkb.is_empty() {
        return Ok(());
    }
    let mut reader = Reader { bytes: wkb, at: 0 };
    reader.geometry(0, None)?;
    // The decoders read what the header says, not the blob's length: anything left over means
    // the parts were not what they claimed.
    if reader.left() != 0 {
        return Err("bytes left over after the geometry");
    }
    Ok(())
}

/// The bytes of a GeoPackage geometry header's envelope, by the kind its flags give; `None`
/// for an unknown kind.
fn envelope_bytes(flags: u8) -> Option<usize> {
    match (flags >> 1) & 0b111 {
        0 => Some(0),
        1 => Some(32),
        2 | 3 => Some(48),
        4 => Some(64),
        _ => None,
    }
}

/// The flags of a GeoPackage geometry blob and its WKB (what follows the header and the
/// envelope); `None` when it is not such a blob.
#[must_use]
pub fn gpkg_wkb(blob: &[u8]) -> Option<(u8, &[u8])> {
    if !blob.starts_with(b"GP") {
        return None;
    }
    let flags = *blob.get(3)?;
    Some((flags, blob.get(8 + envelope_bytes(flags)?..)?))
}

/// A WKB point's type code and its first two coordinates, read in the WKB's own byte order; a
/// point of any dimensions (the type code ends in 1), `None` for anything else.
#[must_use]
pub fn wkb_point(wkb: &[u8]) -> Option<(u32, f64, f64)> {
    let little = match wkb.first()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let kind: [u8; 4] = wkb.get(1..5)?.try_into().ok()?;
    let kind = if little {
        u32::from_le_bytes(kind)
    } else {
        u32::from_be_bytes(kind)
    };
    let number = |at: usize| -> Option<f64> {
        let bytes: [u8; 8] = wkb.get(at..at + 8)?.try_into().ok()?;
        Some(if little {
            f64::from_le_bytes(bytes)
        } else {
            f64::from_be_bytes(bytes)
        })
    };
    (kind % 1000 == 1).then_some(())?;
    Some((kind, number(5)?, number(13)?))
}

/// Decodes a GeoPackage geometry blob (checked with [`check_gpkg`] first where it may be
/// hostile) through [`decodable`].
///
/// # Errors
/// When geozero cannot read it.
pub fn to_geo(blob: &[u8]) -> geozero::error::Result<geo::Geometry<f64>> {
    use geozero::ToGeo;
    geozero::wkb::GpkgWkb(&decodable(blob)).to_geo()
}

/// A GeoPackage geometry blob as geozero can decode it. geozero reads the WKB in the byte
/// order of the GeoPackage header, where the WKB's own first byte says its order (GDAL reads
/// it so); a blob whose two orders differ (allowed, though GDAL and this server never write
/// one) is given back with its header in the WKB's order, so that it decodes as GDAL reads it.
#[must_use]
pub fn decodable(blob: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    let Some((flags, wkb)) = gpkg_wkb(blob) else {
        return Cow::Borrowed(blob);
    };
    if wkb
        .first()
        .is_none_or(|&order| order > 1 || order == flags & 1)
    {
        return Cow::Borrowed(blob);
    }
    let envelope_end = blob.len() - wkb.len();
    let mut turned = blob.to_vec();
    turned[3] ^= 1;
    turned[4..8].reverse();
    for double in turned[8..envelope_end].chunks_exact_mut(8) {
        double.reverse();
    }
    Cow::Owned(turned)
}

/// Checks that WKT text nests no deeper than [`MAX_DEPTH`] collections (its parser recurses).
///
/// # Errors
/// When it nests deeper.
pub fn check_wkt(text: &str) -> Result<(), Malformed> {
    // A polygon in a multipolygon in a collection is three parentheses deep already.
    let mut depth = 0usize;
    for c in text.bytes() {
        match c {
            b'(' => {
                depth += 1;
                if depth > MAX_DEPTH + 3 {
                    return Err("collections nest too deeply");
                }
            }
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    fn skip(&mut self, n: usize) -> Result<(), Malformed> {
        if n > self.left() {
            return Err("the geometry is cut short");
        }
        self.at += n;
        Ok(())
    }

    fn u32(&mut self, little: bool) -> Result<u32, Malformed> {
        let bytes: [u8; 4] = self
            .bytes
            .get(self.at..self.at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or("the geometry is cut short")?;
        self.at += 4;
        Ok(if little {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    }

    /// A count of items of at least `each` bytes, refused when the bytes left cannot hold it.
    fn count(&mut self, little: bool, each: usize) -> Result<usize, Malformed> {
        let n = usize::try_from(self.u32(little)?).map_err(|_| "a count is too large")?;
        match n.checked_mul(each) {
            Some(bytes) if bytes <= self.left() => Ok(n),
            _ => Err("a count is larger than the geometry holds"),
        }
    }

    /// One WKB geometry (ISO or extended WKB type codes). Only the seven simple-feature types
    /// are accepted (curves, triangles and surfaces are not written as GeoJSON); a part of a
    /// Multi* geometry must be of its one kind (`part_of`: the kind and dimensions its parent
    /// requires), as the decoders read it without looking.
    fn geometry(
        &mut self,
        depth: usize,
        part_of: Option<(u32, bool, bool)>,
    ) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err("collections nest too deeply");
        }
        let little = match self.bytes.get(self.at) {
            Some(0) => false,
            Some(1) => true,
            _ => return Err("bad byte order"),
        };
        self.at += 1;
        let code = self.u32(little)?;
        let (mut z, mut m) = (code & 0x8000_0000 != 0, code & 0x4000_0000 != 0);
        if code & 0x2000_0000 != 0 {
            self.skip(4)?; // an extended WKB SRID
        }
        let base = code & 0x0fff_ffff;
        match base / 1000 {
            0 => {}
            1 => z = true,
            2 => m = true,
            3 => (z, m) = (true, true),
            _ => return Err("unknown geometry type"),
        }
        let kind = base % 1000;
        if let Some((wanted, wanted_z, wanted_m)) = part_of
            && ((wanted != 0 && kind != wanted) || z != wanted_z || m != wanted_m)
        {
            return Err("a part is not of its collection's kind");
        }
        let coordinate = 8 * (2 + usize::from(z) + usize::from(m));
        match kind {
            1 => self.skip(coordinate),
            2 => {
                let n = self.count(little, coordinate)?;
                self.skip(n * coordinate)
            }
            3 => {
                let rings = self.count(little, 4)?;
                for _ in 0..rings {
                    let n = self.count(little, coordinate)?;
                    self.skip(n * coordinate)?;
                }
                Ok(())
            }
            // MultiPoint, MultiLineString, MultiPolygon: parts of one kind; GeometryCollection:
            // any, with the same dimensions.
            4..=7 => {
                let parts = self.count(little, 5)?;
                let part_kind = if kind == 7 { 0 } else { kind - 3 };
                for _ in 0..parts {
                    self.geometry(depth + 1, Some((part_kind, z, m)))?;
                }
                Ok(())
            }
            _ => Err("not a point, line, polygon or collection of them"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob whose header and WKB byte orders differ decodes as GDAL reads it (the WKB by its
    /// own order); others are not copied.
    #[test]
    fn blobs_with_two_byte_orders_decode_by_the_wkb_order() {
        use geozero::ToGeo;
        // A little-endian header with an XY envelope and SRS 4326, then a big-endian line.
        let mut blob = b"GP\x00\x03".to_vec();
        blob.extend_from_slice(&4326i32.to_le_bytes());
        for v in [1.5f64, 3.5, 2.5, 4.5] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        blob.push(0);
        blob.extend_from_slice(&2u32.to_be_bytes());
        blob.extend_from_slice(&2u32.to_be_bytes());
        for v in [1.5f64, 2.5, 3.5, 4.5] {
            blob.extend_from_slice(&v.to_be_bytes());
        }
        assert!(check_gpkg(&blob).is_ok());
        let line = geozero::wkb::GpkgWkb(&decodable(&blob))
            .to_geo()
            .unwrap_or_else(|e| panic!("{e}"));
        let expected: geo::Geometry<f64> =
            geo::LineString::from(vec![(1.5, 2.5), (3.5, 4.5)]).into();
        assert_eq!(line, expected);
        // The header was turned: its SRS and envelope read the same in the new order.
        let turned = decodable(&blob);
        assert_eq!(turned[3], 2);
        assert_eq!(turned[4..8], 4326i32.to_be_bytes());
        assert_eq!(turned[8..16], 1.5f64.to_be_bytes());
        // A blob in one order, and anything malformed, is given back as it is.
        assert!(matches!(
            decodable(&point_blob()),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(decodable(b"GP"), std::borrow::Cow::Borrowed(_)));
        assert!(matches!(
            decodable(&blob[..40]),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    fn point_blob() -> Vec<u8> {
        gpkg(&point())
    }

    fn gpkg(wkb: &[u8]) -> Vec<u8> {
        let mut blob = b"GP\x00\x01\x00\x00\x00\x00".to_vec();
        blob.extend_from_slice(wkb);
        blob
    }

    fn point() -> Vec<u8> {
        let mut wkb = vec![1, 1, 0, 0, 0];
        wkb.extend_from_slice(&1.0f64.to_le_bytes());
        wkb.extend_from_slice(&2.0f64.to_le_bytes());
        wkb
    }

    fn collection(depth: usize) -> Vec<u8> {
        let mut wkb = Vec::new();
        for _ in 0..depth {
            wkb.extend_from_slice(&[1, 7, 0, 0, 0, 1, 0, 0, 0]);
        }
        wkb.extend_from_slice(&point());
        wkb
    }

    #[test]
    fn real_geometries_pass() {
        assert_eq!(check_gpkg(&gpkg(&point())), Ok(()));
        assert_eq!(check_gpkg(&gpkg(&collection(3))), Ok(()));
        let mut line = vec![1, 2, 0, 0, 0, 2, 0, 0, 0];
        line.extend_from_slice(&[0; 32]);
        assert_eq!(check_gpkg(&gpkg(&line)), Ok(()));
    }

    #[test]
    fn bombs_are_refused() {
        assert!(check_gpkg(&gpkg(&collection(MAX_DEPTH + 1))).is_err());
        assert!(check_gpkg(&gpkg(&collection(8000))).is_err());
        // A line claiming four billion points in 16 bytes.
        let mut line = vec![1, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        line.extend_from_slice(&[0; 16]);
        assert!(check_gpkg(&gpkg(&line)).is_err());
        assert!(check_gpkg(&gpkg(&[1, 99, 0, 0, 0])).is_err());
        assert!(check_gpkg(b"GP\x00\x0f\x00\x00\x00\x00").is_err());
        let deep = format!(
            "{}POINT (1 2){}",
            "GEOMETRYCOLLECTION (".repeat(5000),
            ")".repeat(5000)
        );
        assert!(check_wkt(&deep).is_err());
        // A MultiPolygon whose part claims to be a point (the decoders would read a polygon).
        let mut lying = vec![1, 6, 0, 0, 0, 1, 0, 0, 0];
        lying.extend_from_slice(&point());
        assert!(check_gpkg(&gpkg(&lying)).is_err());
        // Trailing bytes, and a curve.
        let mut trailing = point();
        trailing.push(0);
        assert!(check_gpkg(&gpkg(&trailing)).is_err());
        let mut curve = vec![1, 8, 0, 0, 0, 3, 0, 0, 0];
        curve.extend_from_slice(&[0; 48]);
        assert!(check_gpkg(&gpkg(&curve)).is_err());
        assert!(check_wkt("MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)))").is_ok());
    }
}
