//! Shapefile `.prj` files (ESRI WKT) as PROJ strings, for the projections councils use:
//! geographic, Transverse Mercator (MGA, UTM), Lambert conformal conic (State Plane, VicGrid),
//! Albers equal area and Web Mercator. No crate maps ESRI WKT to PROJ; this reads the WKT
//! tree and writes the same parameters PROJ's own translation gives.

use std::collections::HashMap;

/// One `NAME[...]` node of a WKT tree.
#[derive(Debug, Default)]
struct Node {
    name: String,
    values: Vec<String>,
    children: Vec<Node>,
}

fn parse(text: &str) -> Option<Node> {
    let mut chars = text.chars().peekable();
    parse_node(&mut chars)
}

fn parse_node(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Node> {
    let mut node = Node::default();
    while let Some(c) = chars.peek().copied() {
        if c == '[' || c == '(' {
            chars.next();
            break;
        }
        chars.next();
        if !c.is_whitespace() {
            node.name.push(c);
        }
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        match chars.peek().copied()? {
            ']' | ')' => {
                chars.next();
                return Some(node);
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    value.push(c);
                }
                node.values.push(value);
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let mut value = String::new();
                while chars
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || "-+.".contains(*c))
                {
                    value.extend(chars.next());
                }
                node.values.push(value);
            }
            _ => node.children.push(parse_node(chars)?),
        }
    }
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
    fn number(&self, i: usize) -> Option<f64> {
        self.values.get(i)?.parse().ok()
    }
}

/// Why a `.prj` cannot be used: malformed, or a projection not handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PrjError(pub String);

/// The PROJ string for a `.prj`, or why it cannot be used.
///
/// # Errors
/// When the WKT is malformed or its projection is not one of those handled.
pub fn to_proj(wkt: &str) -> Result<String, PrjError> {
    proj_string(wkt).map_err(PrjError)
}

fn proj_string(wkt: &str) -> Result<String, String> {
    let root = parse(wkt.trim()).ok_or_else(|| "malformed WKT".to_owned())?;
    let geographic = if root.name.eq_ignore_ascii_case("GEOGCS") {
        &root
    } else {
        root.child("GEOGCS").ok_or("no GEOGCS")?
    };
    let spheroid = geographic
        .child("DATUM")
        .and_then(|d| d.child("SPHEROID"))
        .ok_or("no SPHEROID")?;
    let (a, rf) = (
        spheroid.number(1).ok_or("bad SPHEROID")?,
        spheroid.number(2).ok_or("bad SPHEROID")?,
    );
    // Datums on GRS 80 / WGS 84 (GDA94, GDA2020, NAD83) are taken as WGS 84, as PROJ's ballpark
    // transformation does; others are used as they are.
    let datum = geographic
        .child("DATUM")
        .and_then(|d| d.values.first())
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    let towgs84 = [
        "WGS_1984",
        "WGS84",
        "GDA_1994",
        "GDA2020",
        "GDA_2020",
        "NORTH_AMERICAN_1983",
        "NAD83",
    ]
    .iter()
    .any(|d| datum.contains(d));
    let ellipsoid = format!(
        "+a={a} +rf={rf}{}",
        if towgs84 {
            " +towgs84=0,0,0,0,0,0,0"
        } else {
            ""
        }
    );
    if std::ptr::eq(geographic, &root) {
        return Ok(format!("+proj=longlat {ellipsoid} +no_defs"));
    }
    let projection = root
        .child("PROJECTION")
        .and_then(|p| p.values.first())
        .ok_or("no PROJECTION")?
        .to_ascii_lowercase();
    let parameters: HashMap<String, f64> = root
        .children
        .iter()
        .filter(|c| c.name.eq_ignore_ascii_case("PARAMETER"))
        .filter_map(|c| Some((c.values.first()?.to_ascii_lowercase(), c.number(1)?)))
        .collect();
    let p = |name: &str| parameters.get(name).copied().unwrap_or(0.0);
    let unit = root
        .children
        .iter()
        .rev()
        .find(|c| c.name.eq_ignore_ascii_case("UNIT"))
        .and_then(|u| u.number(1))
        .unwrap_or(1.0);
    let origin = p("latitude_of_origin").max(p("latitude_of_center"))
        + p("latitude_of_origin").min(p("latitude_of_center"));
    let lon_0 = if parameters.contains_key("central_meridian") {
        p("central_meridian")
    } else {
        p("longitude_of_center")
    };
    let (x_0, y_0) = (p("false_easting") * unit, p("false_northing") * unit);
    let scale = parameters.get("scale_factor").copied().unwrap_or(1.0);
    let body = match projection.as_str() {
        "transverse_mercator" => {
            format!("+proj=tmerc +lat_0={origin} +lon_0={lon_0} +k={scale} +x_0={x_0} +y_0={y_0}")
        }
        "lambert_conformal_conic" | "lambert_conformal_conic_2sp" => format!(
            "+proj=lcc +lat_1={} +lat_2={} +lat_0={origin} +lon_0={lon_0} +x_0={x_0} +y_0={y_0}",
            p("standard_parallel_1"),
            parameters
                .get("standard_parallel_2")
                .copied()
                .unwrap_or(p("standard_parallel_1"))
        ),
        "albers" | "albers_conic_equal_area" => format!(
            "+proj=aea +lat_1={} +lat_2={} +lat_0={origin} +lon_0={lon_0} +x_0={x_0} +y_0={y_0}",
            p("standard_parallel_1"),
            p("standard_parallel_2")
        ),
        "mercator_auxiliary_sphere" | "popular_visualisation_pseudo_mercator" => {
            return Ok("+proj=merc +a=6378137 +b=6378137 +lat_ts=0 +lon_0=0 +x_0=0 +y_0=0 +k=1 +units=m +nadgrids=@null +no_defs".to_owned());
        }
        other => return Err(format!("projection {other} is not supported")),
    };
    Ok(format!("{body} {ellipsoid} +to_meter={unit} +no_defs"))
}

#[cfg(test)]
mod tests {
    use super::to_proj;

    #[test]
    fn state_plane_in_us_feet() {
        let prj = r#"PROJCS["NAD_1983_StatePlane_New_York_Long_Island_FIPS_3104_Feet",GEOGCS["GCS_North_American_1983",DATUM["D_North_American_1983",SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic"],PARAMETER["False_Easting",984250.0],PARAMETER["False_Northing",0.0],PARAMETER["Central_Meridian",-74.0],PARAMETER["Standard_Parallel_1",40.66666666666666],PARAMETER["Standard_Parallel_2",41.03333333333333],PARAMETER["Latitude_Of_Origin",40.16666666666666],UNIT["Foot_US",0.3048006096012192]]"#;
        let proj = to_proj(prj).unwrap_or_default();
        assert!(proj.starts_with("+proj=lcc +lat_1=40.66666666666666 +lat_2=41.03333333333333 +lat_0=40.16666666666666 +lon_0=-74"), "{proj}");
        assert!(
            proj.contains("+x_0=300000.0000000001") || proj.contains("+x_0=300000"),
            "{proj}"
        );
        assert!(proj.contains("+towgs84=0,0,0"), "{proj}");
    }

    #[test]
    fn geographic_and_unsupported() {
        let wgs84 = r#"GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]]"#;
        assert!(
            to_proj(wgs84)
                .unwrap_or_default()
                .starts_with("+proj=longlat +a=6378137")
        );
        assert!(to_proj("PROJCS[\"x\",GEOGCS[\"g\",DATUM[\"d\",SPHEROID[\"s\",1,1]]],PROJECTION[\"Polyconic\"]]").is_err());
        assert!(to_proj("garbage").is_err());
    }
}
