//! Turning a JSON path into a line and column of the config text, and into the dotted form
//! operators read (`restarts[2].schedule`).

use jsonc_parser::ast::Value;
use jsonc_parser::common::Ranged;
use jsonc_parser::{CollectOptions, ParseOptions};

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

/// Renders a path as `log.level` or `restarts[2].schedule`; the empty path is `(top level)`.
pub fn dotted(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if out.is_empty() => out.push_str(key),
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        "(top level)".to_owned()
    } else {
        out
    }
}

/// Parses a JSON pointer (`/restarts/2/schedule`) into segments.
pub fn from_pointer(pointer: &str) -> Vec<Segment> {
    pointer
        .split('/')
        .skip(1)
        .map(|raw| {
            let key = raw.replace("~1", "/").replace("~0", "~");
            match key.parse::<usize>() {
                Ok(i) => Segment::Index(i),
                Err(_) => Segment::Key(key),
            }
        })
        .collect()
}

/// 1-based line and column of the value at `path` in `text` (or of its key, when `key` is set
/// and the path ends in an object member); the nearest existing ancestor when it is absent.
pub fn line_column(text: &str, path: &[Segment], key: bool) -> (usize, usize) {
    let offset =
        jsonc_parser::parse_to_ast(text, &CollectOptions::default(), &ParseOptions::default())
            .ok()
            .and_then(|parsed| parsed.value.map(|root| offset_of(&root, path, key)))
            .unwrap_or(0);
    position(text, offset)
}

fn offset_of(value: &Value<'_>, path: &[Segment], key: bool) -> usize {
    let Some((first, rest)) = path.split_first() else {
        return value.range().start;
    };
    match (value, first) {
        (Value::Object(object), Segment::Key(name)) => {
            match object.properties.iter().find(|p| p.name.as_str() == name) {
                Some(prop) if rest.is_empty() && key => prop.range.start,
                Some(prop) => offset_of(&prop.value, rest, key),
                None => value.range().start,
            }
        }
        (Value::Array(array), Segment::Index(i)) => match array.elements.get(*i) {
            Some(element) => offset_of(element, rest, key),
            None => value.range().start,
        },
        _ => value.range().start,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_and_locate() {
        let text = "{\n  \"restarts\": [\n    {},\n    {\"schedule\": 5}\n  ]\n}";
        let path = from_pointer("/restarts/1/schedule");
        assert_eq!(dotted(&path), "restarts[1].schedule");
        assert_eq!(line_column(text, &path, false), (4, 18));
        assert_eq!(line_column(text, &path, true), (4, 6));
        assert_eq!(dotted(&[]), "(top level)");
    }
}
