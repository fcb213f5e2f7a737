//! A GeoPackage's R*Tree packed from rows already in spatial (Hilbert) order, written straight
//! into SQLite's R*Tree tables (`<name>_node`, `<name>_rowid`, `<name>_parent`) in the format
//! SQLite's R*Tree module reads and keeps up to date: full nodes, leaves in row order, each
//! parent over neighbouring children. This is how a Hilbert-packed R-tree is built; inserting
//! rows one at a time (each choosing a leaf, splitting nodes) costs ten times as much and leaves
//! nodes half full. `SELECT rtreecheck(…)` accepts the result, and later edits through the
//! GeoPackage triggers go through the R*Tree module as usual.
//!
//! The format (SQLite's `rtree.c`): a node is a blob of the tree's node size; bytes 0–1 hold
//! the tree's depth in the root (node 1) and are zero elsewhere, bytes 2–3 the number of cells,
//! then the cells: a big-endian 64-bit id (a row id in leaves, a child node number above) and
//! the box as big-endian 32-bit floats (min x, max x, min y, max y), rounded outwards.

use rusqlite::{Connection, params};

use crate::gis::quote;

/// Bytes of one cell of a two-dimensional tree.
const CELL: usize = 8 + 4 * 4;

/// A box rounded outwards to 32-bit floats, as the R*Tree stores it.
type Box32 = [f32; 4];

fn down(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) > x { f.next_down() } else { f }
}

fn up(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) < x { f.next_up() } else { f }
}

fn union(a: &Box32, b: &Box32) -> Box32 {
    [
        a[0].min(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].max(b[3]),
    ]
}

/// Writes the R*Tree `rtree` (created empty) over `entries`: row ids in the order they are to
/// be packed, with their bounds `[min x, max x, min y, max y]`.
///
/// # Errors
/// When a table cannot be read or written.
pub fn pack(
    c: &Connection,
    rtree: &str,
    entries: impl Iterator<Item = rusqlite::Result<(i64, [f64; 4])>>,
) -> rusqlite::Result<()> {
    let node_table = quote(&format!("{rtree}_node"));
    let rowid_table = quote(&format!("{rtree}_rowid"));
    let parent_table = quote(&format!("{rtree}_parent"));
    let node_size: usize = c
        .query_row(
            &format!("SELECT length(data) FROM {node_table} WHERE nodeno = 1"),
            [],
            |r| r.get::<_, i64>(0),
        )?
        .try_into()
        .unwrap_or(4 + CELL * 51);
    let capacity = (node_size - 4) / CELL;
    c.execute_batch(&format!(
        "DELETE FROM {node_table}; DELETE FROM {rowid_table}; DELETE FROM {parent_table};"
    ))?;
    let mut write_node = c.prepare(&format!("INSERT INTO {node_table} VALUES (?1, ?2)"))?;
    // A leaf's row ids go in with one statement.
    let rowids =
        |leaf: &[(i64, Box32)], node: i64| -> rusqlite::Result<()> {
            let mut statement = c.prepare_cached(
                &crate::gis::source::gpkg_write::insert_rows_sql(&rowid_table, 2, leaf.len()),
            )?;
            for (k, (id, _)) in leaf.iter().enumerate() {
                statement.raw_bind_parameter(2 * k + 1, id)?;
                statement.raw_bind_parameter(2 * k + 2, node)?;
            }
            statement.raw_execute().map(|_| ())
        };
    let mut write_parent = c.prepare(&format!("INSERT INTO {parent_table} VALUES (?1, ?2)"))?;
    let blob = |depth: u16, cells: &[(i64, Box32)]| {
        let mut data = vec![0u8; node_size];
        data[0..2].copy_from_slice(&depth.to_be_bytes());
        data[2..4].copy_from_slice(&u16::try_from(cells.len()).unwrap_or(0).to_be_bytes());
        for (i, (id, b)) in cells.iter().enumerate() {
            let at = 4 + i * CELL;
            data[at..at + 8].copy_from_slice(&id.to_be_bytes());
            for (k, v) in b.iter().enumerate() {
                data[at + 8 + 4 * k..at + 12 + 4 * k].copy_from_slice(&v.to_be_bytes());
            }
        }
        data
    };
    // Node 1 is the root; the others are numbered from 2 as they are written.
    let mut next = 2i64;
    let mut level: Vec<(i64, Box32)> = Vec::new();
    let mut leaf: Vec<(i64, Box32)> = Vec::with_capacity(capacity);
    let mut flush =
        |leaf: &mut Vec<(i64, Box32)>, level: &mut Vec<(i64, Box32)>| -> rusqlite::Result<()> {
            let node = next;
            next += 1;
            write_node.execute(params![node, blob(0, leaf)])?;
            rowids(leaf, node)?;
            let bounds = leaf
                .iter()
                .skip(1)
                .fold(leaf[0].1, |acc, (_, b)| union(&acc, b));
            level.push((node, bounds));
            leaf.clear();
            Ok(())
        };
    for entry in entries {
        let (id, [minx, maxx, miny, maxy]) = entry?;
        if leaf.len() == capacity {
            flush(&mut leaf, &mut level)?;
        }
        leaf.push((id, [down(minx), up(maxx), down(miny), up(maxy)]));
    }
    if level.is_empty() {
        // Everything fits in the root: it is the one leaf.
        write_node.execute(params![1i64, blob(0, &leaf)])?;
        if !leaf.is_empty() {
            rowids(&leaf, 1)?;
        }
        return Ok(());
    }
    if !leaf.is_empty() {
        flush(&mut leaf, &mut level)?;
    }
    let mut depth = 1u16;
    while level.len() > capacity {
        let mut parents = Vec::with_capacity(level.len().div_ceil(capacity));
        for children in level.chunks(capacity) {
            let node = next;
            next += 1;
            write_node.execute(params![node, blob(0, children)])?;
            for (child, _) in children {
                write_parent.execute(params![child, node])?;
            }
            let bounds = children
                .iter()
                .skip(1)
                .fold(children[0].1, |acc, (_, b)| union(&acc, b));
            parents.push((node, bounds));
        }
        level = parents;
        depth += 1;
    }
    write_node.execute(params![1i64, blob(depth, &level)])?;
    for (child, _) in &level {
        write_parent.execute(params![child, 1i64])?;
    }
    Ok(())
}

/// The bounds `[min x, max x, min y, max y]` of a GeoPackage geometry blob: its envelope, or
/// its point, or (without an envelope) its decoded geometry's. `None` for an empty or
/// unreadable geometry.
#[must_use]
pub fn blob_bounds(blob: &[u8]) -> Option<[f64; 4]> {
    use geo::BoundingRect;
    if blob.len() < 8 || !blob.starts_with(b"GP") {
        return None;
    }
    let flags = blob[3];
    if flags & 0b1_0000 != 0 {
        return None; // empty
    }
    let little = flags & 1 == 1;
    let number = |at: usize| -> Option<f64> {
        let bytes: [u8; 8] = blob.get(at..at + 8)?.try_into().ok()?;
        Some(if little {
            f64::from_le_bytes(bytes)
        } else {
            f64::from_be_bytes(bytes)
        })
    };
    let envelope = (flags >> 1) & 0b111;
    if envelope != 0 {
        return Some([number(8)?, number(16)?, number(24)?, number(32)?]);
    }
    // A 2D point: WKB byte order, type 1, x, y.
    let wkb = blob.get(8..)?;
    if wkb.len() == 21
        && let Some((1, x, y)) = crate::gis::wkb::wkb_point(wkb)
    {
        return (x.is_finite() && y.is_finite()).then_some([x, x, y, y]);
    }
    crate::gis::wkb::check_gpkg(blob).ok()?;
    let rect = crate::gis::wkb::to_geo(blob).ok()?.bounding_rect()?;
    Some([rect.min().x, rect.max().x, rect.min().y, rect.max().y])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trees of one leaf, two leaves, and three levels: SQLite's own check accepts each, and
    /// every box query finds exactly the points a scan finds.
    #[test]
    fn packed_trees_pass_rtreecheck_and_answer_like_a_scan() {
        for n in [0_i64, 1, 51, 52, 3000] {
            let c = Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
            c.execute_batch("CREATE VIRTUAL TABLE rt USING rtree(id, minx, maxx, miny, maxy)")
                .unwrap_or_else(|e| panic!("{e}"));
            let point = |i: i64| {
                (
                    (i % 60) as f64 * 0.37 - 11.1,
                    (i / 60) as f64 * 0.29 + 0.123_456_789,
                )
            };
            pack(
                &c,
                "rt",
                (1..=n).map(|i| {
                    let (x, y) = point(i);
                    Ok((i, [x, x, y, y]))
                }),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let check: String = c
                .query_row("SELECT rtreecheck('rt')", [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(check, "ok", "{n} entries");
            for (x0, x1, y0, y1) in [
                (-20.0, 20.0, -1.0, 99.0),
                (-5.0, 1.0, 2.0, 4.0),
                (0.0, 0.0, 0.0, 0.0),
            ] {
                let found: i64 = c
                    .query_row(
                        "SELECT count(*) FROM rt WHERE minx <= ?2 AND maxx >= ?1 AND miny <= ?4 AND maxy >= ?3",
                        [x0, x1, y0, y1],
                        |r| r.get(0),
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                let expected = (1..=n)
                    .filter(|i| {
                        let (x, y) = point(*i);
                        x >= x0 && x <= x1 && y >= y0 && y <= y1
                    })
                    .count() as i64;
                assert_eq!(found, expected, "{n} entries, box {x0} {x1} {y0} {y1}");
            }
            // The module still edits the packed tree.
            c.execute("INSERT INTO rt VALUES (?1, 1, 2, 3, 4)", [n + 1])
                .unwrap_or_else(|e| panic!("{e}"));
            c.execute("DELETE FROM rt WHERE id = 1", [])
                .unwrap_or_else(|e| panic!("{e}"));
            let check: String = c
                .query_row("SELECT rtreecheck('rt')", [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(check, "ok", "{n} entries after edits");
        }
    }

    #[test]
    fn boxes_round_outwards() {
        let x = 0.1_f64;
        assert!(f64::from(down(x)) <= x && f64::from(up(x)) >= x);
        assert!(f64::from(down(-x)) <= -x && f64::from(up(-x)) >= -x);
        assert_eq!(down(0.5), 0.5);
    }
}
