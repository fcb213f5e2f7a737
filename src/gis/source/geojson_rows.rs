//! One GeoJSON feature read straight into a GeoPackage row, in one pass: its properties go into
//! the writer's fields (added and widened as they come) and a reused row of cells, its geometry
//! into a `geo` geometry. Nothing else is built on the way (no JSON tree, no owned keys), which
//! is what makes a million-feature import a single read of the file.
//!
//! What is accepted is, nearly, what the `geojson` crate accepts for a feature: `type` must be
//! `"Feature"`, `geometry` must be present (an object or null), `properties` an object or null,
//! `id` a string or a number, `bbox` null or numbers; positions have at least two numbers
//! (further ones, such as heights, are dropped). It differs where nothing is built: members no
//! one reads are skipped without checking their text is UTF-8, and a property repeated with a
//! null last keeps the value before. (That crate, and GDAL-style readers built on it, parse a
//! JSON tree first; reading straight into the row is what makes this several times faster.)

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::gis::source::gpkg_write::{Cells, FieldType, Fields};

/// Reads one feature object from `bytes`: its properties into `fields` and `cells` (cleared
/// first), and its geometry (`None` for a null geometry).
///
/// # Errors
/// When the bytes are not a GeoJSON feature, with serde_json's line and column.
pub fn read_feature(
    bytes: &[u8],
    fields: &mut Fields,
    cells: &mut Cells,
) -> Result<Option<geo::Geometry<f64>>, String> {
    cells.clear();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let geometry = FeatureSeed { fields, cells }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(geometry)
}

/// A key of a feature or geometry object.
enum Key {
    Type,
    Geometry,
    Properties,
    Id,
    Bbox,
    Coordinates,
    Geometries,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "type" => Key::Type,
                    "geometry" => Key::Geometry,
                    "properties" => Key::Properties,
                    "id" => Key::Id,
                    "bbox" => Key::Bbox,
                    "coordinates" => Key::Coordinates,
                    "geometries" => Key::Geometries,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A string, borrowed from the input where it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct FeatureSeed<'a> {
    fields: &'a mut Fields,
    cells: &'a mut Cells,
}

impl<'de> DeserializeSeed<'de> for FeatureSeed<'_> {
    type Value = Option<geo::Geometry<f64>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FeatureSeed<'_> {
    type Value = Option<geo::Geometry<f64>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GeoJSON Feature object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kind: Option<Text<'de>> = None;
        let mut geometry: Option<Option<geo::Geometry<f64>>> = None;
        let mut properties = false;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => kind = Some(map.next_value()?),
                Key::Geometry => geometry = Some(map.next_value_seed(GeometrySeed)?),
                Key::Properties => {
                    if properties {
                        return Err(de::Error::duplicate_field("properties"));
                    }
                    properties = true;
                    map.next_value_seed(Properties {
                        fields: self.fields,
                        cells: self.cells,
                    })?;
                }
                Key::Id => map.next_value::<Id>().map(|_| ())?,
                Key::Bbox => map.next_value::<Option<Vec<f64>>>().map(|_| ())?,
                _ => map.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        match kind {
            None => return Err(de::Error::custom("a feature without \"type\"")),
            Some(Text(k)) if k != "Feature" => {
                return Err(de::Error::custom(format!(
                    "\"type\" is \"{k}\", not \"Feature\""
                )));
            }
            Some(_) => {}
        }
        geometry.ok_or_else(|| de::Error::custom("a feature without \"geometry\""))
    }
}

/// A feature's `id`: a string or a number.
struct Id;

impl<'de> de::Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number as the feature's id")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Id, E> {
                Ok(Id)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Id, E> {
                Ok(Id)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Id, E> {
                Ok(Id)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Id, E> {
                Ok(Id)
            }
        }
        d.deserialize_any(V)
    }
}

/// A feature's `properties`, read into the fields and the row.
struct Properties<'a> {
    fields: &'a mut Fields,
    cells: &'a mut Cells,
}

impl<'de> DeserializeSeed<'de> for Properties<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Properties<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object or null as the feature's properties")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut place = 0;
        while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
            map.next_value_seed(Property {
                fields: &mut *self.fields,
                cells: &mut *self.cells,
                name: &name,
                place,
            })?;
            place += 1;
        }
        Ok(())
    }
}

/// One property's value, put in its field's column.
struct Property<'a> {
    fields: &'a mut Fields,
    cells: &'a mut Cells,
    name: &'a str,
    place: usize,
}

impl Property<'_> {
    fn column<E: de::Error>(&mut self, kind: FieldType) -> Result<usize, E> {
        self.fields
            .column(self.name, kind, self.place)
            .map_err(E::custom)
    }

    fn json<E: de::Error>(mut self, value: &serde_json::Value) -> Result<(), E> {
        let column = self.column(FieldType::Text)?;
        self.cells.text(column, &value.to_string());
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Property<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Property<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // Null: no value, and no field made for it.
        Ok(())
    }
    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        let column = self.column(FieldType::Integer)?;
        self.cells.integer(column, i64::from(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        let column = self.column(FieldType::Integer)?;
        self.cells.integer(column, v);
        Ok(())
    }
    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        let column = self.column(FieldType::Integer)?;
        match i64::try_from(v) {
            Ok(v) => self.cells.integer(column, v),
            Err(_) => self.cells.big_integer(column, v),
        }
        Ok(())
    }
    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        let column = self.column(FieldType::Real)?;
        self.cells.real(column, v);
        Ok(())
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        let column = self.column(FieldType::Text)?;
        self.cells.text(column, v);
        Ok(())
    }
    // Arrays and objects are kept as JSON text.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let value = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        self.json(&value)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let value = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.json(&value)
    }
}

/// The `coordinates` of a geometry, before its type says what they make.
enum Coordinates {
    Position(geo::Coord<f64>),
    List(Vec<Coordinates>),
}

/// An element of a coordinates array: a number of a position, or a nested array.
enum Element {
    Number(f64),
    Nested(Coordinates),
}

impl<'de> de::Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Element;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or an array of coordinates")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Element, E> {
                Ok(Element::Number(v))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Element, E> {
                Ok(Element::Number(v as f64))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Element, E> {
                Ok(Element::Number(v as f64))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Element, A::Error> {
                CoordinatesVisitor.visit_seq(seq).map(Element::Nested)
            }
        }
        d.deserialize_any(V)
    }
}

struct CoordinatesVisitor;

impl<'de> Visitor<'de> for CoordinatesVisitor {
    type Value = Coordinates;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of coordinates")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Coordinates, A::Error> {
        match seq.next_element::<Element>()? {
            None => Ok(Coordinates::List(Vec::new())),
            Some(Element::Number(x)) => {
                let Some(Element::Number(y)) = seq.next_element::<Element>()? else {
                    return Err(de::Error::custom("a position needs at least two numbers"));
                };
                while let Some(more) = seq.next_element::<Element>()? {
                    if let Element::Nested(_) = more {
                        return Err(de::Error::custom("a position holds only numbers"));
                    }
                }
                Ok(Coordinates::Position(geo::Coord { x, y }))
            }
            Some(Element::Nested(first)) => {
                let mut items = vec![first];
                while let Some(more) = seq.next_element::<Element>()? {
                    match more {
                        Element::Nested(c) => items.push(c),
                        Element::Number(_) => {
                            return Err(de::Error::custom("an array mixes numbers and positions"));
                        }
                    }
                }
                Ok(Coordinates::List(items))
            }
        }
    }
}

impl<'de> de::Deserialize<'de> for Coordinates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(CoordinatesVisitor)
    }
}

/// A geometry object, or null.
struct GeometrySeed;

impl<'de> DeserializeSeed<'de> for GeometrySeed {
    type Value = Option<geo::Geometry<f64>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for GeometrySeed {
    type Value = Option<geo::Geometry<f64>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GeoJSON geometry object or null")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kind: Option<Text<'de>> = None;
        let mut coordinates: Option<Coordinates> = None;
        let mut geometries: Option<Vec<geo::Geometry<f64>>> = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => kind = Some(map.next_value()?),
                Key::Coordinates => coordinates = Some(map.next_value()?),
                Key::Geometries => geometries = Some(map.next_value::<Members>()?.0),
                Key::Bbox => map.next_value::<Option<Vec<f64>>>().map(|_| ())?,
                _ => map.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        let Some(Text(kind)) = kind else {
            return Err(de::Error::custom("a geometry without \"type\""));
        };
        if kind == "GeometryCollection" {
            let members = geometries
                .ok_or_else(|| de::Error::custom("a GeometryCollection without \"geometries\""))?;
            return Ok(Some(geo::Geometry::GeometryCollection(
                geo::GeometryCollection(members),
            )));
        }
        let coordinates = coordinates
            .ok_or_else(|| de::Error::custom(format!("a {kind} without \"coordinates\"")))?;
        shape(&kind, coordinates)
            .map(Some)
            .map_err(de::Error::custom)
    }
}

/// The members of a GeometryCollection (null members are not allowed).
struct Members(Vec<geo::Geometry<f64>>);

impl<'de> de::Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of geometries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(g) = seq.next_element_seed(GeometrySeed)? {
                    out.push(g.ok_or_else(|| {
                        de::Error::custom("a null member of a GeometryCollection")
                    })?);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_seq(V)
    }
}

fn position(c: Coordinates) -> Result<geo::Coord<f64>, String> {
    match c {
        Coordinates::Position(p) => Ok(p),
        Coordinates::List(_) => Err("expected a position, found an array of them".to_owned()),
    }
}

fn list(c: Coordinates) -> Result<Vec<Coordinates>, String> {
    match c {
        Coordinates::List(items) => Ok(items),
        Coordinates::Position(_) => {
            Err("expected an array of coordinates, found a position".to_owned())
        }
    }
}

fn line(c: Coordinates) -> Result<geo::LineString<f64>, String> {
    list(c)?
        .into_iter()
        .map(position)
        .collect::<Result<Vec<_>, _>>()
        .map(geo::LineString)
}

fn polygon(c: Coordinates) -> Result<geo::Polygon<f64>, String> {
    let mut rings = list(c)?.into_iter().map(line);
    let exterior = rings
        .next()
        .transpose()?
        .unwrap_or_else(|| geo::LineString(Vec::new()));
    let interiors = rings.collect::<Result<Vec<_>, _>>()?;
    Ok(geo::Polygon::new(exterior, interiors))
}

/// The geometry `kind` makes of `coordinates`.
fn shape(kind: &str, c: Coordinates) -> Result<geo::Geometry<f64>, String> {
    Ok(match kind {
        "Point" => geo::Geometry::Point(geo::Point(position(c)?)),
        "MultiPoint" => geo::Geometry::MultiPoint(geo::MultiPoint(
            list(c)?
                .into_iter()
                .map(|p| position(p).map(geo::Point))
                .collect::<Result<_, _>>()?,
        )),
        "LineString" => geo::Geometry::LineString(line(c)?),
        "MultiLineString" => geo::Geometry::MultiLineString(geo::MultiLineString(
            list(c)?.into_iter().map(line).collect::<Result<_, _>>()?,
        )),
        "Polygon" => geo::Geometry::Polygon(polygon(c)?),
        "MultiPolygon" => geo::Geometry::MultiPolygon(geo::MultiPolygon(
            list(c)?
                .into_iter()
                .map(polygon)
                .collect::<Result<_, _>>()?,
        )),
        other => return Err(format!("\"{other}\" is not a GeoJSON geometry type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gis::source::gpkg_write::Field;

    fn read(json: &str) -> Result<(Option<geo::Geometry<f64>>, Vec<Field>), String> {
        let mut fields = Fields::default();
        let mut cells = Cells::default();
        let g = read_feature(json.as_bytes(), &mut fields, &mut cells)?;
        Ok((g, fields.list().to_vec()))
    }

    #[test]
    fn points_and_properties() {
        let (g, fields) = read(
            r#"{"properties":{"a":1,"b":2.5,"c":"x","d":null,"e":true,"f":[1,{"k":2}]},"type":"Feature","geometry":{"coordinates":[1,2,3],"type":"Point"}}"#,
        )
        .unwrap();
        assert_eq!(g, Some(geo::Geometry::Point(geo::Point::new(1.0, 2.0))));
        let kinds: Vec<(String, FieldType)> =
            fields.into_iter().map(|f| (f.name, f.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("a".to_owned(), FieldType::Integer),
                ("b".to_owned(), FieldType::Real),
                ("c".to_owned(), FieldType::Text),
                ("e".to_owned(), FieldType::Integer),
                ("f".to_owned(), FieldType::Text),
            ]
        );
    }

    #[test]
    fn polygons_with_holes_and_collections() {
        let (g, _) = read(
            r#"{"type":"Feature","properties":null,"geometry":{"type":"GeometryCollection","geometries":[{"type":"Polygon","coordinates":[[[0,0],[4,0],[4,4],[0,0]],[[1,1],[2,1],[1,2],[1,1]]]},{"type":"MultiLineString","coordinates":[[[0,0],[1,1]]]}]}}"#,
        )
        .unwrap();
        let Some(geo::Geometry::GeometryCollection(c)) = g else {
            panic!("not a collection")
        };
        let geo::Geometry::Polygon(p) = &c.0[0] else {
            panic!("not a polygon")
        };
        assert_eq!(p.interiors().len(), 1);
        assert_eq!(p.exterior().0.len(), 4);
    }

    #[test]
    fn refusals() {
        for bad in [
            r#"{"type":"Feature","properties":{}}"#,
            r#"{"type":"Topology","geometry":null}"#,
            r#"{"geometry":null}"#,
            r#"{"type":"Feature","geometry":{"type":"Point","coordinates":[1]}}"#,
            r#"{"type":"Feature","geometry":{"type":"Point","coordinates":[[1,2]]}}"#,
            r#"{"type":"Feature","geometry":{"type":"Circle","coordinates":[1,2]}}"#,
            r#"{"type":"Feature","geometry":null,"properties":[1]}"#,
            r#"{"type":"Feature","geometry":null,"id":true}"#,
            r#"{"type":"Feature","geometry":null} x"#,
            r#"{"type":"Feature","geometry":null,"properties":{},"properties":{}}"#,
            r#"{"type":"Feature","geometry":{"type":"Point","coordinates":[1,2],"bbox":"x"}}"#,
        ] {
            assert!(read(bad).is_err(), "{bad} was accepted");
        }
        assert!(read(r#"{"type":"Feature","geometry":null,"id":"a","bbox":null}"#).is_ok());
    }
}
