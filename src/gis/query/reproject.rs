//! Reprojection to WGS 84 longitude/latitude for layers stored in other coordinate systems
//! (GDA94 and GDA2020 MGA zones, VicGrid, Web Mercator, State Plane…), with proj4rs and the EPSG
//! definitions it carries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use geo::MapCoords;
use proj4rs::Proj;

/// SRS ids that are already WGS 84 longitude/latitude (or undefined, served as stored).
pub const WGS84_IDS: &[i64] = &[4326, 0, -1];

/// A transformation from one EPSG system to WGS 84 and back.
pub struct Reprojector {
    code: i64,
    source: Proj,
    wgs84: Proj,
}

impl std::fmt::Debug for Reprojector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reprojector(EPSG:{} -> EPSG:4326)", self.code)
    }
}

/// Why a layer cannot be reprojected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot reproject between EPSG:{code} and WGS 84: {reason}")]
pub struct ReprojectError {
    /// The source system.
    pub code: i64,
    /// Why.
    pub reason: String,
}

impl Reprojector {
    /// The (cached) transformation for an EPSG code; `None` when no reprojection is needed.
    ///
    /// # Errors
    /// When the code is unknown to the EPSG definitions carried.
    pub fn for_srs(code: Option<i64>) -> Result<Option<Arc<Self>>, ReprojectError> {
        let Some(code) = code.filter(|c| !WGS84_IDS.contains(c)) else {
            return Ok(None);
        };
        static CACHE: OnceLock<Mutex<HashMap<i64, Arc<Reprojector>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Mutex::default);
        if let Some(found) = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&code)
        {
            return Ok(Some(found.clone()));
        }
        let fail = |reason: String| ReprojectError { code, reason };
        let epsg = u16::try_from(code).map_err(|_| fail("not an EPSG code".to_owned()))?;
        let source = Proj::from_epsg_code(epsg).map_err(|e| fail(e.to_string()))?;
        let wgs84 = Proj::from_epsg_code(4326).map_err(|e| fail(e.to_string()))?;
        let made = Arc::new(Self {
            code,
            source,
            wgs84,
        });
        cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(code, made.clone());
        Ok(Some(made))
    }

    /// A transformation from a PROJ string (a shapefile's `.prj`, translated).
    ///
    /// # Errors
    /// When PROJ cannot use the string.
    pub fn from_proj_string(definition: &str) -> Result<Self, ReprojectError> {
        let fail = |e: proj4rs::errors::Error| ReprojectError {
            code: -1,
            reason: format!("{definition}: {e}"),
        };
        Ok(Self {
            code: -1,
            source: Proj::from_proj_string(definition).map_err(fail)?,
            wgs84: Proj::from_epsg_code(4326).map_err(fail)?,
        })
    }

    fn convert(
        from: &Proj,
        to: &Proj,
        x: f64,
        y: f64,
    ) -> Result<(f64, f64), proj4rs::errors::Error> {
        let (x, y) = if from.is_latlong() {
            (x.to_radians(), y.to_radians())
        } else {
            (x, y)
        };
        let (x, y) = proj4rs::adaptors::transform_xy(from, to, x, y)?;
        Ok(if to.is_latlong() {
            (x.to_degrees(), y.to_degrees())
        } else {
            (x, y)
        })
    }

    /// The geometry in WGS 84 longitude/latitude.
    ///
    /// # Errors
    /// When a coordinate cannot be transformed (outside the projection's domain).
    pub fn to_wgs84(
        &self,
        geometry: &geo::Geometry<f64>,
    ) -> Result<geo::Geometry<f64>, ReprojectError> {
        self.map(&self.source, &self.wgs84, geometry)
    }

    /// A WGS 84 longitude/latitude geometry in the source system.
    ///
    /// # Errors
    /// When a coordinate cannot be transformed.
    pub fn from_wgs84(
        &self,
        geometry: &geo::Geometry<f64>,
    ) -> Result<geo::Geometry<f64>, ReprojectError> {
        self.map(&self.wgs84, &self.source, geometry)
    }

    /// Every coordinate of `geometry` moved from `from` to `to`.
    fn map(
        &self,
        from: &Proj,
        to: &Proj,
        geometry: &geo::Geometry<f64>,
    ) -> Result<geo::Geometry<f64>, ReprojectError> {
        geometry.try_map_coords(|c| {
            Self::convert(from, to, c.x, c.y)
                .map(|(x, y)| geo::coord! { x: x, y: y })
                .map_err(|e| ReprojectError {
                    code: self.code,
                    reason: e.to_string(),
                })
        })
    }

    /// The envelope, in the source system, of a WGS 84 box (its corners and edge midpoints).
    ///
    /// # Errors
    /// When the box cannot be transformed.
    pub fn bbox_from_wgs84(
        &self,
        [xmin, ymin, xmax, ymax]: [f64; 4],
    ) -> Result<[f64; 4], ReprojectError> {
        self.envelope(&self.wgs84, &self.source, [xmin, ymin, xmax, ymax])
    }

    /// The envelope, in WGS 84, of a box in the source system.
    ///
    /// # Errors
    /// When the box cannot be transformed.
    pub fn bbox_to_wgs84(&self, bbox: [f64; 4]) -> Result<[f64; 4], ReprojectError> {
        self.envelope(&self.source, &self.wgs84, bbox)
    }

    fn envelope(
        &self,
        from: &Proj,
        to: &Proj,
        [xmin, ymin, xmax, ymax]: [f64; 4],
    ) -> Result<[f64; 4], ReprojectError> {
        let (xmid, ymid) = ((xmin + xmax) / 2.0, (ymin + ymax) / 2.0);
        let mut out = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for (x, y) in [
            (xmin, ymin),
            (xmax, ymin),
            (xmin, ymax),
            (xmax, ymax),
            (xmid, ymin),
            (xmid, ymax),
            (xmin, ymid),
            (xmax, ymid),
        ] {
            let (x, y) = Self::convert(from, to, x, y).map_err(|e| ReprojectError {
                code: self.code,
                reason: e.to_string(),
            })?;
            out = [out[0].min(x), out[1].min(y), out[2].max(x), out[3].max(y)];
        }
        Ok(out)
    }
}
