//! The `-where` given to GDAL: parsed into a small grammar of comparisons on fields and written
//! out again by this server, so that what GDAL (and the driver under it: a VRT's source may be an
//! SQLite file with Spatialite loaded, or a database) receives holds only field names, quoted
//! values, numbers and a fixed set of operators. Comments, function calls, subqueries and
//! quoting tricks cannot survive the round trip: they do not parse.
//!
//! ```text
//! or      := and ("OR" and)*
//! and     := not ("AND" not)*
//! not     := "NOT" not | test
//! test    := sum ( op sum | ["NOT"] "LIKE" sum | ["NOT"] "IN" "(" sum ("," sum)* ")"
//!                | ["NOT"] "BETWEEN" sum "AND" sum | "IS" ["NOT"] "NULL" )?
//! sum     := product (("+" | "-" | "||") product)*
//! product := unary (("*" | "/") unary)*
//! unary   := "-" unary | number | 'string' | field | "(" or ")"
//! field   := name | "quoted name"
//! op      := = | == | <> | != | < | <= | > | >=
//! ```

/// Longest filter accepted, in characters.
const MAX_LENGTH: usize = 10_000;
/// Deepest nesting of parentheses and `NOT`s.
const MAX_DEPTH: usize = 64;
/// Most operators in a filter: a chain of them (`1+1+1…`) is as deep a tree for SQLite as
/// nesting, and SQLite refuses trees deeper than 1,000.
const MAX_OPERATORS: usize = 500;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Text(String),
    Number(String),
    Symbol(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                i += 1;
                if i < chars.len() && (chars[i] == '+' || chars[i] == '-') {
                    i += 1;
                }
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let number: String = chars[start..i].iter().collect();
            if number.parse::<f64>().is_err() {
                return Err(format!("{number:?} is not a number"));
            }
            out.push(Token::Number(number));
        } else if c == '\'' || c == '"' {
            // A quote inside is doubled, as SQL writes it.
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("a quote is not closed".to_owned()),
                    Some(&q) if q == c && chars.get(i + 1) == Some(&c) => {
                        value.push(c);
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&other) if other.is_control() => {
                        return Err("control characters are not allowed".to_owned());
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
            out.push(if c == '\'' {
                Token::Text(value)
            } else {
                Token::Quoted(value)
            });
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let symbol = ["<>", "!=", "<=", ">=", "==", "||"]
                .into_iter()
                .find(|s| two == *s)
                .or_else(|| {
                    ["=", "<", ">", "(", ")", ",", "+", "-", "*", "/"]
                        .into_iter()
                        .find(|s| s.starts_with(c))
                });
            match symbol {
                Some(s) => {
                    i += s.len();
                    out.push(Token::Symbol(s));
                }
                None => return Err(format!("{c:?} is not allowed")),
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    operators: usize,
    out: String,
    /// CQL2's `S_INTERSECTS` geometries (CRS84), each written into the SQL as true and tested
    /// on the features' geometries by the caller.
    shapes: Vec<geo::Geometry<f64>>,
    /// Whether every `S_INTERSECTS` stands at the top level (not inside parentheses or `NOT`).
    shapes_on_top: bool,
    /// Whether an `OR` joins the top level.
    top_or: bool,
    /// For SQL this server runs itself: the layer's fields (any other name is refused), and
    /// the values taken out of the text as parameters, numbered after `first_param`.
    sql: Option<Sql<'a>>,
}

struct Sql<'a> {
    fields: &'a [String],
    params: Vec<rusqlite::types::Value>,
    first_param: usize,
}

impl Parser<'_> {
    /// Writes `value` as the next parameter when writing SQL; false when writing for GDAL.
    fn parameter(&mut self, value: rusqlite::types::Value) -> bool {
        let Some(sql) = self.sql.as_mut() else {
            return false;
        };
        sql.params.push(value);
        let n = sql.first_param + sql.params.len();
        self.out.push('?');
        self.out.push_str(itoa::Buffer::new().format(n));
        true
    }
}

/// Refuses a coordinate outside CRS84's range (beyond it, products of coordinates lose all
/// precision and tests give wrong answers).
fn in_crs84(x: f64, y: f64) -> Result<(), String> {
    if (-180.0..=180.0).contains(&x) && (-90.0..=90.0).contains(&y) {
        Ok(())
    } else {
        Err(format!(
            "({x} {y}) is outside CRS84: longitude -180 to 180, latitude -90 to 90"
        ))
    }
}

/// Most coordinates in the geometries of one filter: each feature tested against a geometry
/// costs in proportion to its vertices times the feature's.
pub const MAX_COORDINATES: usize = 1_000;

impl Parser<'_> {
    /// `S_INTERSECTS(geometry, <literal>)` (either order), written as true: the caller tests
    /// the features against the geometry.
    fn intersects(&mut self) -> Result<(), String> {
        self.at += 2; // S_INTERSECTS (
        self.operator()?;
        let shape = if self.geometry_reference() {
            self.expect_symbol(",")?;
            self.literal()?
        } else {
            let shape = self.literal()?;
            self.expect_symbol(",")?;
            if !self.geometry_reference() {
                return Err(
                    "S_INTERSECTS compares the property geometry with a geometry".to_owned(),
                );
            }
            shape
        };
        self.expect_symbol(")")?;
        self.shapes_on_top &= self.depth == 0;
        // A marker, replaced once the whole filter is read: true when every S_INTERSECTS
        // stands at the top level, else a call of the per-query SQL function. (Control
        // characters never come from the client: the tokenizer refuses them.)
        self.out.push(SHAPE_MARK);
        self.out
            .push_str(itoa::Buffer::new().format(self.shapes.len()));
        self.out.push(SHAPE_MARK);
        self.shapes.push(shape);
        Ok(())
    }

    /// The queryable `geometry` (as `geometry` or `"geometry"`).
    fn geometry_reference(&mut self) -> bool {
        let found = matches!(
            self.tokens.get(self.at),
            Some(Token::Word(w) | Token::Quoted(w)) if w.eq_ignore_ascii_case("geometry")
        );
        if found {
            self.at += 1;
        }
        found
    }

    /// A CQL2 geometry literal: WKT (`POINT`, `LINESTRING`, `POLYGON` and their `MULTI`
    /// forms) or `BBOX(west, south, east, north)`, in CRS84.
    fn literal(&mut self) -> Result<geo::Geometry<f64>, String> {
        use geo::{Geometry, MultiLineString, MultiPoint, MultiPolygon, Point};
        let Some(Token::Word(kind)) = self.tokens.get(self.at).cloned() else {
            return Err("expected a geometry (POINT, POLYGON, BBOX…)".to_owned());
        };
        let kind = kind.to_ascii_uppercase();
        const KINDS: &[&str] = &[
            "BBOX",
            "POINT",
            "LINESTRING",
            "POLYGON",
            "MULTIPOINT",
            "MULTILINESTRING",
            "MULTIPOLYGON",
        ];
        if !KINDS.contains(&kind.as_str()) {
            return Err(format!(
                "{kind} is not a geometry this server reads ({}); S_INTERSECTS compares the queryable geometry with one",
                KINDS.join(", ")
            ));
        }
        self.at += 1;
        self.expect_symbol("(")?;
        let shape = match kind.as_str() {
            "BBOX" => {
                let n = self.list(Self::number)?;
                let (w, s, e, north) = match n.as_slice() {
                    [w, s, e, north] | [w, s, _, e, north, _] if s <= north => (*w, *s, *e, *north),
                    _ => {
                        return Err(
                            "BBOX needs west, south, east, north with south <= north".to_owned()
                        );
                    }
                };
                in_crs84(w, s)?;
                in_crs84(e, north)?;
                // Kept as boxes (not polygons), so that a projected layer can cut them to its
                // extent and bend their edges before moving them into its system.
                let rect = |w: f64, e: f64| Geometry::Rect(geo::Rect::new((w, s), (e, north)));
                // West greater than east crosses the antimeridian, as OGC API bboxes do.
                if w <= e {
                    rect(w, e)
                } else {
                    Geometry::GeometryCollection(geo::GeometryCollection(vec![
                        rect(w, 180.0),
                        rect(-180.0, e),
                    ]))
                }
            }
            "POINT" => Geometry::Point(Point(self.coordinate()?)),
            "LINESTRING" => Geometry::LineString(self.coordinates()?),
            "POLYGON" => Geometry::Polygon(self.rings()?),
            // A multipoint's points may be written bare or in parentheses.
            "MULTIPOINT" => Geometry::MultiPoint(MultiPoint(self.list(|p| {
                if p.peek_symbol("(") {
                    p.enclosed(|p| p.coordinate().map(Point))
                } else {
                    p.coordinate().map(Point)
                }
            })?)),
            "MULTILINESTRING" => Geometry::MultiLineString(MultiLineString(
                self.list(|p| p.enclosed(Self::coordinates))?,
            )),
            "MULTIPOLYGON" => {
                Geometry::MultiPolygon(MultiPolygon(self.list(|p| p.enclosed(Self::rings))?))
            }
            other => return Err(format!("{other} is not a geometry this server reads")),
        };
        self.expect_symbol(")")?;
        Ok(shape)
    }

    /// Rings `(x y, …), (x y, …)`: the first the exterior, the rest holes.
    fn rings(&mut self) -> Result<geo::Polygon<f64>, String> {
        let mut rings = self.list(|p| p.enclosed(Self::coordinates))?.into_iter();
        let exterior = rings.next().unwrap_or_else(|| geo::LineString(Vec::new()));
        Ok(geo::Polygon::new(exterior, rings.collect()))
    }

    /// `x y, x y, …`.
    fn coordinates(&mut self) -> Result<geo::LineString<f64>, String> {
        self.list(Self::coordinate).map(geo::LineString)
    }

    /// One or more `item`s separated by commas.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut items = vec![item(self)?];
        while self.symbol(",") {
            items.push(item(self)?);
        }
        Ok(items)
    }

    /// `item` in parentheses.
    fn enclosed<T>(
        &mut self,
        item: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<T, String> {
        self.expect_symbol("(")?;
        let value = item(self)?;
        self.expect_symbol(")")?;
        Ok(value)
    }

    /// `x y` (a third number, a height, is read and left out).
    fn coordinate(&mut self) -> Result<geo::Coord<f64>, String> {
        self.operators += 1;
        if self.operators > MAX_COORDINATES + MAX_OPERATORS {
            return Err(format!("more than {MAX_COORDINATES} coordinates"));
        }
        let (x, y) = (self.number()?, self.number()?);
        in_crs84(x, y)?;
        if matches!(self.tokens.get(self.at), Some(Token::Number(_)))
            || (self.peek_symbol("-")
                && matches!(self.tokens.get(self.at + 1), Some(Token::Number(_))))
        {
            self.number()?;
        }
        Ok(geo::coord! { x: x, y: y })
    }

    /// A number, with its sign.
    fn number(&mut self) -> Result<f64, String> {
        let negative = self.symbol("-");
        let Some(Token::Number(n)) = self.tokens.get(self.at) else {
            return Err("expected a number in the geometry".to_owned());
        };
        let value: f64 = n.parse().map_err(|_| format!("{n:?} is not a number"))?;
        self.at += 1;
        if !value.is_finite() {
            return Err("coordinates must be finite".to_owned());
        }
        Ok(if negative { -value } else { value })
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn peek_symbol(&self, symbol: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Symbol(s)) if *s == symbol)
    }

    fn word(&mut self, word: &str) -> bool {
        let found = self.peek_word(word);
        if found {
            self.at += 1;
        }
        found
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        let found = self.peek_symbol(symbol);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), String> {
        if self.symbol(symbol) {
            Ok(())
        } else {
            Err(format!("expected {symbol:?}"))
        }
    }

    fn operator(&mut self) -> Result<(), String> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(format!("more than {MAX_OPERATORS} operators"));
        }
        Ok(())
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("nested too deeply".to_owned());
        }
        Ok(())
    }

    fn or(&mut self) -> Result<(), String> {
        self.and()?;
        while self.word("OR") {
            self.top_or |= self.depth == 0;
            self.operator()?;
            self.out.push_str(" OR ");
            self.and()?;
        }
        Ok(())
    }

    fn and(&mut self) -> Result<(), String> {
        self.not()?;
        while self.word("AND") {
            self.operator()?;
            self.out.push_str(" AND ");
            self.not()?;
        }
        Ok(())
    }

    fn not(&mut self) -> Result<(), String> {
        if self.sql.is_some()
            && self.peek_word("S_INTERSECTS")
            && matches!(self.tokens.get(self.at + 1), Some(Token::Symbol("(")))
        {
            return self.intersects();
        }
        if self.word("NOT") {
            self.deeper()?;
            self.out.push_str("NOT ");
            self.not()?;
            self.depth -= 1;
            return Ok(());
        }
        self.test()
    }

    fn test(&mut self) -> Result<(), String> {
        self.sum()?;
        for op in ["<>", "!=", "<=", ">=", "==", "=", "<", ">"] {
            if self.symbol(op) {
                self.out.push_str(match op {
                    "!=" => " <> ",
                    "==" => " = ",
                    other => match other {
                        "<>" => " <> ",
                        "<=" => " <= ",
                        ">=" => " >= ",
                        "=" => " = ",
                        "<" => " < ",
                        _ => " > ",
                    },
                });
                return self.sum();
            }
        }
        let negated = self.word("NOT");
        if negated {
            self.out.push_str(" NOT");
        }
        if self.word("LIKE") {
            self.out.push_str(" LIKE ");
            return self.sum();
        }
        if self.word("IN") {
            self.out.push_str(" IN (");
            self.expect_symbol("(")?;
            self.sum()?;
            while self.symbol(",") {
                self.operator()?;
                self.out.push_str(", ");
                self.sum()?;
            }
            self.expect_symbol(")")?;
            self.out.push(')');
            return Ok(());
        }
        if self.word("BETWEEN") {
            self.out.push_str(" BETWEEN ");
            self.sum()?;
            if !self.word("AND") {
                return Err("BETWEEN needs AND".to_owned());
            }
            self.out.push_str(" AND ");
            return self.sum();
        }
        if negated {
            return Err("NOT must be followed by LIKE, IN or BETWEEN here".to_owned());
        }
        if self.word("IS") {
            self.out.push_str(" IS ");
            if self.word("NOT") {
                self.out.push_str("NOT ");
            }
            if !self.word("NULL") {
                return Err("IS must be followed by NULL or NOT NULL".to_owned());
            }
            self.out.push_str("NULL");
        }
        Ok(())
    }

    fn sum(&mut self) -> Result<(), String> {
        self.product()?;
        loop {
            let op = if self.symbol("+") {
                " + "
            } else if self.symbol("-") {
                " - "
            } else if self.symbol("||") {
                " || "
            } else {
                return Ok(());
            };
            self.operator()?;
            self.out.push_str(op);
            self.product()?;
        }
    }

    fn product(&mut self) -> Result<(), String> {
        self.unary()?;
        loop {
            let op = if self.symbol("*") {
                " * "
            } else if self.symbol("/") {
                " / "
            } else {
                return Ok(());
            };
            self.operator()?;
            self.out.push_str(op);
            self.unary()?;
        }
    }

    fn unary(&mut self) -> Result<(), String> {
        if self.symbol("-") {
            self.deeper()?;
            self.out.push('-');
            self.unary()?;
            self.depth -= 1;
            return Ok(());
        }
        if self.symbol("(") {
            self.deeper()?;
            self.out.push('(');
            self.or()?;
            self.expect_symbol(")")?;
            self.out.push(')');
            self.depth -= 1;
            return Ok(());
        }
        match self.tokens.get(self.at).cloned() {
            Some(Token::Number(n)) => {
                let value = n.parse::<i64>().map_or_else(
                    |_| rusqlite::types::Value::Real(n.parse::<f64>().unwrap_or_default()),
                    rusqlite::types::Value::Integer,
                );
                if !self.parameter(value) {
                    self.out.push_str(&n);
                }
            }
            Some(Token::Text(t)) => {
                if !self.parameter(rusqlite::types::Value::Text(t.clone())) {
                    self.out.push('\'');
                    self.out.push_str(&t.replace('\'', "''"));
                    self.out.push('\'');
                }
            }
            // CQL2's boolean literals.
            Some(Token::Word(w))
                if self.sql.is_some()
                    && (w.eq_ignore_ascii_case("TRUE") || w.eq_ignore_ascii_case("FALSE")) =>
            {
                let truth = w.eq_ignore_ascii_case("TRUE");
                self.parameter(rusqlite::types::Value::Integer(i64::from(truth)));
            }
            Some(Token::Word(w)) => {
                const RESERVED: &[&str] = &[
                    "and", "or", "not", "like", "in", "between", "is", "null", "select", "from",
                    "where",
                ];
                if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&w)) {
                    return Err(format!("{w} is not a field or a value here"));
                }
                if matches!(self.tokens.get(self.at + 1), Some(Token::Symbol("("))) {
                    return Err("functions are not allowed".to_owned());
                }
                self.push_field(&w)?;
            }
            Some(Token::Quoted(q)) => self.push_field(&q)?,
            Some(Token::Symbol(s)) => return Err(format!("unexpected {s:?}")),
            None => return Err("the filter ends too early".to_owned()),
        }
        self.at += 1;
        if self.peek_symbol("(") {
            return Err("functions are not allowed".to_owned());
        }
        Ok(())
    }

    fn push_field(&mut self, name: &str) -> Result<(), String> {
        if let Some(sql) = &self.sql
            && !sql.fields.iter().any(|f| f == name)
        {
            return Err(format!(
                "unknown property {name:?}; properties: {}",
                sql.fields.join(", ")
            ));
        }
        self.out.push('"');
        self.out.push_str(&name.replace('"', "\"\""));
        self.out.push('"');
        Ok(())
    }
}

/// Why a filter was refused: what is unknown, not allowed or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

/// The filter as this server writes it, or why it does not parse.
///
/// # Errors
/// A message saying what is not allowed or malformed.
pub fn canonical(filter: &str) -> Result<String, FilterError> {
    Ok(parse(filter, None).map_err(FilterError)?.out)
}

/// Marks where an `S_INTERSECTS` stood in the SQL being written.
const SHAPE_MARK: char = '\u{1}';

/// Stands for the layer's geometry column in a compiled filter, replaced by the plan.
pub const GEOMETRY_COLUMN: &str = "\u{2}";

/// The SQL function a compiled filter calls as `pozi_intersects(<geometry>, <k>)` for an
/// `S_INTERSECTS` that does not stand at its top level: true when the geometry meets
/// geometry `k` of [`Cql2::tested`]. Registered on the connection for the query alone.
pub const INTERSECTS_FUNCTION: &str = "pozi_intersects";

/// A CQL2 text filter compiled for SQLite.
#[derive(Debug, Clone, PartialEq)]
pub struct Cql2 {
    /// The SQL condition. An `S_INTERSECTS` at the top level is written as true (the caller
    /// tests [`Cql2::shapes`]); one elsewhere as a call of [`INTERSECTS_FUNCTION`] on
    /// [`GEOMETRY_COLUMN`].
    pub sql: String,
    /// Its values, as parameters.
    pub params: Vec<rusqlite::types::Value>,
    /// Geometries (CRS84) a feature must intersect, all of them: the filter's `S_INTERSECTS`
    /// when every one stands at its top level, joined to the rest by `AND`.
    pub shapes: Vec<geo::Geometry<f64>>,
    /// Geometries (CRS84) the SQL tests through [`INTERSECTS_FUNCTION`], by their place here.
    pub tested: Vec<geo::Geometry<f64>>,
}

/// A CQL2 text filter (basic comparisons, `LIKE`, `IN`, `BETWEEN`, `IS NULL`, `AND`, `OR`,
/// `NOT`, arithmetic, `TRUE`/`FALSE`, and `S_INTERSECTS` at the top level) as an SQL condition
/// on the layer's `fields`, its values as parameters numbered from `first_param + 1`.
///
/// # Errors
/// A message saying what is unknown, not allowed or malformed.
pub fn to_sql(filter: &str, fields: &[String], first_param: usize) -> Result<Cql2, FilterError> {
    let parser = parse(
        filter,
        Some(Sql {
            fields,
            params: Vec::new(),
            first_param,
        }),
    )
    .map_err(FilterError)?;
    let on_top = !parser.top_or && parser.shapes_on_top;
    let mut sql = String::with_capacity(parser.out.len());
    for (i, part) in parser.out.split(SHAPE_MARK).enumerate() {
        // Odd parts are the places of the S_INTERSECTS, between two marks.
        if i % 2 == 0 {
            sql.push_str(part);
        } else if on_top {
            sql.push('1');
        } else {
            sql.push_str(&format!("{INTERSECTS_FUNCTION}({GEOMETRY_COLUMN}, {part})"));
        }
    }
    let (shapes, tested) = if on_top {
        (parser.shapes, Vec::new())
    } else {
        (Vec::new(), parser.shapes)
    };
    Ok(Cql2 {
        params: parser.sql.map(|s| s.params).unwrap_or_default(),
        sql,
        shapes,
        tested,
    })
}

fn parse<'a>(filter: &str, sql: Option<Sql<'a>>) -> Result<Parser<'a>, String> {
    if filter.chars().count() > MAX_LENGTH {
        return Err(format!("longer than {MAX_LENGTH} characters"));
    }
    let mut parser = Parser {
        tokens: tokens(filter)?,
        at: 0,
        depth: 0,
        operators: 0,
        out: String::new(),
        shapes: Vec::new(),
        shapes_on_top: true,
        top_or: false,
        sql,
    };
    parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err("unexpected text after the filter".to_owned());
    }
    Ok(parser)
}

#[cfg(test)]
mod tests {
    use super::{Cql2, GEOMETRY_COLUMN, INTERSECTS_FUNCTION, canonical, to_sql};
    use rusqlite::types::Value;

    #[test]
    fn s_intersects_takes_wkt_and_bbox_at_the_top_level() {
        let fields = ["name".to_owned()];
        let cql2 = to_sql(
            "name = 'x' AND S_INTERSECTS(geometry, MULTIPOLYGON(((0 0, 1 0, 1 1, 0 0)), ((-2.5 -2, -1 -2, -1 -1e0, -2.5 -2)))) AND S_INTERSECTS(geometry, BBOX(170, -50, -170, -10))",
            &fields,
            0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cql2.sql, "\"name\" = ?1 AND 1 AND 1");
        assert_eq!(cql2.shapes.len(), 2);
        match &cql2.shapes[0] {
            geo::Geometry::MultiPolygon(m) => {
                assert_eq!(m.0.len(), 2);
                assert_eq!(m.0[1].exterior().0[0], geo::coord! { x: -2.5, y: -2.0 });
            }
            other => panic!("{other:?}"),
        }
        // West greater than east: two boxes, either side of the antimeridian.
        assert!(matches!(&cql2.shapes[1], geo::Geometry::GeometryCollection(c) if c.0.len() == 2));
        // Elsewhere than the top level: a call of the per-query function, by place.
        let nested = to_sql(
            "S_INTERSECTS(geometry, POINT(1 2)) OR NOT (name = 'x' AND S_INTERSECTS(geometry, POINT(3 4)))",
            &fields,
            0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            nested.sql,
            format!(
                "{INTERSECTS_FUNCTION}({GEOMETRY_COLUMN}, 0) OR NOT (\"name\" = ?1 AND {INTERSECTS_FUNCTION}({GEOMETRY_COLUMN}, 1))"
            )
        );
        assert!(nested.shapes.is_empty());
        assert_eq!(nested.tested.len(), 2);
        for refused in [
            "S_INTERSECTS(geometry, POINT(1))",
            "S_INTERSECTS(geometry, BBOX(0, 10, 1, 5))",
            "S_INTERSECTS(name, POINT(1 2))",
            "pozi_intersects(geometry, 0)",
        ] {
            assert!(
                to_sql(refused, &fields, 0).is_err(),
                "{refused} was accepted"
            );
        }
        // GDAL's -where has no spatial functions.
        assert!(canonical("S_INTERSECTS(geometry, POINT(1 2))").is_err());
    }

    #[test]
    fn cql2_becomes_parameterised_sql_on_known_fields() {
        let fields = ["name".to_owned(), "pop_est".to_owned(), "active".to_owned()];
        let Cql2 { sql, params, .. } = to_sql(
            "name LIKE 'N%' AND (pop_est >= 1000000 OR active = TRUE) AND name <> 'it''s'",
            &fields,
            2,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sql,
            "\"name\" LIKE ?3 AND (\"pop_est\" >= ?4 OR \"active\" = ?5) AND \"name\" <> ?6"
        );
        assert_eq!(
            params,
            vec![
                Value::Text("N%".to_owned()),
                Value::Integer(1_000_000),
                Value::Integer(1),
                Value::Text("it's".to_owned()),
            ]
        );
        let unknown = to_sql("colour = 'red'", &fields, 0).unwrap_err();
        assert!(
            unknown.0.contains("unknown property \"colour\""),
            "{unknown}"
        );
        assert!(to_sql("name = sqlite_version()", &fields, 0).is_err());
    }

    #[test]
    fn filters_on_fields_are_written_again() {
        for (filter, written) in [
            ("continent='Oceania'", "\"continent\" = 'Oceania'"),
            (
                "(pop_est > 5e6 OR name LIKE 'A%') AND NOT iso_a3 IN ('AUS', 'NZL')",
                "(\"pop_est\" > 5e6 OR \"name\" LIKE 'A%') AND NOT \"iso_a3\" IN ('AUS', 'NZL')",
            ),
            ("name = 'it''s'", "\"name\" = 'it''s'"),
            (
                "\"Shape Area\" BETWEEN 1 AND -2.5",
                "\"Shape Area\" BETWEEN 1 AND -2.5",
            ),
            (
                "a IS NOT NULL and b != 3",
                "\"a\" IS NOT NULL AND \"b\" <> 3",
            ),
            ("x NOT LIKE 'select (1)'", "\"x\" NOT LIKE 'select (1)'"),
        ] {
            assert_eq!(canonical(filter).as_deref(), Ok(written), "{filter}");
        }
    }

    #[test]
    fn anything_else_does_not_parse() {
        for filter in [
            "sqlite_version/**/() IS NOT NULL",
            "`sqlite_version`() IS NOT NULL",
            "[f](1) = 1",
            "f (1) = 1",
            "SqlProc_Execute(SqlProc_FromText('VACUUM INTO ''x'''))",
            "x IN (SELECT name FROM t)",
            "a = 1; DROP TABLE t",
            "a = 'unclosed",
            "a = \"b\"(1)",
            "",
        ] {
            assert!(canonical(filter).is_err(), "{filter} parsed");
        }
        assert!(canonical(&"(".repeat(100_000)).is_err());
        // A chain of operators is as deep for SQLite as nesting.
        let chain = format!("a = 1{}", "+1".repeat(3_000));
        assert!(canonical(&chain).unwrap_err().0.contains("operators"));
        let chain = format!("a IN (1{})", ",1".repeat(3_000));
        assert!(canonical(&chain).is_err());
        // A comment cannot survive: dashes are operators, written apart.
        let written = canonical("a = 1 -- comment").unwrap_or_default();
        assert!(!written.contains("--"), "{written}");
        assert!(canonical(&format!("{}a = 1{}", "(".repeat(70), ")".repeat(70))).is_err());
    }
}
