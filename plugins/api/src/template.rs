//! Kong's request-transformer templates (`$(headers.x)`, `$(query_params["y"])`,
//! `$(uri_captures.name)`, `$(uri_captures[1])`, `$(shared.z)`, `… or 'default'`), parsed when
//! the configuration loads; the logging plugins' `custom_fields` values use them too. Kong evaluates these as Lua; Portcullis runs no Lua, so only these
//! lookups (and `or` between them and string literals) are accepted, anything else is a load
//! error rather than a silently different value.

use crate::{RequestCtx, RequestView};

#[derive(Debug, Clone, PartialEq)]
enum Lookup {
    Header(String),
    Query(String),
    CaptureName(String),
    CaptureIndex(usize),
    Shared(String),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// Alternatives joined with `or`: the first present value wins.
    Expr(Vec<Lookup>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = src;
        while let Some(i) = rest.find("$(") {
            text.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = closing_paren(after)
                .ok_or_else(|| format!("value '{src}' has an unclosed '$('"))?;
            let expr = &after[..end];
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Expr(parse_expr(expr).ok_or_else(|| {
                format!(
                    "template '$({expr})' is not supported: use $(headers.NAME), \
                     $(query_params.NAME), $(uri_captures.NAME), $(uri_captures[N]) or \
                     $(shared.NAME), optionally followed by or 'default'"
                )
            })?));
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template(parts))
    }

    /// Whether some lookup reads the route's regex captures.
    pub fn uses_captures(&self) -> bool {
        self.0.iter().any(|p| match p {
            Part::Expr(alts) => alts
                .iter()
                .any(|l| matches!(l, Lookup::CaptureName(_) | Lookup::CaptureIndex(_))),
            Part::Text(_) => false,
        })
    }

    /// An empty value (`x-header:`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value with every lookup filled in from the client's request; an absent value
    /// renders empty.
    pub fn render(&self, req: &RequestView<'_>, ctx: &RequestCtx) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Expr(alts) => {
                    if let Some(v) = alts.iter().find_map(|l| lookup(l, req, ctx)) {
                        out.push_str(&v);
                    }
                }
            }
        }
        out
    }
}

fn lookup(l: &Lookup, req: &RequestView<'_>, ctx: &RequestCtx) -> Option<String> {
    match l {
        Lookup::Header(n) => req.header(n).map(str::to_string),
        Lookup::Query(n) => req.query_arg(n),
        Lookup::CaptureName(n) => ctx
            .uri_captures
            .as_ref()
            .and_then(|c| c.named(n))
            .map(str::to_string),
        Lookup::CaptureIndex(0) => {
            // Group 0 is the whole match; the router keeps only the groups.
            None
        }
        Lookup::CaptureIndex(i) => ctx
            .uri_captures
            .as_ref()
            .and_then(|c| c.index(*i))
            .map(str::to_string),
        Lookup::Shared(n) => ctx.shared.get(n.as_str()).cloned(),
        Lookup::Literal(s) => Some(s.clone()),
    }
}

/// Index of the `)` closing an expression, skipping quoted strings.
fn closing_paren(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') if depth == 0 => return Some(i),
            (None, ')') => depth -= 1,
            _ => {}
        }
    }
    None
}

fn parse_expr(expr: &str) -> Option<Vec<Lookup>> {
    expr.split(" or ").map(|a| parse_lookup(a.trim())).collect()
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    let q = s.chars().next()?;
    if (q == '\'' || q == '"') && s.len() >= 2 && s.ends_with(q) {
        let inner = &s[1..s.len() - 1];
        (!inner.contains(q)).then_some(inner)
    } else {
        None
    }
}

fn parse_lookup(a: &str) -> Option<Lookup> {
    if let Some(lit) = unquote(a) {
        return Some(Lookup::Literal(lit.to_string()));
    }
    let (source, key, dotted) = if let Some(i) = a.find('.') {
        (&a[..i], &a[i + 1..], true)
    } else {
        let i = a.find('[')?;
        let key = a[i + 1..].strip_suffix(']')?;
        (&a[..i], key, false)
    };
    let ident = |k: &str| {
        !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit()
    };
    let name = if dotted {
        ident(key).then(|| key.to_string())?
    } else if let Some(q) = unquote(key) {
        q.to_string()
    } else if source == "uri_captures" {
        return key.trim().parse().ok().map(Lookup::CaptureIndex);
    } else {
        return None;
    };
    match source {
        // Kong's header table is case-insensitive and reads `_` as `-` in field syntax.
        "headers" if dotted => Some(Lookup::Header(name.to_ascii_lowercase().replace('_', "-"))),
        "headers" => Some(Lookup::Header(name.to_ascii_lowercase())),
        "query_params" => Some(Lookup::Query(name)),
        "uri_captures" => Some(Lookup::CaptureName(name)),
        "shared" => Some(Lookup::Shared(name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UriCaptures;
    use std::sync::Arc;

    fn render(t: &str, uri: &str, headers: &[(&str, &str)]) -> String {
        let uri: http::Uri = uri.parse().unwrap();
        let mut map = http::HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestView {
            method: &http::Method::GET,
            uri: &uri,
            headers: &map,
        };
        let ctx = RequestCtx {
            uri_captures: Some(Arc::new(UriCaptures {
                unnamed: vec![Some("42".into()), None],
                named: vec![("id".into(), "42".into())],
            })),
            ..Default::default()
        };
        Template::parse(t).unwrap().render(&req, &ctx)
    }

    #[test]
    fn renders_kong_lookups() {
        assert_eq!(
            render(
                "v=$(headers.x_api) q=$(query_params[\"a b\"])",
                "/?a%20b=1",
                &[("X-Api", "k")]
            ),
            "v=k q=1"
        );
        assert_eq!(render("$(headers['X-Api'])", "/", &[("x-api", "k")]), "k");
        assert_eq!(
            render("/u/$(uri_captures.id)/$(uri_captures[1])", "/", &[]),
            "/u/42/42"
        );
        assert_eq!(render("$(uri_captures[2] or 'none')", "/", &[]), "none");
        assert_eq!(render("$(query_params.v or \"v1\")", "/", &[]), "v1");
        assert_eq!(render("[$(headers.missing)]", "/", &[]), "[]");
        assert_eq!(render("plain:value", "/", &[]), "plain:value");
        assert!(Template::parse("").unwrap().is_empty());
    }

    #[test]
    fn lua_is_refused() {
        assert!(Template::parse("$(ERROR())").is_err());
        assert!(Template::parse("$(string.sub(query_params.user, 1, 3))").is_err());
        assert!(Template::parse("$(headers.x").is_err());
        assert!(Template::parse("$(10 * uri_captures.user1)").is_err());
    }
}
