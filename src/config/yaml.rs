//! A YAML document as a tree of nodes that each remember their file, line and column.
//!
//! serde stops at the first error; operators want every problem at once. So the YAML is read
//! into this generic tree first, and the typed conversion in `raw` walks it collecting errors.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;
use std::sync::Arc;

/// Where a node starts: file (as given to the loader), 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<str>,
    pub line: u64,
    pub col: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub loc: Loc,
    pub kind: Kind,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Convert to JSON for plugin configs (which are deserialised by the plugin's own schema).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Int(i) => Value::from(*i),
            Kind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Kind::Str(s) => Value::String(s.clone()),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (key_text(k), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The key node of the last segment of `path` when it names a mapping entry.
    pub fn locate_key(&self, path: &str) -> Option<&Node> {
        let (parent, last) = match path.rfind(['.', '[']) {
            Some(i) if path.as_bytes()[i] == b'.' => (&path[..i], &path[i + 1..]),
            Some(_) => return None,
            None => ("", path),
        };
        let parent = if parent.is_empty() {
            self
        } else {
            self.locate(parent)
        };
        match &parent.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(last))
                .map(|(k, _)| k),
            _ => None,
        }
    }

    /// The node a plugin-relative path like `allow[1]` or `a.b` points at, for error locations;
    /// the deepest existing node when the path runs off the tree (a missing field).
    pub fn locate(&self, path: &str) -> &Node {
        let mut node = self;
        for seg in path_segments(path) {
            let next = match (&node.kind, seg) {
                (Kind::Map(_), Seg::Key(k)) => node.get(k),
                (Kind::Seq(items), Seg::Index(i)) => items.get(i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }
}

fn key_text(k: &Node) -> String {
    match &k.kind {
        Kind::Str(s) => s.clone(),
        Kind::Int(i) => i.to_string(),
        Kind::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_segments(path: &str) -> impl Iterator<Item = Seg<'_>> {
    path.split('.').filter(|s| !s.is_empty()).flat_map(|part| {
        let mut segs = Vec::new();
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(Seg::Key(name));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                segs.push(Seg::Index(i));
            }
        }
        segs
    })
}

/// The tree as deserialised, before the file name is attached.
struct RawNode(Kind);

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode(Kind::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode(Kind::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNode, E> {
        i64::try_from(v)
            .map(|v| RawNode(Kind::Int(v)))
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawNode, E> {
        i64::try_from(v)
            .map(|v| RawNode(Kind::Int(v)))
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawNode, E> {
        i64::try_from(v)
            .map(|v| RawNode(Kind::Int(v)))
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode(Kind::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode(Kind::Str(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode(Kind::Str(v)))
    }
    fn visit_none<E>(self) -> Result<RawNode, E> {
        Ok(RawNode(Kind::Null))
    }
    fn visit_unit<E>(self) -> Result<RawNode, E> {
        Ok(RawNode(Kind::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
            items.push(item);
        }
        Ok(RawNode(Kind::Seq(items.into_iter().map(pending).collect())))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Spanned<RawNode>, Spanned<RawNode>>()? {
            let k = pending(k);
            let mut v = pending(v);
            // A block scalar (`key: |`) starts on the next line; errors about it belong on the
            // line of its key, where the operator looks.
            if !matches!(v.kind, Kind::Seq(_) | Kind::Map(_)) && v.loc.line > k.loc.line {
                v.loc = k.loc.clone();
            }
            entries.push((k, v));
        }
        Ok(RawNode(Kind::Map(entries)))
    }
}

/// Nodes are built with an empty file name; `attach_file` fills it in afterwards so the
/// deserialiser does not need to carry it.
fn pending(s: Spanned<RawNode>) -> Node {
    Node {
        loc: Loc {
            file: Arc::from(""),
            line: s.referenced.line(),
            col: s.referenced.column(),
        },
        kind: s.value.0,
    }
}

fn attach_file(node: &mut Node, file: &Arc<str>) {
    node.loc.file = file.clone();
    match &mut node.kind {
        Kind::Seq(items) => items.iter_mut().for_each(|n| attach_file(n, file)),
        Kind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            attach_file(k, file);
            attach_file(v, file);
        }),
        _ => {}
    }
}

/// Parse one YAML file. On a syntax error, return its location and message.
pub fn parse(file: &Arc<str>, text: &str) -> Result<Node, (Loc, String)> {
    if text.trim().is_empty() {
        return Ok(Node {
            loc: Loc {
                file: file.clone(),
                line: 1,
                col: 1,
            },
            kind: Kind::Null,
        });
    }
    match serde_saphyr::from_str::<Spanned<RawNode>>(text) {
        Ok(root) => {
            let mut node = pending(root);
            attach_file(&mut node, file);
            Ok(node)
        }
        Err(e) => {
            let (line, col) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let msg = e.to_string();
            // The rendered message may carry a source snippet; the first line is the reason.
            let first = msg.lines().next().unwrap_or("invalid YAML").to_string();
            Err((
                Loc {
                    file: file.clone(),
                    line,
                    col,
                },
                format!("invalid YAML: {first}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_of_nested_nodes() {
        let f: Arc<str> = Arc::from("a.yaml");
        let n = parse(&f, "services:\n  - name: x\n    port: 80\n").expect("parses");
        let svc = n.get("services").expect("services");
        let port = svc.locate("[0].port");
        assert_eq!((port.loc.line, port.loc.col), (3, 11));
        assert!(matches!(port.kind, Kind::Int(80)));
        let name = svc.locate("[0].name");
        assert_eq!(name.as_str(), Some("x"));
        assert_eq!(name.loc.line, 2);
    }

    #[test]
    fn syntax_error_has_location() {
        let f: Arc<str> = Arc::from("b.yaml");
        let e = parse(&f, "a: [1, 2\nb: c\n").unwrap_err();
        assert_eq!(&*e.0.file, "b.yaml");
        assert!(e.0.line >= 1);
    }
}
