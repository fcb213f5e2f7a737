//! The options of `/ogr2ogr` as existing web app configurations write them: ogr2ogr's, with
//! `|` for spaces. Parsed into what the request asks; anything unknown or unsupported is named
//! in the error.

use crate::gis::query::plan::Selection;

/// Why the options were refused: the option that is unknown, unsupported or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionsError(pub String);

/// What the options ask for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Options {
    /// A layer named after the source, as ogr2ogr takes it.
    pub layer: Option<String>,
    /// `-where`: an SQL expression on the layer's fields.
    pub filter: Option<String>,
    /// `-sql`: a whole SELECT statement.
    pub sql: Option<String>,
    /// `-select`: the fields to keep.
    pub select: Option<Vec<String>>,
    /// `-spat xmin ymin xmax ymax`.
    pub spat: Option<[f64; 4]>,
    /// `-limit N`.
    pub limit: Option<u64>,
    /// `-nln`: the output collection's name.
    pub name: Option<String>,
    /// `-simplify tolerance`, in the data's units (degrees for WGS 84).
    pub simplify: Option<f64>,
    /// `-oo KEY=VALUE` open options for CSV and Shapefile sources.
    pub open_options: Vec<(String, String)>,
}

/// Options that take a value and are passed over (output is always RFC 7946 GeoJSON in
/// WGS 84, which is what these ask for in existing configurations).
const ACCEPTED: &[&str] = &["-f", "-t_srs", "-lco", "-dialect", "-s_srs", "-a_srs"];
/// Options without a value that are passed over.
const ACCEPTED_FLAGS: &[&str] = &[
    "-skipfailures",
    "-overwrite",
    "-progress",
    "-q",
    "--quiet",
    "-preserve_fid",
];
/// Options answered natively (each takes a value).
const NATIVE_OPTIONS: &[&str] = &[
    "-oo",
    "-where",
    "-sql",
    "-select",
    "-spat",
    "-limit",
    "-nln",
    "-simplify",
];

/// Whether `token` is an option this parser knows, which ends a multi-token `-where` or `-sql`.
fn is_option(token: &str) -> bool {
    [NATIVE_OPTIONS, ACCEPTED, ACCEPTED_FLAGS]
        .iter()
        .any(|list| list.contains(&token))
}

impl Options {
    /// What the options ask of a layer.
    #[must_use]
    pub fn selection(&self) -> Selection {
        Selection {
            fields: self.select.clone(),
            filter: self.filter.clone(),
            spat: self.spat,
            limit: self.limit,
            simplify: self.simplify,
            name: self.name.clone(),
        }
    }
}

/// Splits options on `|` and spaces, keeping double-quoted text together.
fn tokens(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in options.chars() {
        match c {
            '"' => quoted = !quoted,
            '|' | ' ' if !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Parses ogr2ogr options.
///
/// # Errors
/// A message naming the option that is unknown, unsupported or malformed.
pub fn parse(options: &str) -> Result<Options, OptionsError> {
    read(options).map_err(OptionsError)
}

fn read(options: &str) -> Result<Options, String> {
    let tokens = tokens(options);
    let mut parsed = Options::default();
    let mut i = 0;
    let value = |i: usize, option: &str| {
        tokens
            .get(i + 1)
            .cloned()
            .ok_or_else(|| format!("{option} needs a value"))
    };
    while i < tokens.len() {
        let token = tokens[i].as_str();
        match token {
            "-where" | "-sql" => {
                // Everything up to the next option: `|` stands for spaces inside the expression.
                let mut j = i + 1;
                while j < tokens.len() && !is_option(&tokens[j]) {
                    j += 1;
                }
                if j == i + 1 {
                    return Err(format!("{token} needs a value"));
                }
                let text = tokens[i + 1..j].join(" ");
                if token == "-where" {
                    parsed.filter = Some(text);
                } else {
                    parsed.sql = Some(text);
                }
                i = j;
                continue;
            }
            "-select" => {
                let fields: Vec<String> = value(i, token)?
                    .split(',')
                    .map(|f| f.trim().to_owned())
                    .filter(|f| !f.is_empty())
                    .collect();
                parsed.select = Some(fields);
                i += 2;
            }
            "-spat" => {
                let numbers: Vec<f64> = (1..=4)
                    .map(|k| {
                        tokens
                            .get(i + k)
                            .and_then(|t| t.parse::<f64>().ok())
                            .filter(|v| v.is_finite())
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| "-spat needs four numbers: xmin ymin xmax ymax".to_owned())?;
                if numbers[0] > numbers[2] || numbers[1] > numbers[3] {
                    return Err("-spat: xmin must not exceed xmax, nor ymin ymax".to_owned());
                }
                parsed.spat = Some([numbers[0], numbers[1], numbers[2], numbers[3]]);
                i += 5;
            }
            "-limit" => {
                let text = value(i, token)?;
                // SQLite's LIMIT is a signed 64-bit integer.
                parsed.limit = Some(
                    text.parse::<u64>()
                        .ok()
                        .filter(|n| i64::try_from(*n).is_ok())
                        .ok_or_else(|| {
                            format!(
                                "-limit: {text:?} is not a whole number from 0 to {}",
                                i64::MAX
                            )
                        })?,
                );
                i += 2;
            }
            "-oo" => {
                let pair = value(i, token)?;
                let (key, val) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("-oo {pair}: expected KEY=VALUE"))?;
                parsed.open_options.push((key.to_owned(), val.to_owned()));
                crate::gis::source::readers::OpenOptions::parse(&parsed.open_options)
                    .map_err(|e| e.0)?;
                i += 2;
            }
            "-nln" => {
                parsed.name = Some(value(i, token)?);
                i += 2;
            }
            "-simplify" => {
                let text = value(i, token)?;
                let tolerance = text
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t >= 0.0);
                parsed.simplify =
                    Some(tolerance.ok_or_else(|| {
                        format!("-simplify: {text:?} is not a non-negative number")
                    })?);
                i += 2;
            }
            "-f" => {
                let format = value(i, token)?;
                if !format.eq_ignore_ascii_case("geojson") {
                    return Err(format!("-f {format}: only GeoJSON output is served"));
                }
                i += 2;
            }
            "-t_srs" => {
                let srs = value(i, token)?;
                if !["EPSG:4326", "WGS84", "CRS84", "OGC:CRS84"]
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&srs))
                {
                    return Err(format!("-t_srs {srs}: output is always WGS 84 (EPSG:4326)"));
                }
                i += 2;
            }
            _ if ACCEPTED.contains(&token) => i += 2,
            _ if ACCEPTED_FLAGS.contains(&token) => i += 1,
            _ if token.starts_with('-')
                && token.len() > 1
                && !token[1..].starts_with(|c: char| c.is_ascii_digit()) =>
            {
                return Err(format!(
                    "unsupported option {token}; supported: -where, -sql, -select, -spat, -limit, -nln, -f GeoJSON, -t_srs EPSG:4326"
                ));
            }
            _ => {
                if parsed.layer.is_some() {
                    return Err(format!(
                        "unexpected {token:?}: only one layer name may follow the options"
                    ));
                }
                parsed.layer = Some(token.to_owned());
                i += 1;
            }
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_the_web_app_writes_them() {
        let o = parse("-where|continent='Oceania'").unwrap_or_default();
        assert_eq!(o.filter.as_deref(), Some("continent='Oceania'"));
        let o =
            parse("-where|name|=|'New|Zealand'|-select|name,pop_est|-limit|5").unwrap_or_default();
        assert_eq!(o.filter.as_deref(), Some("name = 'New Zealand'"));
        assert_eq!(
            o.select,
            Some(vec!["name".to_owned(), "pop_est".to_owned()])
        );
        assert_eq!(o.limit, Some(5));
        let o = parse("-f|GeoJSON|-t_srs|EPSG:4326|-spat|140|-45|155|-10|countries")
            .unwrap_or_default();
        assert_eq!(o.spat, Some([140.0, -45.0, 155.0, -10.0]));
        assert_eq!(o.layer.as_deref(), Some("countries"));
        let o = parse("-where|\"pop_est > 1000000\"").unwrap_or_default();
        assert_eq!(o.filter.as_deref(), Some("pop_est > 1000000"));
        let o = parse("-spat|-10|-10.5|10|10").unwrap_or_default();
        assert_eq!(o.spat, Some([-10.0, -10.5, 10.0, 10.0]));
    }

    #[test]
    fn bad_options_are_named() {
        for (options, wanted) in [
            ("-spat|1|2|3", "-spat needs four numbers"),
            ("-limit|x", "-limit: \"x\""),
            ("-where", "-where needs a value"),
            ("-zfield|z", "unsupported option -zfield"),
            ("-f|CSV", "only GeoJSON"),
            ("-t_srs|EPSG:3857", "always WGS 84"),
            ("a|b", "only one layer name"),
        ] {
            let error = parse(options).unwrap_err().0;
            assert!(error.contains(wanted), "{options}: {error}");
        }
    }
}
