//! Shapefile `.prj` files (ESRI WKT, or OGC WKT 1 or 2) as PROJ strings for proj4rs, through
//! `proj4wkt` (from the makers of proj4rs, so it writes what proj4rs reads): geographic,
//! Transverse Mercator (MGA, UTM), Lambert conformal conic (State Plane, VicGrid), Albers,
//! Web Mercator and the other projections proj4rs has.

/// Why a `.prj` cannot be used: malformed, or a projection not handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PrjError(pub String);

/// The PROJ string for a `.prj` (ESRI WKT, or OGC WKT 1 or 2), or why it cannot be used.
///
/// # Errors
/// When the WKT is malformed or its projection is not one proj4rs handles.
pub fn to_proj(wkt: &str) -> Result<String, PrjError> {
    proj4wkt::wkt_to_projstring(wkt.trim()).map_err(|e| PrjError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::to_proj;

    #[test]
    fn state_plane_in_us_feet() {
        let prj = r#"PROJCS["NAD_1983_StatePlane_New_York_Long_Island_FIPS_3104_Feet",GEOGCS["GCS_North_American_1983",DATUM["D_North_American_1983",SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic"],PARAMETER["False_Easting",984250.0],PARAMETER["False_Northing",0.0],PARAMETER["Central_Meridian",-74.0],PARAMETER["Standard_Parallel_1",40.66666666666666],PARAMETER["Standard_Parallel_2",41.03333333333333],PARAMETER["Latitude_Of_Origin",40.16666666666666],UNIT["Foot_US",0.3048006096012192]]"#;
        let proj = to_proj(prj).unwrap_or_default();
        for part in [
            "+proj=lcc",
            "+lat_1=40.66666666666666",
            "+lat_2=41.03333333333333",
            "+lat_0=40.16666666666666",
            "+lon_0=-74",
            // 984,250 US feet, in metres.
            "+x_0=300000",
            "+to_meter=0.3048006096012192",
            "+rf=298.257222101",
        ] {
            assert!(
                proj.split(' ').any(|p| p.starts_with(part)),
                "{part} in {proj}"
            );
        }
    }

    /// The projections of Australian councils' data: MGA zones and VicGrid on GDA94.
    #[test]
    fn mga_and_vicgrid() {
        let mga55 = r#"PROJCS["GDA_1994_MGA_Zone_55",GEOGCS["GCS_GDA_1994",DATUM["D_GDA_1994",SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["False_Easting",500000.0],PARAMETER["False_Northing",10000000.0],PARAMETER["Central_Meridian",147.0],PARAMETER["Scale_Factor",0.9996],PARAMETER["Latitude_Of_Origin",0.0],UNIT["Meter",1.0]]"#;
        let proj = to_proj(mga55).unwrap_or_default();
        for part in [
            "+proj=tmerc",
            "+lon_0=147",
            "+k=0.9996",
            "+x_0=500000",
            "+y_0=10000000",
        ] {
            assert!(
                proj.split(' ').any(|p| p.starts_with(part)),
                "{part} in {proj}"
            );
        }
        let vicgrid = r#"PROJCS["GDA_1994_VICGRID94",GEOGCS["GCS_GDA_1994",DATUM["D_GDA_1994",SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic"],PARAMETER["False_Easting",2500000.0],PARAMETER["False_Northing",2500000.0],PARAMETER["Central_Meridian",145.0],PARAMETER["Standard_Parallel_1",-36.0],PARAMETER["Standard_Parallel_2",-38.0],PARAMETER["Latitude_Of_Origin",-37.0],UNIT["Meter",1.0]]"#;
        let proj = to_proj(vicgrid).unwrap_or_default();
        for part in [
            "+proj=lcc",
            "+lat_1=-36",
            "+lat_2=-38",
            "+lat_0=-37",
            "+lon_0=145",
            "+x_0=2500000",
        ] {
            assert!(
                proj.split(' ').any(|p| p.starts_with(part)),
                "{part} in {proj}"
            );
        }
    }

    #[test]
    fn geographic_and_unsupported() {
        let wgs84 = r#"GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]]"#;
        assert!(
            to_proj(wgs84)
                .unwrap_or_default()
                .starts_with("+proj=longlat +a=6378137")
        );
        assert!(
            to_proj(
                "PROJCS[\"x\",GEOGCS[\"g\",DATUM[\"d\",SPHEROID[\"s\",1,1]]],PROJECTION[\"Bonne\"]]"
            )
            .is_err()
        );
        assert!(to_proj("garbage").is_err());
    }
}
