//! `catalogue` jobs (what the original's Publisher script did from a scheduled task): a WMS or
//! WFS capabilities document (or QGIS Server's `GetProjectSettings`) fetched, its layers kept,
//! dropped, renamed and put in order by title, and published as a static XML file, so the web
//! app loads its catalogue at once instead of waiting on the map server.
//!
//! The document is edited as a tree of quick-xml events: only the layers (the `Layer`s inside
//! the top `Layer` of WMS, the `FeatureType`s of WFS's `FeatureTypeList`) move or go, and only
//! their titles change; every other byte (namespaces, declarations, comments, attributes) is
//! written back as it came. Nested layer groups move with their parent.

use std::sync::atomic::Ordering;

use quick_xml::events::{BytesText, Event};
use regex::Regex;

use crate::config::sync::{SyncJob, SyncSource, title_pattern};
use crate::sync::{JobPaths, Progress, Report, SyncError, Validators, publish};

/// An element with its children, or any other event.
#[derive(Debug, Clone)]
enum Node {
    Element {
        start: Event<'static>,
        children: Vec<Node>,
        end: Event<'static>,
    },
    Other(Event<'static>),
}

impl Node {
    fn local_name(&self) -> Option<Vec<u8>> {
        match self {
            Self::Element {
                start: Event::Start(s),
                ..
            } => Some(s.local_name().as_ref().to_vec()),
            _ => None,
        }
    }

    fn is(&self, name: &[u8]) -> bool {
        self.local_name().is_some_and(|n| n == name)
    }
}

/// What a job does to the layers.
struct Rules {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    rename: Vec<(Regex, String)>,
    order: Vec<Regex>,
}

fn patterns(list: &[String]) -> Result<Vec<Regex>, SyncError> {
    list.iter()
        .map(|p| title_pattern(p).map_err(|e| SyncError::Source(format!("{p:?}: {e}"))))
        .collect()
}

fn parse(xml: &str) -> Result<Vec<Node>, SyncError> {
    let bad = |e: &dyn std::fmt::Display, at: u64| {
        SyncError::Source(format!(
            "not a capabilities document (XML error at byte {at}): {e}"
        ))
    };
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<(Event<'static>, Vec<Node>)> = Vec::new();
    let mut top: Vec<Node> = Vec::new();
    loop {
        let at = reader.buffer_position();
        let event = reader.read_event().map_err(|e| bad(&e, at))?.into_owned();
        match event {
            Event::Eof => break,
            Event::Start(_) => {
                if stack.len() > 256 {
                    return Err(SyncError::Source("elements nest too deeply".to_owned()));
                }
                stack.push((event, Vec::new()));
            }
            Event::End(_) => {
                let (start, children) = stack
                    .pop()
                    .ok_or_else(|| bad(&"an end tag without a start", at))?;
                let node = Node::Element {
                    start,
                    children,
                    end: event,
                };
                match stack.last_mut() {
                    Some((_, siblings)) => siblings.push(node),
                    None => top.push(node),
                }
            }
            other => match stack.last_mut() {
                Some((_, siblings)) => siblings.push(Node::Other(other)),
                None => top.push(Node::Other(other)),
            },
        }
    }
    if !stack.is_empty() {
        return Err(bad(
            &"the document ends inside an element",
            xml.len() as u64,
        ));
    }
    Ok(top)
}

/// The text of an element (its text and entity references), unescaped.
fn text_of(children: &[Node]) -> String {
    let mut out = String::new();
    for child in children {
        match child {
            Node::Other(Event::Text(t)) => out.push_str(&t.decode().unwrap_or_default()),
            Node::Other(Event::CData(c)) => out.push_str(&c.decode().unwrap_or_default()),
            Node::Other(Event::GeneralRef(r)) => {
                let name = r.decode().unwrap_or_default();
                match name.as_ref() {
                    "amp" => out.push('&'),
                    "lt" => out.push('<'),
                    "gt" => out.push('>'),
                    "quot" => out.push('"'),
                    "apos" => out.push('\''),
                    other => {
                        let code = other
                            .strip_prefix("#x")
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .or_else(|| other.strip_prefix('#').and_then(|d| d.parse().ok()));
                        if let Some(c) = code.and_then(char::from_u32) {
                            out.push(c);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// An item's title element's children.
fn title_mut(item: &mut Node) -> Option<&mut Vec<Node>> {
    let Node::Element { children, .. } = item else {
        return None;
    };
    children
        .iter_mut()
        .find(|c| c.is(b"Title"))
        .and_then(|t| match t {
            Node::Element { children, .. } => Some(children),
            Node::Other(_) => None,
        })
}

/// Edits the layers of every container in `nodes`; returns how many layers are left.
fn edit(nodes: &mut [Node], rules: &Rules, inside_layer: bool) -> usize {
    let mut kept = 0;
    for node in nodes.iter_mut() {
        let is_layer = node.is(b"Layer");
        let is_list = node.is(b"FeatureTypeList");
        let Node::Element { children, .. } = node else {
            continue;
        };
        let item_name: &[u8] = if is_list { b"FeatureType" } else { b"Layer" };
        // The top Layer of a WMS capabilities document holds the layers; a FeatureTypeList the
        // feature types.
        if (is_layer && !inside_layer) || is_list {
            let mut items = Vec::new();
            let mut rest = Vec::new();
            let mut slot = None;
            for child in children.drain(..) {
                if child.is(item_name) {
                    slot.get_or_insert(rest.len());
                    items.push(child);
                } else {
                    rest.push(child);
                }
            }
            let mut chosen: Vec<(String, Node)> = Vec::new();
            for mut item in items {
                let title = title_mut(&mut item).map(|t| text_of(t)).unwrap_or_default();
                let wanted = (rules.include.is_empty()
                    || rules.include.iter().any(|r| r.is_match(&title)))
                    && !rules.exclude.iter().any(|r| r.is_match(&title));
                if !wanted {
                    continue;
                }
                let mut renamed = title.clone();
                for (pattern, to) in &rules.rename {
                    renamed = pattern.replace_all(&renamed, to.as_str()).into_owned();
                }
                if renamed != title
                    && let Some(t) = title_mut(&mut item)
                {
                    *t = vec![Node::Other(Event::Text(
                        BytesText::new(&renamed).into_owned(),
                    ))];
                }
                chosen.push((renamed, item));
            }
            // Ordered titles first, in the order given; the rest as they came (a stable sort).
            chosen.sort_by_key(|(title, _)| {
                rules
                    .order
                    .iter()
                    .position(|r| r.is_match(title))
                    .unwrap_or(usize::MAX)
            });
            kept += chosen.len();
            let at = slot.unwrap_or(rest.len());
            rest.splice(at..at, chosen.into_iter().map(|(_, n)| n));
            *children = rest;
        } else {
            kept += edit(children, rules, inside_layer || is_layer);
        }
    }
    kept
}

fn write(nodes: &[Node], writer: &mut quick_xml::Writer<Vec<u8>>) -> std::io::Result<()> {
    for node in nodes {
        match node {
            Node::Element {
                start,
                children,
                end,
            } => {
                writer.write_event(start.clone())?;
                write(children, writer)?;
                writer.write_event(end.clone())?;
            }
            Node::Other(event) => writer.write_event(event.clone())?,
        }
    }
    Ok(())
}

/// The edited document and the number of layers left.
///
/// # Errors
/// [`SyncError::Source`] when the document is not well-formed XML.
fn transform(xml: &str, rules: &Rules) -> Result<(Vec<u8>, usize), SyncError> {
    let mut nodes = parse(xml)?;
    // An OGC exception report (WMS's ServiceExceptionReport, OWS's ExceptionReport) instead
    // of a capabilities document.
    if let Some(Node::Element { children, .. }) = nodes.iter().find(|n| {
        n.local_name()
            .is_some_and(|name| name.ends_with(b"ExceptionReport"))
    }) {
        let mut reason = String::new();
        let mut stack: Vec<&Node> = children.iter().collect();
        while let Some(node) = stack.pop() {
            if let Node::Element { children, .. } = node {
                let text = text_of(children);
                if !text.trim().is_empty() {
                    reason = text.trim().to_owned();
                }
                stack.extend(children.iter());
            }
        }
        if reason.is_empty() {
            reason = text_of(children).trim().to_owned();
        }
        return Err(SyncError::Source(format!(
            "the map server answered an exception: {reason}"
        )));
    }
    let kept = edit(&mut nodes, rules, false);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(xml.len()));
    write(&nodes, &mut writer).map_err(|e| SyncError::Publish(e.to_string()))?;
    Ok((writer.into_inner(), kept))
}

/// Runs a catalogue job: download (conditionally), edit, validate, publish.
///
/// # Errors
/// The step that failed; the published file is then as it was.
pub fn run(
    job: &SyncJob,
    paths: &JobPaths,
    previous: Option<&Validators>,
    progress: &Progress,
) -> Result<Report, SyncError> {
    let SyncSource::Catalogue {
        url,
        include,
        exclude,
        rename,
        order,
        headers_from_env,
        max_bytes,
    } = &job.source
    else {
        return Err(SyncError::Source("not a catalogue job".to_owned()));
    };
    let rules = Rules {
        include: patterns(include)?,
        exclude: patterns(exclude)?,
        rename: rename
            .iter()
            .map(|r| {
                let pattern = title_pattern(&r.from)
                    .map_err(|e| SyncError::Source(format!("{:?}: {e}", r.from)))?;
                Ok((pattern, r.to.clone()))
            })
            .collect::<Result<_, SyncError>>()?,
        order: patterns(order)?,
    };
    let headers = super::headers_from(headers_from_env)?;
    std::fs::create_dir_all(&paths.state)
        .map_err(|e| SyncError::Publish(format!("{}: {e}", paths.state.display())))?;
    let download = paths.state.join("download.xml");
    let client = super::client()?;
    let fetched = super::runtime()?.block_on(super::http::download(
        &client, url, headers, previous, *max_bytes, &download, progress,
    ));
    let (bytes, validators) = match fetched {
        Ok(super::http::Download::NotModified) => {
            return Ok(Report {
                published: false,
                validators: previous.cloned(),
                ..Report::default()
            });
        }
        Ok(super::http::Download::Saved(bytes, validators)) => (bytes, validators),
        Err(e) => {
            let _ = std::fs::remove_file(&download);
            return Err(e);
        }
    };
    let text = std::fs::read_to_string(&download);
    let _ = std::fs::remove_file(&download);
    let text =
        text.map_err(|e| SyncError::Source(format!("the document is not UTF-8 text: {e}")))?;
    let (edited, kept) = transform(&text, &rules)?;
    progress.rows.store(kept as u64, Ordering::Relaxed);
    let kept = kept as u64;
    if kept < job.min_features {
        return Err(SyncError::Validation(format!(
            "{kept} layers left, fewer than min_features ({})",
            job.min_features
        )));
    }
    let candidate = paths.beside("catalogue");
    std::fs::write(&candidate, &edited)
        .map_err(|e| SyncError::Publish(format!("{}: {e}", candidate.display())))?;
    publish::publish(&candidate, paths)?;
    Ok(Report {
        published: true,
        rows_read: kept,
        rows_written: kept,
        bytes,
        validators: Some(validators),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(include: &[&str], exclude: &[&str], rename: &[(&str, &str)], order: &[&str]) -> Rules {
        let list = |l: &[&str]| {
            l.iter()
                .map(|p| title_pattern(p).unwrap_or_else(|e| panic!("{e}")))
                .collect()
        };
        Rules {
            include: list(include),
            exclude: list(exclude),
            rename: rename
                .iter()
                .map(|(f, t)| {
                    (
                        title_pattern(f).unwrap_or_else(|e| panic!("{e}")),
                        (*t).to_owned(),
                    )
                })
                .collect(),
            order: list(order),
        }
    }

    const WMS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<WMS_Capabilities version="1.3.0" xmlns="http://www.opengis.net/wms" xmlns:xlink="http://www.w3.org/1999/xlink">
  <!-- kept -->
  <Capability><Layer><Title>Root</Title>
    <Layer queryable="1"><Name>a</Name><Title>Roads &amp; Paths</Title></Layer>
    <Layer><Name>b</Name><Title>Parcels (old)</Title></Layer>
    <Layer><Name>c</Name><Title>Zones</Title><Layer><Name>c1</Name><Title>Sub</Title></Layer></Layer>
  </Layer></Capability>
</WMS_Capabilities>"#;

    #[test]
    fn layers_are_dropped_renamed_and_ordered_with_everything_else_kept() {
        let (out, kept) = transform(
            WMS,
            &rules(&[], &["/\\(old\\)$/"], &[("/&/", "and")], &["Zones"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let out = String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept, 2);
        assert!(!out.contains("Parcels"), "{out}");
        assert!(out.contains("<Title>Roads and Paths</Title>"), "{out}");
        assert!(
            out.find("<Name>c</Name>") < out.find("<Name>a</Name>"),
            "{out}"
        );
        assert!(
            out.contains("<Name>c1</Name><Title>Sub</Title>"),
            "nested layers move with their group: {out}"
        );
        for kept in [
            "<!-- kept -->",
            "xmlns:xlink=\"http://www.w3.org/1999/xlink\"",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
            "queryable=\"1\"",
            "<Title>Root</Title>",
        ] {
            assert!(out.contains(kept), "{kept} lost: {out}");
        }
        assert!(parse(&out).is_ok());
    }

    #[test]
    fn include_keeps_only_what_it_names_and_bad_xml_is_refused() {
        let (_, kept) =
            transform(WMS, &rules(&["Zones"], &[], &[], &[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept, 1);
        assert!(transform("<a><b></a>", &rules(&[], &[], &[], &[])).is_err());
        assert!(transform("<a>", &rules(&[], &[], &[], &[])).is_err());
        let report = r#"<?xml version="1.0"?><ServiceExceptionReport version="1.3.0"><ServiceException code="LayerNotDefined">no such layer</ServiceException></ServiceExceptionReport>"#;
        let e = transform(report, &rules(&[], &[], &[], &[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("exception: no such layer"), "{e}");
    }
}
