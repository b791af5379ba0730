//! Which namespaces (database.collection) a source covers.
//!
//! Patterns are `db.coll`, `db.*`, `*.coll` or `*`; `*` inside a part
//! matches any run of characters (`app.cache_*`). The database part ends at
//! the first `.` (database names cannot hold one; collection names can).
//!
//! A namespace is selected when it matches an include pattern (or there are
//! none) and no exclude pattern. Never selected, whatever the patterns:
//! Ferry's own [`META_DB`](crate::META_DB), `admin`, `local`, `config`,
//! and `system.*` collections.
//!
//! From a URL: `mongodb://h/?include=app.*,cells.jobs&exclude=app.tmp_*`
//! (comma-separated; `include` and `exclude` may repeat). A database in the
//! URL's path and no `include` means `include=<db>.*`. These two parameters
//! are Ferry's and are removed before the URI reaches the driver.

/// One `database.collection` (the Documents data model's namespace).
pub use ferry_connect::Namespace;

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    db: String,
    coll: String,
}

impl Pattern {
    fn parse(s: &str) -> Option<Pattern> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let (db, coll) = s.split_once('.').unwrap_or((s, "*"));
        Some(Pattern {
            db: db.to_string(),
            coll: if coll.is_empty() {
                "*".into()
            } else {
                coll.to_string()
            },
        })
    }

    fn matches(&self, ns: &Namespace) -> bool {
        glob(&self.db, &ns.db) && glob(&self.coll, &ns.coll)
    }

    fn matches_db(&self, db: &str) -> bool {
        glob(&self.db, db)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point: linear in practice.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Databases never copied.
const SYSTEM_DBS: &[&str] = &["admin", "local", "config", crate::META_DB];

/// Include and exclude patterns; see the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl NamespaceFilter {
    /// Every user namespace.
    pub fn all() -> Self {
        Self::default()
    }

    /// From comma-separated pattern lists (each may be empty).
    pub fn new<I, E>(include: I, exclude: E) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
        E: IntoIterator,
        E::Item: AsRef<str>,
    {
        let split = |items: Vec<String>| {
            items
                .iter()
                .flat_map(|s| s.split(',').map(str::to_string).collect::<Vec<_>>())
                .filter_map(|s| Pattern::parse(&s))
                .collect()
        };
        NamespaceFilter {
            include: split(
                include
                    .into_iter()
                    .map(|s| s.as_ref().to_string())
                    .collect(),
            ),
            exclude: split(
                exclude
                    .into_iter()
                    .map(|s| s.as_ref().to_string())
                    .collect(),
            ),
        }
    }

    /// True when `ns` is selected.
    pub fn selects(&self, ns: &Namespace) -> bool {
        if SYSTEM_DBS.contains(&ns.db.as_str()) || ns.coll.starts_with("system.") {
            return false;
        }
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(ns)))
            && !self.exclude.iter().any(|p| p.matches(ns))
    }

    /// True when some collection of `db` could be selected (to skip whole
    /// databases while listing).
    pub fn may_select_db(&self, db: &str) -> bool {
        !SYSTEM_DBS.contains(&db)
            && (self.include.is_empty() || self.include.iter().any(|p| p.matches_db(db)))
    }

    /// The include patterns as the operator wrote them (`*` when none).
    pub fn include_text(&self) -> String {
        list(&self.include, "*")
    }

    /// The exclude patterns (`none` when none).
    pub fn exclude_text(&self) -> String {
        list(&self.exclude, "none")
    }
}

fn list(ps: &[Pattern], empty: &str) -> String {
    if ps.is_empty() {
        return empty.to_string();
    }
    ps.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits Ferry's `include`/`exclude` parameters off a MongoDB URI: (the
/// URI for the driver, includes, excludes).
pub(crate) fn split_uri(uri: &str) -> (String, Vec<String>, Vec<String>) {
    let Some((base, query)) = uri.split_once('?') else {
        return (uri.to_string(), Vec::new(), Vec::new());
    };
    let (mut inc, mut exc, mut keep) = (Vec::new(), Vec::new(), Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k.to_ascii_lowercase().as_str() {
            "include" => inc.push(v),
            "exclude" => exc.push(v),
            _ => keep.push(pair),
        }
    }
    let uri = if keep.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", keep.join("&"))
    };
    (uri, inc, exc)
}

/// Minimal percent-decoding for pattern values (`%2C` for a comma, …).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let f = NamespaceFilter::new(["app.*,cells.jobs"], ["app.tmp_*"]);
        assert!(f.selects(&Namespace::new("app", "users")));
        assert!(f.selects(&Namespace::new("app", "a.b")));
        assert!(!f.selects(&Namespace::new("app", "tmp_1")));
        assert!(f.selects(&Namespace::new("cells", "jobs")));
        assert!(!f.selects(&Namespace::new("cells", "jobs2")));
        assert!(!f.selects(&Namespace::new("app", "system.views")));
        assert!(f.may_select_db("app") && !f.may_select_db("other"));
        let all = NamespaceFilter::all();
        assert!(all.selects(&Namespace::new("x", "y")));
        assert!(!all.selects(&Namespace::new("__ferry", "checkpoints")));
        assert!(!all.selects(&Namespace::new("admin", "x")));
        assert!(glob("a*c", "abbbc") && !glob("a*c", "abbb") && glob("*", ""));
        assert_eq!(f.include_text(), "app.*,cells.jobs");
        assert_eq!(NamespaceFilter::new(["db"], [""; 0]).include_text(), "db.*");
    }

    #[test]
    fn uri_split() {
        let (u, i, e) = split_uri("mongodb://h:1/db?include=a.*%2Cb.c&w=majority&exclude=a.x");
        assert_eq!(u, "mongodb://h:1/db?w=majority");
        assert_eq!(i, ["a.*,b.c"]);
        assert_eq!(e, ["a.x"]);
        assert_eq!(split_uri("mongodb://h").0, "mongodb://h");
        assert_eq!(split_uri("mongodb://h/?include=a").0, "mongodb://h/");
    }
}
