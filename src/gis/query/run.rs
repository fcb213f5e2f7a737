//! Running a layer query on a dataset and streaming its features as GeoJSON: shared by
//! `/ogr2ogr` and OGC API Features.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::types::ValueRef;

use crate::gis::cache::features::Cached;
use crate::gis::query::filter::INTERSECTS_FUNCTION;
use crate::gis::query::geojson::{
    FeatureWriter, Geometry, gpkg_envelope, is_empty_gpkg, is_gpkg_geometry, key,
};
use crate::gis::query::limits::Chunk;
use crate::gis::query::limits::{Answer, AnswerMemory, QueryError, Sink, Watch, answer_channel};
use crate::gis::query::plan::{BoxMatch, Count, Plan, Tested};
use crate::gis::store::{Catalog, Dataset};

/// The box `[xmin, ymin, xmax, ymax]` as a geometry.
pub fn rect([xmin, ymin, xmax, ymax]: [f64; 4]) -> geo::Rect<f64> {
    geo::Rect::new(
        geo::coord! { x: xmin, y: ymin },
        geo::coord! { x: xmax, y: ymax },
    )
}

/// Douglas-Peucker simplification of lines and polygons; points are left as they are.
fn simplify(geometry: geo::Geometry<f64>, tolerance: f64) -> geo::Geometry<f64> {
    use geo::{Geometry, Simplify};
    match geometry {
        Geometry::LineString(g) => Geometry::LineString(g.simplify(tolerance)),
        Geometry::MultiLineString(g) => Geometry::MultiLineString(g.simplify(tolerance)),
        Geometry::Polygon(g) => Geometry::Polygon(g.simplify(tolerance)),
        Geometry::MultiPolygon(g) => Geometry::MultiPolygon(g.simplify(tolerance)),
        other => other,
    }
}

/// Decodes, filters, simplifies and reprojects a geometry when the plan asks for it, in that
/// order (the filter box and tolerance are in the source system, as GDAL has them).
/// `Err(())` skips the feature: outside the box, or not representable in WGS 84.
fn computed(plan: &Plan, blob: Option<&[u8]>) -> Result<Option<geo::Geometry<f64>>, ()> {
    use geo::Intersects;
    if plan.exact.is_none() && plan.simplify.is_none() && plan.reproject.is_none() {
        return Ok(None);
    }
    // No geometry, or an empty one, is written as null and meets no box.
    let Some(blob) = blob.filter(|b| !is_empty_gpkg(b)) else {
        return if plan.exact.is_some() {
            Err(())
        } else {
            Ok(None)
        };
    };
    // The bounds decide most features against the box without decoding them.
    let inside = match plan.exact {
        Some(rect) => gpkg_envelope(blob).and_then(|e| by_bounds(e, rect)),
        None => Some(true),
    };
    match inside {
        Some(false) => return Err(()),
        Some(true) if plan.simplify.is_none() && plan.reproject.is_none() => return Ok(None),
        _ => {}
    }
    let Ok(mut geometry) = crate::gis::wkb::to_geo(blob) else {
        tracing::warn!("skipping a feature whose geometry cannot be decoded");
        return Err(());
    };
    if let (None, Some(rect)) = (inside, plan.exact)
        && !geometry.intersects(&rect)
    {
        return Err(());
    }
    if let Some(tolerance) = plan.simplify {
        geometry = simplify(geometry, tolerance);
    }
    if let Some(reproject) = &plan.reproject {
        geometry = reproject
            .to_wgs84(&geometry)
            .map_err(|e| tracing::warn!(error = %e, "skipping a feature"))?;
    }
    Ok(Some(geometry))
}

fn overlaps(a: [f64; 4], b: [f64; 4]) -> bool {
    a[0] <= b[2] && a[2] >= b[0] && a[1] <= b[3] && a[3] >= b[1]
}

/// Whether a geometry with bounds `envelope` intersects `rect`, when its bounds alone tell:
/// they miss the box, lie inside it, or are a point's.
fn by_bounds(envelope: [f64; 4], rect: geo::Rect<f64>) -> Option<bool> {
    let area = [rect.min().x, rect.min().y, rect.max().x, rect.max().y];
    if !overlaps(envelope, area) {
        Some(false)
    } else if contains(area, envelope) || (envelope[0] == envelope[2] && envelope[1] == envelope[3])
    {
        Some(true)
    } else {
        None
    }
}

/// Whether box `outer` holds all of box `inner` (`[xmin, ymin, xmax, ymax]`).
pub fn contains(outer: [f64; 4], inner: [f64; 4]) -> bool {
    outer[0] <= inner[0] && outer[1] <= inner[1] && outer[2] >= inner[2] && outer[3] >= inner[3]
}

/// Prepares the plan, then streams the features into `sink`.
fn run(dataset: &Dataset, mut plan: Plan, limit: Option<u64>, sink: &mut Sink) {
    let connection = match dataset.connection() {
        Ok(c) => c,
        Err(e) => return sink.fail(QueryError::Dataset(e)),
    };
    let intersects = match Intersects::install(&connection, &plan.tested, sink.watch()) {
        Ok(intersects) => intersects,
        Err(e) => return sink.fail(sink.watch().error(&e)),
    };
    match sink.watch().clone().install(&connection) {
        Ok(_watching) => match copies(&connection, &plan, limit) {
            Some(mut writer) => {
                if send_chunk(&mut writer, sink) {
                    finish(writer, &mut plan, sink);
                }
            }
            None => stream(&connection, &mut plan, limit, sink),
        },
        Err(e) => sink.fail(e),
    }
    drop(intersects);
}

/// [`INTERSECTS_FUNCTION`] registered on a connection for one statement's geometries, and
/// removed when this is dropped, so that a pooled connection never keeps another query's.
struct Intersects<'c>(Option<&'c rusqlite::Connection>);

impl<'c> Intersects<'c> {
    /// Registers the function for `tested` (nothing when there are none). Each call first
    /// asks `watch` whether the query must stop: a geometry test runs inside one SQLite step,
    /// where the progress handler does not see it.
    fn install(
        connection: &'c rusqlite::Connection,
        tested: &Tested,
        watch: &Arc<Watch>,
    ) -> rusqlite::Result<Self> {
        use rusqlite::functions::FunctionFlags;
        if tested.is_empty() {
            return Ok(Self(None));
        }
        let shapes: Vec<(geo::Geometry<f64>, Option<geo::Rect<f64>>)> = tested
            .iter()
            .map(|s| (s.clone(), geo::BoundingRect::bounding_rect(s)))
            .collect();
        let watch = watch.clone();
        connection.create_scalar_function(
            INTERSECTS_FUNCTION,
            2,
            FunctionFlags::SQLITE_UTF8
                | FunctionFlags::SQLITE_DETERMINISTIC
                | FunctionFlags::SQLITE_DIRECTONLY,
            move |context| {
                let interrupted = || {
                    rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
                        None,
                    )
                };
                if watch.must_stop() {
                    return Err(interrupted());
                }
                let shape = context
                    .get::<i64>(1)
                    .ok()
                    .and_then(|k| usize::try_from(k).ok())
                    .and_then(|k| shapes.get(k));
                // No geometry (or one that cannot be read) is unknown, as SQL has NULL: `NOT`
                // does not turn it into a match.
                match (context.get_raw(0), shape) {
                    (ValueRef::Blob(blob), Some((shape, bounds))) => {
                        blob_meets_shape(blob, shape, *bounds, &watch)
                            .map_err(|Stopped| interrupted())
                    }
                    _ => Ok(None),
                }
            },
        )?;
        Ok(Self(Some(connection)))
    }
}

impl Drop for Intersects<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.0 {
            let _ = connection.remove_function(INTERSECTS_FUNCTION, 2);
        }
    }
}

/// Whether a GeoPackage geometry blob meets `shape` (whose bounds are `bounds`): bounds
/// first, then the geometry; `None` for an empty or malformed blob.
fn blob_meets_shape(
    blob: &[u8],
    shape: &geo::Geometry<f64>,
    bounds: Option<geo::Rect<f64>>,
    watch: &Watch,
) -> Result<Option<bool>, Stopped> {
    if is_empty_gpkg(blob) || crate::gis::wkb::check_gpkg(blob).is_err() {
        return Ok(None);
    }
    if let (Some(envelope), Some(bounds)) = (gpkg_envelope(blob), bounds)
        && by_bounds(envelope, bounds) == Some(false)
    {
        return Ok(Some(false));
    }
    let Ok(geometry) = crate::gis::wkb::to_geo(blob) else {
        return Ok(None);
    };
    meets(&geometry, shape, watch).map(Some)
}

/// The geometry type names a GeoPackage declares geometry columns with.
const GEOMETRY_TYPES: &[&str] = &[
    "GEOMETRY",
    "POINT",
    "LINESTRING",
    "POLYGON",
    "MULTIPOINT",
    "MULTILINESTRING",
    "MULTIPOLYGON",
    "GEOMETRYCOLLECTION",
];

/// Answers from copies are built whole in memory: boxes with more candidates are streamed
/// from rows.
const MAX_COPIED: usize = 20_000;

/// The collection for a reusable plan, written from copies in the R*Tree's order, when every
/// candidate from the R*Tree has a rendered copy (and a geometry, when its bounds alone cannot
/// tell whether it is in the box).
fn copies(
    connection: &rusqlite::Connection,
    plan: &Plan,
    limit: Option<u64>,
) -> Option<FeatureWriter> {
    use geo::Intersects;
    let (reuse, rect) = (plan.reuse.as_ref()?, plan.exact?);
    let mut statement = connection.prepare_cached(&reuse.candidates).ok()?;
    let fids = statement
        .query_map(rusqlite::params_from_iter(plan.params.iter()), |r| {
            r.get::<_, i64>(0)
        })
        .ok()?
        .take(MAX_COPIED + 1)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    if fids.len() > MAX_COPIED {
        return None;
    }
    let write = |cached: &[&Cached]| {
        let mut writer = FeatureWriter::new(&plan.name);
        for copy in cached {
            if limit.is_some_and(|l| writer.count() >= l) {
                break;
            }
            let Some(envelope) = copy.envelope else {
                continue;
            };
            let inside = match by_bounds(envelope, rect) {
                Some(inside) => inside,
                None => crate::gis::wkb::to_geo(copy.geometry.as_deref()?)
                    .ok()?
                    .intersects(&rect),
            };
            if inside {
                writer.raw(copy.json.as_deref()?);
            }
        }
        Some(writer)
    };
    reuse.cache.read_all(reuse.variant, &fids, write).flatten()
}

/// Hands on a full chunk; false when the client went away.
fn send_chunk(writer: &mut FeatureWriter, sink: &mut Sink) -> bool {
    match writer.take_chunk() {
        Some(chunk) => sink.send(chunk),
        None => true,
    }
}

/// Closes the collection with the plan's members and sends the rest.
fn finish(writer: FeatureWriter, plan: &mut Plan, sink: &mut Sink) {
    let mut tail = String::new();
    if let Some(members) = plan.members.take() {
        for (name, value) in members(writer.count()) {
            tail.push(',');
            tail.push_str(&serde_json::Value::from(name).to_string());
            tail.push(':');
            tail.push_str(&value.to_string());
        }
    }
    sink.send(writer.finish(&tail));
}

/// Bytes of values read from a row, against the query's budget. Reading a value can make
/// SQLite allocate it (a `zeroblob`), so nothing more is read once the budget is spent.
struct RowBudget {
    budget: usize,
    spent: std::cell::Cell<usize>,
}

impl RowBudget {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            spent: std::cell::Cell::new(0),
        }
    }

    /// The value of column `i`, unless the row has already spent its budget.
    fn read<'r>(&self, row: &'r rusqlite::Row<'_>, i: usize) -> Option<ValueRef<'r>> {
        if self.over() {
            return None;
        }
        let value = row.get_ref(i).ok()?;
        let bytes = match value {
            ValueRef::Text(b) | ValueRef::Blob(b) => b.len(),
            _ => 8,
        };
        self.spent.set(self.spent.get().saturating_add(bytes));
        Some(value)
    }

    fn over(&self) -> bool {
        self.spent.get() > self.budget
    }
}

/// Runs the plan on `connection`, streaming features into `sink`.
fn stream(connection: &rusqlite::Connection, plan: &mut Plan, limit: Option<u64>, sink: &mut Sink) {
    let watch = sink.watch().clone();
    // The few statements this server writes for a layer whatever the request (a box, or the
    // whole layer, with every field) are kept prepared on the connection for the next query:
    // nothing a client writes is kept, so clients cannot fill the connection's statement
    // cache (each statement costs memory in proportion to its columns).
    let (mut cached, mut fresh);
    let statement: &mut rusqlite::Statement<'_> = if plan.reusable_sql && plan.tested.is_empty() {
        match connection.prepare_cached(&plan.sql) {
            Ok(s) => {
                cached = s;
                &mut cached
            }
            Err(e) => return sink.fail(watch.error(&e)),
        }
    } else {
        match connection.prepare(&plan.sql) {
            Ok(s) => {
                fresh = s;
                &mut fresh
            }
            Err(e) => return sink.fail(watch.error(&e)),
        }
    };
    // Each column's name as written before its value, and whether it is declared BOOLEAN.
    let columns: Vec<(Vec<u8>, bool)> = statement
        .columns()
        .iter()
        .map(|c| {
            let boolean = c
                .decl_type()
                .is_some_and(|t| t.eq_ignore_ascii_case("BOOLEAN"));
            (key(c.name()), boolean)
        })
        .collect();
    // A column declared with a GeoPackage geometry type is the geometry, even in rows where
    // it is NULL; in other statements (expressions in a -sql) it is found row by row.
    let declared_geometry = statement.columns().iter().position(|c| {
        c.decl_type()
            .is_some_and(|t| GEOMETRY_TYPES.iter().any(|g| t.eq_ignore_ascii_case(g)))
    });
    let mut rows = match statement.query(rusqlite::params_from_iter(plan.params.iter())) {
        Ok(rows) => rows,
        Err(e) => return sink.fail(watch.error(&e)),
    };
    let mut writer = FeatureWriter::new(&plan.name);
    let id = |row: &rusqlite::Row<'_>| {
        if plan.emit_id {
            row.get::<_, i64>(0).ok()
        } else {
            None
        }
    };
    let skip = usize::from(plan.has_fid);
    let budget = watch.memory();
    let mut skipped = Skipped::default();
    // Copies of what this query reads, for the next box over the same features.
    let copying = plan.reuse.as_ref().filter(|r| r.cache.copying());
    let mut copies = copying.map(|_| Vec::new());
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => return sink.fail(watch.error(&e)),
        };
        // The progress handler sees SQLite's steps, every few thousand of them; a row whose
        // values are costly to make (a client's `-sql`) can take seconds within that many.
        if watch.must_stop() {
            return sink.fail(watch.stopped_error());
        }
        if limit.is_some_and(|l| writer.count() >= l) {
            break;
        }
        let values = RowBudget::new(budget);
        // The geometry is the first GeoPackage geometry blob among the columns.
        let mut geometry_index = declared_geometry.filter(|i| *i >= skip);
        for index in (skip..columns.len()).filter(|_| geometry_index.is_none()) {
            if let Some(ValueRef::Blob(b)) = values.read(row, index)
                && is_gpkg_geometry(b)
            {
                geometry_index = Some(index);
                break;
            }
        }
        if values.over() {
            return sink.fail(QueryError::TooLarge(budget));
        }
        let geometry = geometry_index
            .and_then(|i| values.read(row, i))
            .and_then(|v| v.as_blob().ok())
            .filter(|b| is_gpkg_geometry(b));
        // Checked before anything decodes it: nesting and counts a hostile blob could use to
        // exhaust the stack or memory.
        if let Some(blob) = geometry
            && let Err(reason) = crate::gis::wkb::check_gpkg(blob)
        {
            skipped.note(reason);
            continue;
        }
        if let Some(bounds) = plan.envelope_filter
            && geometry
                .and_then(gpkg_envelope)
                .is_some_and(|e| !overlaps(e, bounds))
        {
            continue;
        }
        let copy = |json: Option<Bytes>| {
            let envelope = geometry.and_then(gpkg_envelope);
            Cached {
                json,
                geometry: geometry
                    .filter(|_| envelope.is_some_and(|e| e[0] != e[2] || e[1] != e[3]))
                    .map(Bytes::copy_from_slice),
                envelope,
            }
        };
        let fid = copying.and_then(|r| {
            let fid = row.get::<_, i64>(0).ok()?;
            r.cache.admit(r.variant, fid).then_some(fid)
        });
        let Ok(decoded) = computed(plan, geometry) else {
            if let (Some(copies), Some(fid)) = (copies.as_mut(), fid) {
                copies.push((fid, copy(None)));
            }
            continue;
        };
        let geometry = match (&decoded, geometry) {
            (Some(g), _) => Geometry::Geo(g),
            (None, Some(blob)) => Geometry::Gpkg(blob),
            (None, None) => Geometry::None,
        };
        let properties = (skip..columns.len())
            .filter(|i| Some(*i) != geometry_index)
            .filter_map(|i| {
                let (key, boolean) = &columns[i];
                Some((key.as_slice(), values.read(row, i)?, *boolean))
            });
        if let Err(e) = writer.feature(id(row), properties, geometry) {
            skipped.note_error(&e);
            continue;
        }
        if values.over() || writer.pending() > budget {
            return sink.fail(QueryError::TooLarge(budget));
        }
        if let (Some(copies), Some(fid)) = (copies.as_mut(), fid) {
            copies.push((fid, copy(Some(Bytes::copy_from_slice(writer.last())))));
        }
        if !send_chunk(&mut writer, sink) {
            return; // the client went away
        }
    }
    if let (Some(reuse), Some(copies)) = (copying, copies) {
        reuse.cache.put_all(reuse.variant, copies);
    }
    skipped.log(&plan.name);
    finish(writer, plan, sink);
}

/// Features left out of an answer because their geometry could not be written, reported once
/// per query rather than once per feature.
#[derive(Default)]
struct Skipped {
    count: u64,
    first: Option<String>,
}

impl Skipped {
    fn note(&mut self, reason: &str) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(reason.to_owned());
        }
    }

    fn note_error(&mut self, error: &geozero::error::GeozeroError) {
        if self.first.is_none() {
            self.first = Some(error.to_string());
        }
        self.count += 1;
    }

    fn log(&self, collection: &str) {
        if let Some(first) = &self.first {
            tracing::warn!(collection, skipped = self.count, first = %first, "features left out: their geometry is malformed");
        }
    }
}

/// The current version of a dataset, looked up off the async threads. Not on a query thread:
/// for an open dataset this is one `stat`, and opening one reads only its schema.
///
/// # Errors
/// When there is no such file or it is not a usable database.
pub async fn lookup(
    catalog: &Arc<Catalog>,
    path: &Path,
    shown: &str,
) -> Result<Arc<Dataset>, QueryError> {
    let (catalog, path, shown) = (catalog.clone(), path.to_owned(), shown.to_owned());
    tokio::task::spawn_blocking(move || catalog.datasets.get(&path, &shown))
        .await
        .map_err(|_| QueryError::Internal)?
        .map_err(QueryError::Dataset)
}

/// Starts `plan` on `dataset` on a query thread and returns the GeoJSON stream once its first
/// chunk is ready (so that a bad query, or one that fails on its first rows, is still an error
/// status and not a broken body).
///
/// # Errors
/// Why the query could not start, or failed before its first chunk.
pub async fn execute(
    catalog: &Arc<Catalog>,
    dataset: Arc<Dataset>,
    plan: Plan,
    limit: Option<u64>,
) -> Result<impl futures::Stream<Item = Chunk> + Send + Sync + Unpin + 'static, QueryError> {
    let found = Found {
        dataset,
        plan,
        limit,
        with: (),
    };
    match find_and_execute(catalog, move || Ok::<_, std::convert::Infallible>(found)).await {
        Ok((answer, ())) => Ok(answer),
        Err(NoAnswer::Query(error)) => Err(error),
        Err(NoAnswer::Before(never)) => match never {},
    }
}

/// A query found on a query thread: what to run, and what its finder hands back with the
/// answer.
pub struct Found<T> {
    /// The dataset the plan reads.
    pub dataset: Arc<Dataset>,
    /// The plan.
    pub plan: Plan,
    /// `-limit`.
    pub limit: Option<u64>,
    /// Handed back with the answer.
    pub with: T,
}

/// Why [`find_and_execute`] gave no answer.
#[derive(Debug)]
pub enum NoAnswer<E> {
    /// The finder answered instead of finding a query (an error, or an answer it had).
    Before(E),
    /// The query could not start, or failed before its first chunk.
    Query(QueryError),
}

/// Runs `find` on a query thread and, when it finds a query, runs that query on the same thread
/// at once: looking a dataset up, planning and running cost one trip to a query thread, not
/// two. Returns the GeoJSON stream once its first chunk is ready, as [`execute`] does, with
/// what `find` handed back.
///
/// # Errors
/// What `find` answered instead of a query, or why the query could not start or failed before
/// its first chunk.
pub async fn find_and_execute<T: Send + 'static, E: Send + 'static>(
    catalog: &Arc<Catalog>,
    find: impl FnOnce() -> Result<Found<T>, E> + Send + 'static,
) -> Result<(Answer, T), NoAnswer<E>> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (found_tx, mut found_rx) = tokio::sync::oneshot::channel();
    let memory = AnswerMemory::new(catalog.queries.limits, catalog.queries.answers.clone());
    let (mut sink, answer) = answer_channel(
        ready_tx,
        catalog.queries.limits,
        memory,
        catalog.queries.stop.clone(),
    );
    // What `find` found is sent before the query starts, and what it answered instead before
    // the sink is dropped: either is there when the first chunk (or the sink's end) arrives.
    // Dropped while waiting for a thread, the request simply leaves the queue; dropped later,
    // the query's watch sees the answer's receiver gone and interrupts it.
    let ticket = catalog
        .queries
        .start(move || match find() {
            Ok(Found {
                dataset,
                plan,
                limit,
                with,
            }) => {
                let _ = found_tx.send(Ok(with));
                run(&dataset, plan, limit, &mut sink);
            }
            Err(instead) => {
                let _ = found_tx.send(Err(instead));
            }
        })
        .map_err(|busy| NoAnswer::Query(busy.into()))?;
    let ready = catalog
        .queries
        .wait(ticket, ready_rx)
        .await
        .map_err(|busy| NoAnswer::Query(busy.into()))?;
    match (ready, found_rx.try_recv()) {
        (Ok(Ok(())), Ok(Ok(with))) => Ok((answer, with)),
        (Ok(Err(error)), _) => Err(NoAnswer::Query(error)),
        (Err(_), Ok(Err(instead))) => Err(NoAnswer::Before(instead)),
        _ => Err(NoAnswer::Query(QueryError::Internal)),
    }
}

/// Runs `work` with a connection of `dataset` on a query thread, under the query limits.
///
/// # Errors
/// Why it could not run, or what it returned.
pub async fn with_connection<T: Send + 'static>(
    catalog: &Arc<Catalog>,
    dataset: Arc<Dataset>,
    work: impl FnOnce(&rusqlite::Connection, &Arc<Watch>) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, QueryError> {
    let watch = Watch::new(catalog.queries.limits, None, catalog.queries.stop.clone());
    catalog
        .queries
        .run(move || {
            let connection = dataset.connection()?;
            watch
                .install(&connection)
                .and_then(|_watching| work(&connection, &watch))
        })
        .await?
}

/// Runs a `SELECT count(*)` statement under the query limits.
///
/// # Errors
/// Why it could not run or failed.
pub async fn count(
    catalog: &Arc<Catalog>,
    dataset: Arc<Dataset>,
    count: Count,
) -> Result<u64, QueryError> {
    with_connection(catalog, dataset, move |connection, watch| {
        let _intersects =
            Intersects::install(connection, &count.tested, watch).map_err(|e| watch.error(&e))?;
        connection
            .query_row(
                &count.sql,
                rusqlite::params_from_iter(count.params.iter()),
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| watch.error(&e))
    })
    .await
}

/// Feature vertices times shape vertices tested in one call; past this a feature is tested
/// segment by segment, with the query's watch asked between batches.
const DIRECT_TEST: usize = 1 << 22;
/// Segments tested between two looks at the watch.
const SEGMENTS_BETWEEN_CHECKS: usize = 4096;

/// Why a geometry test stopped before its answer: the query must stop.
struct Stopped;

/// Whether `feature` meets `shape`. A costly test (a feature of millions of vertices) goes
/// segment by segment so that the query's deadline, client and stop are seen during it.
fn meets(
    feature: &geo::Geometry<f64>,
    shape: &geo::Geometry<f64>,
    watch: &Watch,
) -> Result<bool, Stopped> {
    use geo::{CoordsIter, Geometry, Intersects, LinesIter};
    let cost = feature
        .coords_count()
        .saturating_mul(shape.coords_count().max(1));
    if cost <= DIRECT_TEST {
        return Ok(feature.intersects(shape));
    }
    let check = |i: usize| {
        if i.is_multiple_of(SEGMENTS_BETWEEN_CHECKS) && watch.must_stop() {
            Err(Stopped)
        } else {
            Ok(())
        }
    };
    let segments: Box<dyn Iterator<Item = geo::Line<f64>> + '_> = match feature {
        Geometry::Point(_) | Geometry::MultiPoint(_) => {
            for (i, coord) in feature.coords_iter().enumerate() {
                check(i)?;
                if shape.intersects(&coord) {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        Geometry::GeometryCollection(parts) => {
            for part in parts {
                if meets(part, shape, watch)? {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        Geometry::Line(g) => Box::new(g.lines_iter()),
        Geometry::LineString(g) => Box::new(g.lines_iter()),
        Geometry::MultiLineString(g) => Box::new(g.lines_iter()),
        Geometry::Polygon(g) => Box::new(g.lines_iter()),
        Geometry::MultiPolygon(g) => Box::new(g.lines_iter()),
        Geometry::Rect(g) => Box::new(g.lines_iter()),
        Geometry::Triangle(g) => Box::new(g.lines_iter()),
    };
    // A segment of the feature (a polygon's boundary) meets the shape...
    for (i, segment) in segments.enumerate() {
        check(i)?;
        if shape.intersects(&segment) {
            return Ok(true);
        }
    }
    // ...or the shape lies wholly inside the feature, away from its boundary.
    Ok(shape
        .coords_iter()
        .next()
        .is_some_and(|coord| feature.intersects(&coord)))
}

impl BoxMatch {
    /// Whether a geometry blob meets the boxes and shapes; `None` for a blob that fails the
    /// structural check. `Err` when the query must stop.
    fn blob_meets(&self, blob: &[u8], watch: &Watch) -> Result<Option<bool>, Stopped> {
        use geo::Intersects;
        if is_empty_gpkg(blob) || crate::gis::wkb::check_gpkg(blob).is_err() {
            return Ok(None);
        }
        if let Some(decided) = gpkg_envelope(blob).and_then(|e| self.by_bounds(e)) {
            return Ok(Some(decided));
        }
        let Ok(geometry) = crate::gis::wkb::to_geo(blob) else {
            return Ok(None);
        };
        if !(self.rects.is_empty() || self.rects.iter().any(|r| geometry.intersects(r))) {
            return Ok(Some(false));
        }
        for shape in &self.shapes {
            if !meets(&geometry, shape, watch)? {
                return Ok(Some(false));
            }
        }
        Ok(Some(true))
    }

    /// What bounds alone tell: whether they meet any of the boxes, and that they miss a shape's
    /// bounds (whether they meet a shape takes the geometry).
    fn by_bounds(&self, envelope: [f64; 4]) -> Option<bool> {
        let in_boxes = if self.rects.is_empty() {
            Some(true)
        } else {
            let mut undecided = false;
            let mut met = false;
            for rect in &self.rects {
                match by_bounds(envelope, *rect) {
                    Some(true) => met = true,
                    Some(false) => {}
                    None => undecided = true,
                }
            }
            if met {
                Some(true)
            } else {
                (!undecided).then_some(false)
            }
        };
        let misses_a_shape = self
            .shape_bounds
            .iter()
            .any(|b| b.is_none_or(|r| by_bounds(envelope, r) == Some(false)));
        match in_boxes {
            Some(false) => Some(false),
            _ if misses_a_shape => Some(false),
            Some(true) if self.shapes.is_empty() => Some(true),
            _ => None,
        }
    }
}

/// Counts the features matching `matching` and returns the fids of those from `offset`, at
/// most `limit` of them, in fid order.
///
/// # Errors
/// Why the query could not run, or failed (deadline, interruption).
pub async fn box_page(
    catalog: &Arc<Catalog>,
    dataset: Arc<Dataset>,
    matching: BoxMatch,
    offset: u64,
    limit: u64,
) -> Result<(u64, Vec<i64>), QueryError> {
    with_connection(catalog, dataset, move |connection, watch| {
        let _intersects = Intersects::install(connection, &matching.tested, watch)
            .map_err(|e| watch.error(&e))?;
        let mut matched = 0u64;
        let mut page = Vec::new();
        let mut take = |fid: i64| {
            if matched >= offset && (page.len() as u64) < limit {
                page.push(fid);
            }
            matched += 1;
        };
        let mut statement = connection
            .prepare(&matching.candidates)
            .map_err(|e| watch.error(&e))?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(matching.params.iter()))
            .map_err(|e| watch.error(&e))?;
        let mut geometry = if matching.from_index {
            Some(
                connection
                    .prepare(&matching.geometry)
                    .map_err(|e| watch.error(&e))?,
            )
        } else {
            None
        };
        while let Some(row) = rows.next().map_err(|e| watch.error(&e))? {
            // Testing a geometry is work between SQLite's steps, which the progress handler
            // does not see.
            if watch.must_stop() {
                return Err(watch.stopped_error());
            }
            let fid: i64 = row.get(0).map_err(|e| watch.error(&e))?;
            let meets = match geometry.as_mut() {
                Some(lookup) => {
                    let bounds: rusqlite::Result<[f64; 4]> =
                        (|| Ok([row.get(1)?, row.get(3)?, row.get(2)?, row.get(4)?]))();
                    let bounds = bounds.map_err(|e| watch.error(&e))?;
                    match matching.by_bounds(bounds) {
                        Some(decided) => decided,
                        None => {
                            let blob: Option<Vec<u8>> = lookup
                                .query_row([fid], |r| r.get(0))
                                .map_err(|e| watch.error(&e))?;
                            match blob {
                                Some(b) => matching
                                    .blob_meets(&b, watch)
                                    .map_err(|Stopped| watch.stopped_error())?
                                    .unwrap_or(false),
                                None => false,
                            }
                        }
                    }
                }
                None => match row.get_ref(1).map_err(|e| watch.error(&e))? {
                    ValueRef::Blob(blob) => matching
                        .blob_meets(blob, watch)
                        .map_err(|Stopped| watch.stopped_error())?
                        .unwrap_or(false),
                    _ => false,
                },
            };
            if meets {
                take(fid);
            }
        }
        Ok((matched, page))
    })
    .await
}

#[cfg(test)]
mod tests {
    use geo::{Coord, Geometry, Intersects, LineString, MultiPoint, Point, Polygon};

    use super::{DIRECT_TEST, Stopped, meets};
    use crate::gis::query::limits::{QueryLimits, Watch};

    /// A ring of `n` vertices around (`cx`, `cy`).
    fn ring(n: usize, cx: f64, cy: f64, r: f64) -> LineString<f64> {
        let mut points: Vec<Coord<f64>> = (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                Coord {
                    x: cx + r * a.cos(),
                    y: cy + r * a.sin(),
                }
            })
            .collect();
        points.push(points[0]);
        LineString(points)
    }

    /// A zig-zag line of `n` vertices from (`x0`, `y`) to (`x1`, `y`).
    fn zigzag(n: usize, x0: f64, x1: f64, y: f64) -> Geometry<f64> {
        Geometry::LineString(LineString(
            (0..n)
                .map(|i| Coord {
                    x: x0 + (x1 - x0) * i as f64 / (n - 1) as f64,
                    y: y + if i % 2 == 0 { 0.01 } else { -0.01 },
                })
                .collect(),
        ))
    }

    /// The segment-by-segment test of a huge feature gives the same answers as the direct
    /// one, and stops when the query must.
    #[test]
    fn huge_features_are_tested_piecewise_with_the_same_answers() {
        // A deadline far off: the direct tests below take seconds in a debug build.
        let limits = QueryLimits {
            timeout: std::time::Duration::from_secs(24 * 3600),
            ..QueryLimits::default()
        };
        let watch = Watch::new(limits, None, Default::default());
        // A polygon of 20,000 vertices with a hole, and points of the same count.
        let polygon = Geometry::Polygon(Polygon::new(
            ring(20_000, 0.0, 0.0, 10.0),
            vec![ring(20_000, 0.0, 0.0, 3.0)],
        ));
        let points = Geometry::MultiPoint(MultiPoint(
            (0..20_000)
                .map(|i| Point::new(i as f64 * 0.001, 50.0))
                .collect(),
        ));
        let shapes = [
            ("crossing the boundary", zigzag(400, -20.0, 0.0, 5.0)),
            ("inside, away from the boundary", zigzag(400, 4.0, 8.0, 0.0)),
            ("in the hole", zigzag(400, -1.0, 1.0, 0.0)),
            ("outside", zigzag(400, 20.0, 30.0, 0.0)),
            (
                "around it all",
                Geometry::Polygon(Polygon::new(ring(400, 0.0, 0.0, 50.0), vec![])),
            ),
            ("through the points", zigzag(400, 5.0, 15.0, 50.0)),
        ];
        for feature in [&polygon, &points] {
            for (what, shape) in &shapes {
                use geo::CoordsIter;
                assert!(feature.coords_count() * shape.coords_count() > DIRECT_TEST);
                let piecewise = meets(feature, shape, &watch).unwrap_or_else(|Stopped| panic!());
                assert_eq!(piecewise, feature.intersects(shape), "{what}");
            }
        }
        // The answers are not all the same.
        assert!(meets(&polygon, &shapes[1].1, &watch).is_ok_and(|m| m));
        assert!(meets(&polygon, &shapes[2].1, &watch).is_ok_and(|m| !m));
        // A query that must stop stops the test.
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = Watch::new(QueryLimits::default(), None, stop.clone());
        stop.cancel();
        assert!(meets(&polygon, &shapes[3].1, &stopped).is_err());
    }
}
