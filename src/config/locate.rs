//! Maps config errors to places in the file: byte offset -> line/column, offset -> the key path
//! it belongs to, and key path -> the line of that key (via `toml_edit`, which keeps spans).

use std::ops::Range;
use toml_edit::{ImDocument, Item, Table};

/// 1-based line and column of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    (line, offset - line_start + 1)
}

/// Line and column of a dotted key path like `backends[1].weight`; the nearest existing parent
/// when the key itself is absent (e.g. a missing section), line 1 when nothing matches.
pub fn line_col_of_key(source: &str, path: &str) -> (usize, usize) {
    let Ok(doc) = ImDocument::parse(source) else {
        return (1, 1);
    };
    let mut best: Option<Range<usize>> = None;
    let mut node: &Item = doc.as_item();
    for segment in parse_path(path) {
        let next = match segment {
            Segment::Key(k) => node
                .as_table_like()
                .and_then(|t| t.get_key_value(k))
                .map(|(key, item)| (key.span().or_else(|| item.span()), item)),
            Segment::Index(i) => node.get(i).map(|item| (item.span(), item)),
        };
        let Some((span, item)) = next else { break };
        best = span.or(best);
        node = item;
    }
    best.map_or((1, 1), |r| line_col(source, r.start))
}

/// The dotted key path whose key or value contains `offset`, if the file parses as TOML.
pub fn key_at(source: &str, offset: usize) -> Option<String> {
    let doc = ImDocument::parse(source).ok()?;
    let mut found = None;
    search_table(doc.as_table(), "", offset, &mut found);
    found
}

fn search_table(table: &Table, prefix: &str, offset: usize, found: &mut Option<String>) {
    for (key, item) in table.iter() {
        let path = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        let key_span = table.key(key).and_then(|k| k.span());
        if contains(key_span, offset) || contains(item.span(), offset) {
            *found = Some(path.clone());
        }
        match item {
            Item::Table(t) => search_table(t, &path, offset, found),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let indexed = format!("{path}[{i}]");
                    if contains(t.span(), offset) {
                        *found = Some(indexed.clone());
                    }
                    search_table(t, &indexed, offset, found);
                }
            }
            _ => {}
        }
    }
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|r| r.start <= offset && offset <= r.end)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "[server]\nport = 1\n\n[[backends]]\nurl = \"a\"\n\n[[backends]]\nurl = \"b\"\nweight = 0\n";

    #[test]
    fn finds_line_of_nested_key() {
        assert_eq!(line_col_of_key(SRC, "server.port"), (2, 1));
        assert_eq!(line_col_of_key(SRC, "backends[1].weight"), (9, 1));
        assert_eq!(line_col_of_key(SRC, "backends[0].url"), (5, 1));
    }

    #[test]
    fn absent_key_points_at_nearest_parent() {
        assert_eq!(line_col_of_key(SRC, "backends[1].health_check_path").0, 7);
        assert_eq!(line_col_of_key("", "backends"), (1, 1));
    }

    #[test]
    fn key_at_offset() {
        let offset = SRC.find("weight").unwrap();
        assert_eq!(key_at(SRC, offset).as_deref(), Some("backends[1].weight"));
    }
}
