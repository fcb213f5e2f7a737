//! Query plans: the one place where what an API asks of a layer becomes a statement. The APIs
//! describe what they want (a [`Selection`], [`Condition`]s, a page, boxes); the statement is
//! written here for the layer's [`Storage`], so that a layer stored another way (a database
//! table) fits behind the same interface without the APIs changing.

use std::sync::Arc;

use rusqlite::types::Value as SqlValue;

use super::reproject::{ReprojectError, Reprojector};
use super::run::{contains, rect};
use crate::gis::cache::features::FeatureCache;
use crate::gis::quote;
use crate::gis::store::{Dataset, Layer, Storage};

/// Members written after the features of a collection (`links`, `numberMatched`…), given how
/// many features were written.
pub type Members = Box<dyn FnOnce(u64) -> Vec<(&'static str, serde_json::Value)> + Send>;

/// The statement for a layer query, its parameters, and how to read and write each row.
pub struct Plan {
    /// The SELECT.
    pub sql: String,
    /// Its positional parameters.
    pub params: Vec<SqlValue>,
    /// Whether column 0 is the fid (never a property).
    pub has_fid: bool,
    /// Whether each feature gets `"id"` from the fid.
    pub emit_id: bool,
    /// Envelope filter done in Rust when there is no R*Tree.
    pub envelope_filter: Option<[f64; 4]>,
    /// Geometries must intersect this box, as GDAL tests it (not only their bounds).
    pub exact: Option<geo::Rect<f64>>,
    /// Douglas-Peucker tolerance, in the source system's units.
    pub simplify: Option<f64>,
    /// Transformation to WGS 84 when the layer is stored in another system.
    pub reproject: Option<Arc<Reprojector>>,
    /// The collection's name.
    pub name: String,
    /// Members written after the features.
    pub members: Option<Members>,
    /// Answering from rendered copies when every candidate has one.
    pub reuse: Option<Reuse>,
    /// Geometries its filter tests.
    pub tested: Tested,
    /// Whether its SQL is one of the few this server writes for a layer whatever the request
    /// (no client text, field list or limit in it), so that it may be kept prepared on the
    /// connection for the next query.
    pub reusable_sql: bool,
}

/// How a box query is answered from rendered copies of its features (see
/// [`crate::gis::cache::features`]); only for plans whose features depend on nothing but the
/// box.
pub struct Reuse {
    /// The copies.
    pub cache: Arc<FeatureCache>,
    /// Which copies: the dataset's path and version and the plan's SELECT.
    pub variant: u64,
    /// The candidates' fids from the R*Tree, with the plan's parameters.
    pub candidates: String,
}

impl Reuse {
    /// Reuse for a plan over `dataset` whose candidates come from `candidates`, when the cache is
    /// on and the plan's features depend on the box alone (no simplification).
    #[must_use]
    pub fn of(
        cache: &Arc<FeatureCache>,
        dataset: &Dataset,
        plan: &Plan,
        candidates: String,
    ) -> Option<Self> {
        (cache.enabled() && plan.simplify.is_none() && plan.exact.is_some()).then(|| Self {
            cache: cache.clone(),
            variant: crate::gis::stable_hash(&format!(
                "{}|{}|{}",
                dataset.path().display(),
                dataset.version(),
                plan.sql
            )),
            candidates,
        })
    }
}

/// The features of a layer that meet any of a set of boxes, tested as GDAL tests `-spat`: on
/// each geometry, not only its bounds. For paged answers (OGC API Features `bbox`), where the
/// count and the page must agree with what is written.
pub struct BoxMatch {
    /// Candidates in fid order: `(fid, minx, maxx, miny, maxy)` from the R*Tree when
    /// `from_index`, else `(fid, geometry)` from the table.
    pub candidates: String,
    /// The candidates' parameters.
    pub params: Vec<SqlValue>,
    /// Whether candidates come from the R*Tree alone.
    pub from_index: bool,
    /// `SELECT geometry FROM layer WHERE fid = ?1`, for index candidates whose bounds do not
    /// decide.
    pub geometry: String,
    /// The boxes, in the layer's system; a feature meeting any of them matches (no boxes: no
    /// box to meet).
    pub rects: Vec<geo::Rect<f64>>,
    /// Geometries in the layer's system; a feature must meet all of them as well.
    pub shapes: Vec<geo::Geometry<f64>>,
    /// Each shape's bounds (`None`: it has no points, and nothing meets it).
    pub shape_bounds: Vec<Option<geo::Rect<f64>>>,
    /// Geometries the filter's conditions test.
    pub tested: Tested,
}

/// A condition every feature of an answer meets.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The client's own SQL expression (`/ogr2ogr -where`), bounded by the read-only
    /// connection, its authorizer and the query limits.
    Sql(String),
    /// A property equal to a value, compared as text (so `5` matches an integer 5 too).
    Equals {
        /// The property, as the layer names it.
        field: String,
        /// The value.
        value: String,
    },
    /// A CQL2 text filter (OGC API Features Part 3), compiled to parameterised SQL.
    Cql2(String),
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A property named that the layer does not have.
    #[error("unknown field {field:?}; fields: {fields}")]
    UnknownField {
        /// The name asked for.
        field: String,
        /// The layer's fields.
        fields: String,
    },
    /// A `-select` naming a field the layer does not have.
    #[error("-select: unknown field {field:?}; fields: {fields}")]
    UnknownSelected {
        /// The name asked for.
        field: String,
        /// The layer's fields.
        fields: String,
    },
    /// A filter that does not parse or names what it may not.
    #[error("filter: {0}")]
    Filter(super::filter::FilterError),
    /// The layer's coordinate system is unknown.
    #[error(transparent)]
    Reproject(#[from] ReprojectError),
}

/// Conditions written for a layer's storage, with their parameters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    conditions: Vec<String>,
    params: Vec<SqlValue>,
    /// Geometries (in the layer's system) a feature must intersect, all of them: CQL2
    /// `S_INTERSECTS` at the filter's top level, tested by a [`BoxMatch`].
    shapes: Vec<geo::Geometry<f64>>,
    /// Geometries (in the layer's system) the conditions test through
    /// [`super::filter::INTERSECTS_FUNCTION`]: CQL2 `S_INTERSECTS` elsewhere.
    tested: Tested,
}

/// The geometries a statement's [`super::filter::INTERSECTS_FUNCTION`] calls refer to, by
/// place; registered on the connection while the statement runs.
pub type Tested = Arc<Vec<geo::Geometry<f64>>>;

impl Filter {
    /// The conditions on `layer`, all of which a feature must meet; CQL2 geometries (CRS84)
    /// are moved into the layer's system with `reproject`.
    ///
    /// # Errors
    /// A property the layer does not have, a CQL2 filter that does not parse, or a geometry
    /// that cannot be moved into the layer's system.
    pub fn new(
        layer: &Layer,
        conditions: &[Condition],
        reproject: Option<&Reprojector>,
    ) -> Result<Self, PlanError> {
        let Storage::Sqlite = layer.storage;
        let mut filter = Self::default();
        let mut tested = Vec::new();
        let extent = reproject.and_then(|r| crs84_extent(layer, r));
        let into_layer = |shape: geo::Geometry<f64>| match reproject {
            Some(r) => r.from_wgs84(&boxes_for_projection(shape, extent)),
            None => Ok(shape),
        };
        let geometry = layer.geometry.as_deref().map_or("NULL".to_owned(), quote);
        for condition in conditions {
            match condition {
                Condition::Sql(sql) => filter.conditions.push(format!("({sql})")),
                Condition::Equals { field, value } => {
                    let field = layer.fields.iter().find(|f| *f == field).ok_or_else(|| {
                        PlanError::UnknownField {
                            field: field.clone(),
                            fields: layer.fields.join(", "),
                        }
                    })?;
                    filter.params.push(SqlValue::Text(value.clone()));
                    filter.conditions.push(format!(
                        "CAST({} AS TEXT) = ?{}",
                        quote(field),
                        filter.params.len()
                    ));
                }
                Condition::Cql2(text) => {
                    let cql2 = super::filter::to_sql(text, &layer.fields, filter.params.len())
                        .map_err(PlanError::Filter)?;
                    // The function's geometries are numbered within one filter text.
                    if !tested.is_empty() && !cql2.tested.is_empty() {
                        return Err(PlanError::Filter(super::filter::FilterError(
                            "one CQL2 filter at a time may test geometries".to_owned(),
                        )));
                    }
                    let sql = cql2.sql.replace(super::filter::GEOMETRY_COLUMN, &geometry);
                    filter.conditions.push(format!("({sql})"));
                    filter.params.extend(cql2.params);
                    for shape in cql2.shapes {
                        filter.shapes.push(into_layer(shape)?);
                    }
                    for shape in cql2.tested {
                        tested.push(into_layer(shape)?);
                    }
                }
            }
        }
        filter.tested = Arc::new(tested);
        Ok(filter)
    }

    /// The geometries (in the layer's system) a feature must intersect, all of them: tested
    /// on each feature's geometry by a [`BoxMatch`], not in SQL.
    #[must_use]
    pub fn shapes(&self) -> &[geo::Geometry<f64>] {
        &self.shapes
    }

    fn where_clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }
}

/// The layer's extent in CRS84 with a tenth of its size around it (the recorded extent may
/// lag behind edits), when it is known: what of a CRS84 box a projected layer can use.
#[must_use]
pub fn crs84_extent(layer: &Layer, reproject: &Reprojector) -> Option<[f64; 4]> {
    let e = reproject.bbox_to_wgs84(layer.extent?).ok()?;
    let (dx, dy) = ((e[2] - e[0]) * 0.1, (e[3] - e[1]) * 0.1);
    Some([e[0] - dx, e[1] - dy, e[2] + dx, e[3] + dy])
}

/// The part of box `b` inside `extent` (all of it when the extent is not known), or `None`
/// when they do not meet; boxes are `[xmin, ymin, xmax, ymax]`.
#[must_use]
pub fn cut(b: [f64; 4], extent: Option<[f64; 4]>) -> Option<[f64; 4]> {
    let Some(e) = extent else {
        return Some(b);
    };
    let c = [
        b[0].max(e[0]),
        b[1].max(e[1]),
        b[2].min(e[2]),
        b[3].min(e[3]),
    ];
    (c[0] <= c[2] && c[1] <= c[3]).then_some(c)
}

/// Points along the longer edge of a CRS84 box moved into a projected system.
const BOX_EDGE_POINTS: usize = 16;

/// A CQL2 geometry ready to be moved into a projected layer's system: its boxes (`BBOX`) cut
/// to the layer's extent (a projection holds only near its zone) and turned into polygons
/// with points along their edges (which bend in the projection); a box missing the extent
/// becomes an empty collection, which meets nothing. Other geometries are left as they are.
fn boxes_for_projection(shape: geo::Geometry<f64>, extent: Option<[f64; 4]>) -> geo::Geometry<f64> {
    use geo::{Densify, Geometry};
    match shape {
        Geometry::Rect(r) => {
            let bounds = [r.min().x, r.min().y, r.max().x, r.max().y];
            let Some([w, s, e, n]) = cut(bounds, extent) else {
                return Geometry::GeometryCollection(geo::GeometryCollection(Vec::new()));
            };
            let polygon = geo::Rect::new((w, s), (e, n)).to_polygon();
            let step = (e - w).max(n - s) / BOX_EDGE_POINTS as f64;
            Geometry::Polygon(if step > 0.0 {
                geo::Euclidean.densify(&polygon, step)
            } else {
                polygon
            })
        }
        Geometry::GeometryCollection(parts) => {
            Geometry::GeometryCollection(geo::GeometryCollection(
                parts
                    .0
                    .into_iter()
                    .map(|p| boxes_for_projection(p, extent))
                    .collect(),
            ))
        }
        other => other,
    }
}

/// What `/ogr2ogr` asks of one layer, as its options say.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `-select`: the fields to write (matched without regard to case).
    pub fields: Option<Vec<String>>,
    /// `-where`: the client's SQL expression.
    pub filter: Option<String>,
    /// `-spat xmin ymin xmax ymax`, in the layer's system.
    pub spat: Option<[f64; 4]>,
    /// `-limit`.
    pub limit: Option<u64>,
    /// `-simplify` tolerance, in the layer's units.
    pub simplify: Option<f64>,
    /// `-nln`: the collection's name (the layer's when `None`).
    pub name: Option<String>,
}

/// The fids of an R*Tree's entries whose bounds meet the box `?2 ?4 ?1 ?3`, in the R*Tree's
/// order (GDAL's order for a spatial filter), as the one column `"pozi candidate"`.
fn candidates(rtree: &str) -> String {
    format!(
        "SELECT id AS \"pozi candidate\" FROM {} WHERE minx <= ?1 AND maxx >= ?2 AND miny <= ?3 AND maxy >= ?4",
        quote(rtree)
    )
}

impl Plan {
    fn new(sql: String, params: Vec<SqlValue>, name: String) -> Self {
        Self {
            sql,
            params,
            has_fid: true,
            emit_id: false,
            envelope_filter: None,
            exact: None,
            simplify: None,
            reproject: None,
            name,
            members: None,
            reuse: None,
            tested: Tested::default(),
            reusable_sql: false,
        }
    }

    /// The plan for `selection` on `layer`, as GDAL would select it; with the R*Tree
    /// candidates' SELECT when the plan is led by the R*Tree (a box alone), which is what
    /// rendered feature copies can answer.
    ///
    /// # Errors
    /// A `-select` field the layer does not have, or an unknown coordinate system.
    pub fn selection(
        layer: &Layer,
        selection: &Selection,
    ) -> Result<(Self, Option<String>), PlanError> {
        let Storage::Sqlite = layer.storage;
        let fields = match &selection.fields {
            Some(wanted) => wanted
                .iter()
                .map(|w| {
                    layer
                        .fields
                        .iter()
                        .find(|f| f.eq_ignore_ascii_case(w))
                        .cloned()
                        .ok_or_else(|| PlanError::UnknownSelected {
                            field: w.clone(),
                            fields: layer.fields.join(", "),
                        })
                })
                .collect::<Result<Vec<String>, _>>()?
                .into_iter()
                // A field named twice is written once (a JSON object's keys are unique).
                .fold(Vec::new(), |mut kept, field| {
                    if !kept.contains(&field) {
                        kept.push(field);
                    }
                    kept
                }),
            None => layer.fields.clone(),
        };
        let mut sql = format!("SELECT {} FROM ", layer.select_list(Some(&fields)));
        let table = quote(&layer.name);
        // As GDAL does: a box holding the whole layer is no filter; a box alone is a join led
        // by the R*Tree (features come in its order); a box with -where is an `IN` (in fid
        // order).
        let rtree = layer.rtree.as_deref().filter(
            |_| !matches!((selection.spat, layer.extent), (Some(b), Some(e)) if contains(b, e)),
        );
        let led_by = rtree
            .filter(|_| selection.spat.is_some() && selection.filter.is_none())
            .map(candidates);
        match &led_by {
            Some(candidates) => sql.push_str(&format!(
                "({candidates}) AS \"pozi box\" CROSS JOIN {table} ON {table}.{} = \"pozi box\".\"pozi candidate\"",
                quote(&layer.fid)
            )),
            None => sql.push_str(&table),
        }
        let mut conditions = Vec::new();
        if let Some(filter) = &selection.filter {
            conditions.push(format!("({filter})"));
        }
        let mut params = Vec::new();
        let mut envelope_filter = None;
        if let Some([xmin, ymin, xmax, ymax]) = selection.spat {
            match rtree {
                Some(rtree) => {
                    if selection.filter.is_some() {
                        conditions.push(format!(
                            "{} IN ({})",
                            quote(&layer.fid),
                            candidates(rtree)
                        ));
                    }
                    params = [xmax, xmin, ymax, ymin].map(SqlValue::Real).to_vec();
                }
                None if layer.rtree.is_some() => {}
                None => envelope_filter = Some([xmin, ymin, xmax, ymax]),
            }
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        // With a box, the limit counts features inside it, after the exact test.
        if let (Some(limit), None) = (selection.limit, selection.spat) {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let name = selection.name.clone().unwrap_or_else(|| layer.name.clone());
        let plan = Self {
            reproject: Reprojector::for_srs(layer.srs_id)?,
            envelope_filter,
            exact: selection.spat.map(rect),
            simplify: selection.simplify,
            reusable_sql: selection.filter.is_none()
                && selection.fields.is_none()
                && selection.limit.is_none(),
            ..Self::new(sql, params, name)
        };
        Ok((plan, led_by))
    }

    /// A client's whole SELECT (`/ogr2ogr -sql`); its geometries are taken to be in the first
    /// layer's system.
    ///
    /// # Errors
    /// An unknown coordinate system.
    pub fn statement(
        sql: &str,
        first: Option<&Layer>,
        selection: &Selection,
    ) -> Result<Self, PlanError> {
        let name = selection
            .name
            .clone()
            .unwrap_or_else(|| first.map_or_else(|| "sql".to_owned(), |l| l.name.clone()));
        Ok(Self {
            has_fid: false,
            reproject: Reprojector::for_srs(first.and_then(|l| l.srs_id))?,
            envelope_filter: selection.spat,
            exact: selection.spat.map(rect),
            simplify: selection.simplify,
            ..Self::new(sql.to_owned(), Vec::new(), name)
        })
    }

    /// One page of the features meeting `filter`, in fid order, each with its `"id"`.
    #[must_use]
    pub fn page(layer: &Layer, filter: &Filter, limit: u64, offset: u64, name: &str) -> Self {
        let Storage::Sqlite = layer.storage;
        let sql = format!(
            "SELECT {} FROM {}{} ORDER BY {} LIMIT {limit} OFFSET {offset}",
            layer.select_list(None),
            quote(&layer.name),
            filter.where_clause(),
            quote(&layer.fid)
        );
        Self {
            emit_id: true,
            tested: filter.tested.clone(),
            ..Self::new(sql, filter.params.clone(), name.to_owned())
        }
    }

    /// The features with these fids (found by [`BoxMatch`]), in fid order, each with its
    /// `"id"`.
    #[must_use]
    pub fn fids(layer: &Layer, fids: &[i64], name: &str) -> Self {
        let Storage::Sqlite = layer.storage;
        // The fids come from this server's own query: integers, written as such.
        let list: Vec<String> = fids.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} IN ({}) ORDER BY {}",
            layer.select_list(None),
            quote(&layer.name),
            quote(&layer.fid),
            list.join(","),
            quote(&layer.fid)
        );
        Self {
            emit_id: true,
            ..Self::new(sql, Vec::new(), name.to_owned())
        }
    }

    /// The feature with fid `fid`, with its `"id"`.
    #[must_use]
    pub fn feature(layer: &Layer, fid: i64, name: &str) -> Self {
        let Storage::Sqlite = layer.storage;
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = ?1",
            layer.select_list(None),
            quote(&layer.name),
            quote(&layer.fid)
        );
        Self {
            emit_id: true,
            ..Self::new(sql, vec![SqlValue::Integer(fid)], name.to_owned())
        }
    }

    /// Transforms the features to WGS 84 with `reproject`.
    #[must_use]
    pub fn reprojected(mut self, reproject: Option<Arc<Reprojector>>) -> Self {
        self.reproject = reproject;
        self
    }

    /// Writes `members` after the features.
    #[must_use]
    pub fn with_members(mut self, members: Members) -> Self {
        self.members = Some(members);
        self
    }
}

/// Every row of `layer` with the columns `fields` and then its geometry (NULL when it has
/// none), as the search index reads a layer.
#[must_use]
pub fn columns(layer: &Layer, fields: &[&str]) -> String {
    let Storage::Sqlite = layer.storage;
    let geometry = layer.geometry.as_deref().map_or("NULL".to_owned(), quote);
    let fields: Vec<String> = fields.iter().map(|f| quote(f)).collect();
    format!(
        "SELECT {}, {geometry} FROM {}",
        fields.join(", "),
        quote(&layer.name)
    )
}

/// A count statement: `SELECT count(*)` with its parameters.
pub struct Count {
    /// The statement.
    pub sql: String,
    /// Its parameters.
    pub params: Vec<SqlValue>,
    /// Geometries its filter tests.
    pub tested: Tested,
}

impl Count {
    /// The features of `layer` meeting `filter`.
    #[must_use]
    pub fn matching(layer: &Layer, filter: &Filter) -> Self {
        let Storage::Sqlite = layer.storage;
        Self {
            sql: format!(
                "SELECT count(*) FROM {}{}",
                quote(&layer.name),
                filter.where_clause()
            ),
            params: filter.params.clone(),
            tested: filter.tested.clone(),
        }
    }

    /// Whether `layer` has a feature with fid `fid` (0 or 1).
    #[must_use]
    pub fn fid(layer: &Layer, fid: i64) -> Self {
        let Storage::Sqlite = layer.storage;
        Self {
            sql: format!(
                "SELECT count(*) FROM {} WHERE {} = ?1",
                quote(&layer.name),
                quote(&layer.fid)
            ),
            params: vec![SqlValue::Integer(fid)],
            tested: Tested::default(),
        }
    }
}

impl BoxMatch {
    /// The features of `layer` meeting `filter`, any of `rects` (when there are any) and all
    /// of `shapes` (all in the layer's system): candidates from the R*Tree alone when nothing
    /// else filters, else from the table (through the R*Tree when there is one). The R*Tree is
    /// searched with `rects`, or with the common part of the shapes' bounds when there are
    /// none.
    #[must_use]
    pub fn new(
        layer: &Layer,
        rects: &[[f64; 4]],
        shapes: Vec<geo::Geometry<f64>>,
        filter: &Filter,
    ) -> Self {
        use geo::BoundingRect;
        let Storage::Sqlite = layer.storage;
        let mut params = filter.params.clone();
        let geometry = layer.geometry.as_deref().map_or("NULL".to_owned(), quote);
        let shape_bounds: Vec<Option<geo::Rect<f64>>> =
            shapes.iter().map(BoundingRect::bounding_rect).collect();
        let searched: Vec<[f64; 4]> = if rects.is_empty() {
            // Where every shape's bounds overlap (none: nothing can meet them all).
            shape_bounds
                .iter()
                .try_fold(None::<[f64; 4]>, |common, bounds| {
                    let r = (*bounds)?;
                    let b = [r.min().x, r.min().y, r.max().x, r.max().y];
                    let next = match common {
                        None => b,
                        Some(c) => [
                            c[0].max(b[0]),
                            c[1].max(b[1]),
                            c[2].min(b[2]),
                            c[3].min(b[3]),
                        ],
                    };
                    (next[0] <= next[2] && next[1] <= next[3]).then_some(Some(next))
                })
                .flatten()
                .map(|b| vec![b])
                .unwrap_or_default()
        } else {
            rects.to_vec()
        };
        // Only shapes with no points left: nothing meets them.
        let nothing = !shapes.is_empty() && searched.is_empty();
        // The boxes' parameters only when the R*Tree is searched with them: a table without
        // one is read whole and tested in Rust.
        let mut within = Vec::new();
        if layer.rtree.is_some() {
            for rect in &searched {
                let n = params.len();
                within.push(format!(
                    "minx <= ?{} AND maxx >= ?{} AND miny <= ?{} AND maxy >= ?{}",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4
                ));
                params.extend([rect[2], rect[0], rect[3], rect[1]].map(SqlValue::Real));
            }
        }
        let index = layer
            .rtree
            .as_deref()
            .filter(|_| !within.is_empty())
            .map(|rtree| {
                within
                    .iter()
                    .map(|w| {
                        format!(
                            "SELECT id, minx, maxx, miny, maxy FROM {} WHERE {w}",
                            quote(rtree)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" UNION ")
            });
        let (candidates, from_index) = match index {
            Some(index) if filter.conditions.is_empty() && !nothing => {
                (format!("{index} ORDER BY 1"), true)
            }
            index => {
                let mut filters = filter.conditions.clone();
                if nothing {
                    filters.push("0".to_owned());
                }
                if let Some(index) = index {
                    filters.push(format!(
                        "{} IN (SELECT id FROM ({index}))",
                        quote(&layer.fid)
                    ));
                }
                let clause = if filters.is_empty() {
                    String::new()
                } else {
                    format!(" WHERE {}", filters.join(" AND "))
                };
                (
                    format!(
                        "SELECT {}, {geometry} FROM {}{clause} ORDER BY 1",
                        quote(&layer.fid),
                        quote(&layer.name)
                    ),
                    false,
                )
            }
        };
        Self {
            candidates,
            params,
            from_index,
            geometry: format!(
                "SELECT {geometry} FROM {} WHERE {} = ?1",
                quote(&layer.name),
                quote(&layer.fid)
            ),
            rects: rects.iter().map(|r| rect(*r)).collect(),
            shapes,
            shape_bounds,
            tested: filter.tested.clone(),
        }
    }
}
