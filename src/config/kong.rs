//! What Portcullis knows about Kong itself: the plugins Kong 3.x bundles, which plugin owns each
//! credential collection of Kong's declarative format, and Kong 3.0's migration of 2.x regex
//! paths. Kept apart from the readers so the tables can be consulted from anywhere (the plugin
//! platform asks which Kong plugin owns a credential collection).

/// Kong 3.x's `BUNDLED_PLUGINS` (kong/constants.lua, 3.10), plus the Enterprise `mtls-auth`
/// that Portcullis provides in the open. A plugin name from this list that the registry lacks is
/// reported as a Kong plugin Portcullis does not provide, not as a typo.
pub const BUNDLED_PLUGINS: &[&str] = &[
    "jwt",
    "acl",
    "correlation-id",
    "cors",
    "oauth2",
    "tcp-log",
    "udp-log",
    "file-log",
    "http-log",
    "key-auth",
    "hmac-auth",
    "basic-auth",
    "ip-restriction",
    "request-transformer",
    "response-transformer",
    "request-size-limiting",
    "rate-limiting",
    "response-ratelimiting",
    "syslog",
    "loggly",
    "datadog",
    "ldap-auth",
    "statsd",
    "bot-detection",
    "aws-lambda",
    "request-termination",
    "prometheus",
    "proxy-cache",
    "session",
    "acme",
    "grpc-gateway",
    "grpc-web",
    "pre-function",
    "post-function",
    "azure-functions",
    "zipkin",
    "opentelemetry",
    "ai-proxy",
    "ai-prompt-decorator",
    "ai-prompt-template",
    "ai-prompt-guard",
    "ai-request-transformer",
    "ai-response-transformer",
    "standard-webhooks",
    "redirect",
    "mtls-auth",
];

/// Entity collections that Kong plugins add to the declarative format (each plugin's
/// `daos.lua`), with the plugin that owns them. They appear at top level and nested under
/// `consumers`.
pub const CREDENTIAL_COLLECTIONS: &[(&str, &str)] = &[
    ("acls", "acl"),
    ("keyauth_credentials", "key-auth"),
    ("basicauth_credentials", "basic-auth"),
    ("hmacauth_credentials", "hmac-auth"),
    ("jwt_secrets", "jwt"),
    ("oauth2_credentials", "oauth2"),
    ("oauth2_authorization_codes", "oauth2"),
    ("oauth2_tokens", "oauth2"),
    ("mtls_auth_credentials", "mtls-auth"),
];

/// Whether `name` is a plugin Kong 3.x ships.
pub fn is_kong_plugin(name: &str) -> bool {
    BUNDLED_PLUGINS.contains(&name)
}

/// The Kong plugin that owns a credential collection (`oauth2_credentials` → `oauth2`).
pub fn credential_plugin(collection: &str) -> Option<&'static str> {
    CREDENTIAL_COLLECTIONS
        .iter()
        .find(|(c, _)| *c == collection)
        .map(|(_, p)| *p)
}

/// The message for a plugin name Kong has and Portcullis does not.
pub fn plugin_not_provided(name: &str) -> String {
    format!(
        "`{name}` is a Kong plugin that Portcullis does not provide; remove it or write it as a Rust plugin"
    )
}

/// The message for a credential collection of a plugin Portcullis does not provide.
pub fn credentials_not_provided(collection: &str, plugin: &str) -> String {
    format!(
        "`{collection}` are credentials of the Kong plugin `{plugin}`, which Portcullis does not provide; remove them or write the plugin as a Rust plugin"
    )
}

/// Declarative format versions Kong 3.x reads. 1.1 and 2.1 files are migrated on load.
pub const FORMAT_VERSIONS: &[&str] = &["1.1", "2.1", "3.0"];

/// Whether a route path written in a 1.1/2.1 file is a regex there: Kong 2.x treated any path
/// with a character outside `[a-zA-Z0-9.\-_~/%]` as a regex (Kong's `is_not_regex` in
/// `migrate_regex_280_300.lua`).
fn is_plain_2x_path(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'/' | b'%'))
}

/// Kong 3.0's migration of one 2.x route path: a path that looks like a regex (and does not
/// already start with `~`) becomes `~` + the path with its percent-encoded triplets normalised
/// (3.x no longer percent-decodes regex paths, so the migration decodes them once). `None` when
/// the path stays as written.
pub fn migrate_2x_path(path: &str) -> Option<String> {
    // Kong 2.8 already read a leading `~` as "regex"; Kong 3.x's migration would prefix a second
    // one and silently break the route. A path written the 3.x way stays as written.
    if path.starts_with('~') || is_plain_2x_path(path) {
        return None;
    }
    Some(format!("~{}", normalize_regex(path)))
}

/// Kong's `normalize_regex`: `%XX` of a reserved character stays encoded (upper-cased), of a
/// regex metacharacter becomes the escaped character, of anything else the character itself.
fn normalize_regex(regex: &str) -> String {
    const RESERVED: &[u8] = b"!#$%&'()*+,/:;=?@[]";
    const META: &[u8] = b".^-{}\\|";
    let bytes = regex.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let triplet = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        let Some(hex) = triplet else {
            out.push(bytes[i]);
            i += 1;
            continue;
        };
        let value = hex.iter().fold(0u8, |acc, h| {
            acc * 16 + (*h as char).to_digit(16).unwrap_or(0) as u8
        });
        if RESERVED.contains(&value) {
            out.push(b'%');
            out.extend(hex.iter().map(u8::to_ascii_uppercase));
        } else if META.contains(&value) {
            out.push(b'\\');
            out.push(value);
        } else {
            out.push(value);
        }
        i += 3;
    }
    // A decoded byte ≥ 0x80 may leave invalid UTF-8; such a path cannot be matched as text, so
    // the original spelling is kept (the regex compiler reports it if it is not valid).
    String::from_utf8(out).unwrap_or_else(|_| regex.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_2x_paths_stay_prefixes() {
        for p in ["/", "/api", "/api/v1.0", "/a-b_c~d", "/caf%C3%A9", "/x%2Fy"] {
            assert_eq!(migrate_2x_path(p), None, "{p}");
        }
    }

    #[test]
    fn regex_looking_2x_paths_get_the_tilde() {
        assert_eq!(
            migrate_2x_path(r"/users/\d+").as_deref(),
            Some(r"~/users/\d+")
        );
        assert_eq!(
            migrate_2x_path("/(foo|bar)/items").as_deref(),
            Some("~/(foo|bar)/items")
        );
        assert_eq!(
            migrate_2x_path("/orders/[0-9]+$").as_deref(),
            Some("~/orders/[0-9]+$")
        );
        // Already in the 3.x form: not prefixed twice.
        assert_eq!(migrate_2x_path(r"~/users/\d+"), None);
        // A space or any other character outside Kong's plain set marks a regex too.
        assert_eq!(migrate_2x_path("/a b").as_deref(), Some("~/a b"));
    }

    #[test]
    fn percent_triplets_in_migrated_regexes_are_normalised_as_kong_does() {
        // Unreserved character: decoded.
        assert_eq!(
            migrate_2x_path(r"/caf%61/\d+").as_deref(),
            Some(r"~/cafa/\d+")
        );
        // Reserved character: kept encoded, upper-cased.
        assert_eq!(
            migrate_2x_path(r"/a%2fb/\d+").as_deref(),
            Some(r"~/a%2Fb/\d+")
        );
        // Regex metacharacter: decoded and escaped.
        assert_eq!(
            migrate_2x_path(r"/v1%2E0/(x|y)").as_deref(),
            Some(r"~/v1\.0/(x|y)")
        );
        // Not a triplet: left alone.
        assert_eq!(migrate_2x_path(r"/%zz/\d").as_deref(), Some(r"~/%zz/\d"));
    }

    #[test]
    fn kong_tables() {
        assert!(is_kong_plugin("oauth2"));
        assert!(is_kong_plugin("key-auth"));
        assert!(!is_kong_plugin("no-such-plugin"));
        assert_eq!(credential_plugin("oauth2_credentials"), Some("oauth2"));
        assert_eq!(credential_plugin("jwt_secrets"), Some("jwt"));
        assert_eq!(credential_plugin("services"), None);
        assert!(plugin_not_provided("oauth2").starts_with(
            "`oauth2` is a Kong plugin that Portcullis does not provide; remove it or write it as a Rust plugin"
        ));
    }
}
