//! `--config ferry.toml`: every flag of `ferry start` (and the agent
//! connection of the other commands) in one file.
//!
//! Precedence is flags, then environment variables, then the file, then
//! the defaults. Every flag already reads an environment variable
//! (`FERRY_SHARDS` for `--shards`), so the file is applied as those
//! variables, set only where the environment does not set them already,
//! before clap parses the command line: clap's own precedence (a flag over
//! its variable) does the rest, and each value is parsed, validated and
//! reported exactly as a flag's would be. The file is read with the `toml`
//! crate into a struct that refuses unknown keys, so a misspelt key is an
//! error naming the file, line and column rather than a setting silently
//! ignored. A file that holds a secret (the agent's token, a URL with a
//! password or token) must be readable by its owner only (mode 0600).

use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file's layout: `[source]`, `[target]`, `[agent]` … as the flags'
/// dotted names (`--agent.listen` is `listen` under `[agent]`).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub journal: Option<String>,
    pub shards: Option<u32>,
    pub rate_limit: Option<u32>,
    pub force: Option<bool>,
    pub check_only: Option<bool>,
    pub foreground: Option<bool>,
    pub no_monitor: Option<bool>,
    pub no_resnapshot: Option<bool>,
    pub allow_empty_source: Option<bool>,
    pub no_verify: Option<bool>,
    pub source: Option<SourceSection>,
    pub target: Option<TargetSection>,
    pub agent: Option<AgentSection>,
    pub verify: Option<VerifySection>,
    pub cells: Option<CellsSection>,
    pub kafka: Option<KafkaSection>,
    pub vault: Option<VaultSection>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceSection {
    pub urls: Option<Vec<String>>,
    pub read_only: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TargetSection {
    pub urls: Option<Vec<String>>,
    pub timeout: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentSection {
    /// Where `ferry start`'s agent listens.
    pub listen: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// The agent the other commands talk to.
    pub url: Option<String>,
    pub ca: Option<String>,
    /// The control token: a secret.
    pub token: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerifySection {
    pub rate: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CellsSection {
    pub prefixes: Option<String>,
    pub accept_unmapped: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSection {
    pub publish_secrets: Option<bool>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VaultSection {
    pub poll_ms: Option<u64>,
}

impl ConfigFile {
    /// Reads and checks `path`; the error is one sentence naming the file
    /// (and, for a bad key or value, its line and column).
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {shown}: cannot read it ({e}); give the path of a TOML file (the README shows one)"))?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| {
            let (line, col) = e
                .span()
                .map_or((1, 1), |s| line_col(&text, s.start));
            format!(
                "{shown}:{line}:{col}: {}; fix it (the README's `ferry.toml` example lists every key)",
                e.message().trim_end_matches('\n').replace('\n', " ")
            )
        })?;
        let secrets = file.secrets();
        if !secrets.is_empty() {
            check_private(path, &secrets)?;
        }
        Ok(file)
    }

    /// The keys holding a secret.
    fn secrets(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let has = |urls: &Option<Vec<String>>| {
            urls.iter()
                .flatten()
                .any(|u| ferry_core::store_url::redact_raw(u) != *u)
        };
        if has(&self.source.as_ref().and_then(|s| s.urls.clone())) {
            out.push("source.urls");
        }
        if has(&self.target.as_ref().and_then(|t| t.urls.clone())) {
            out.push("target.urls");
        }
        if self.agent.as_ref().is_some_and(|a| a.token.is_some()) {
            out.push("agent.token");
        }
        out
    }

    /// (environment variable, value) for every key the file sets.
    pub fn variables(&self) -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = Vec::new();
        let mut put = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                v.push((name, value));
            }
        };
        let b = |x: Option<bool>| x.map(|b| b.to_string());
        let n = |x: Option<u64>| x.map(|n| n.to_string());
        put("FERRY_JOURNAL", self.journal.clone());
        put("FERRY_SHARDS", n(self.shards.map(u64::from)));
        put("FERRY_RATE_LIMIT", n(self.rate_limit.map(u64::from)));
        put("FERRY_FORCE", b(self.force));
        put("FERRY_CHECK_ONLY", b(self.check_only));
        put("FERRY_FOREGROUND", b(self.foreground));
        put("FERRY_NO_MONITOR", b(self.no_monitor));
        put("FERRY_NO_RESNAPSHOT", b(self.no_resnapshot));
        put("FERRY_ALLOW_EMPTY_SOURCE", b(self.allow_empty_source));
        put("FERRY_NO_VERIFY", b(self.no_verify));
        if let Some(s) = &self.source {
            put("FERRY_SOURCE", s.urls.as_ref().map(|u| u.join(" ")));
            put("FERRY_SOURCE_READ_ONLY", s.read_only.clone());
        }
        if let Some(t) = &self.target {
            put("FERRY_TARGET", t.urls.as_ref().map(|u| u.join(" ")));
            put("FERRY_TARGET_TIMEOUT", t.timeout.clone());
        }
        if let Some(a) = &self.agent {
            put("FERRY_AGENT_LISTEN", a.listen.clone());
            put("FERRY_AGENT_CERT", a.cert.clone());
            put("FERRY_AGENT_KEY", a.key.clone());
            put("FERRY_AGENT_CLIENT_CA", a.client_ca.clone());
            put("FERRY_AGENT_CLIENT_CERT", a.client_cert.clone());
            put("FERRY_AGENT_CLIENT_KEY", a.client_key.clone());
            put("FERRY_AGENT", a.url.clone());
            put("FERRY_AGENT_CA", a.ca.clone());
            put("FERRY_AGENT_TOKEN", a.token.clone());
        }
        if let Some(x) = &self.verify {
            put("FERRY_VERIFY_RATE", n(x.rate));
        }
        if let Some(c) = &self.cells {
            put("FERRY_CELLS_PREFIXES", c.prefixes.clone());
            put(
                "FERRY_CELLS_ACCEPT_UNMAPPED",
                c.accept_unmapped.as_ref().map(|u| u.join(",")),
            );
        }
        if let Some(k) = &self.kafka {
            put("FERRY_KAFKA_PUBLISH_SECRETS", b(k.publish_secrets));
        }
        if let Some(x) = &self.vault {
            put("FERRY_VAULT_POLL_MS", n(x.poll_ms));
        }
        v
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn check_private(path: &Path, secrets: &[&str]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("--config {}: {e}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} holds a secret ({}) but other users may read it (mode {mode:03o}): run `chmod 600 {}`, or move the secret to its environment variable",
            path.display(),
            secrets.join(", "),
            path.display()
        ));
    }
    Ok(())
}

/// The `--config` path of a command line (`--config F` or `--config=F`),
/// else `FERRY_CONFIG`.
pub fn path_in(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("FERRY_CONFIG").map(PathBuf::from)
}

/// Loads the command line's config file, if it names one, and sets the
/// variables the environment does not set already.
pub fn apply(args: &[OsString]) -> Result<(), String> {
    let Some(path) = path_in(args) else {
        return Ok(());
    };
    let file = ConfigFile::load(&path)?;
    for (name, value) in file.variables() {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ferry.toml");
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        ConfigFile::load(&p).map_err(|e| e.replace(&dir.path().display().to_string(), "DIR"))
    }

    /// The README's example is a file this build reads, key for key.
    #[test]
    fn the_readme_example_is_complete_and_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\n")
            .expect("the README has a ```toml example");
        let body = &readme[start + 8..];
        let example = &body[..body.find("```").unwrap()];
        let f: ConfigFile = toml::from_str(example).expect("the README's example parses");
        let vars = f.variables();
        // Every variable the file can set appears in the example, except
        // the token (kept out of files by advice) and what only the other
        // commands read.
        for name in [
            "FERRY_JOURNAL",
            "FERRY_SHARDS",
            "FERRY_RATE_LIMIT",
            "FERRY_SOURCE",
            "FERRY_SOURCE_READ_ONLY",
            "FERRY_TARGET",
            "FERRY_TARGET_TIMEOUT",
            "FERRY_AGENT_LISTEN",
            "FERRY_AGENT_CERT",
            "FERRY_AGENT_KEY",
            "FERRY_AGENT_CLIENT_CA",
            "FERRY_VERIFY_RATE",
            "FERRY_CELLS_PREFIXES",
            "FERRY_KAFKA_PUBLISH_SECRETS",
            "FERRY_VAULT_POLL_MS",
        ] {
            assert!(
                vars.iter().any(|(n, _)| *n == name),
                "the README example sets no {name}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_named_with_line_and_column() {
        let e = parse("shards = 4\n[source]\nurl = [\"etcd://h/app\"]\n").unwrap_err();
        assert!(
            e.starts_with("DIR/ferry.toml:3:1: unknown field `url`"),
            "{e}"
        );
        let e = parse("shards = \"four\"\n").unwrap_err();
        assert!(e.starts_with("DIR/ferry.toml:1:10: "), "{e}");
        let e = parse("[agent]\nlisten = \n").unwrap_err();
        assert!(e.starts_with("DIR/ferry.toml:2:"), "{e}");
    }

    #[test]
    fn a_secret_needs_a_private_file() {
        let e = parse("[agent]\ntoken = \"t\"\n").unwrap_err();
        assert!(e.contains("agent.token") && e.contains("chmod 600"), "{e}");
        let e = parse("[source]\nurls = [\"mongodb://u:pw@h/app\"]\n").unwrap_err();
        assert!(e.contains("source.urls") && e.contains("mode 644"), "{e}");
        let f = parse("[source]\nurls = [\"etcd://h:2379/app\"]\n").unwrap();
        assert_eq!(
            f.variables(),
            [("FERRY_SOURCE", "etcd://h:2379/app".into())]
        );
    }

    #[test]
    fn the_path_comes_from_the_flag_in_either_form() {
        let a = |v: &[&str]| -> Vec<OsString> { v.iter().map(OsString::from).collect() };
        assert_eq!(
            path_in(&a(&["ferry", "start", "--config", "f.toml"])),
            Some(PathBuf::from("f.toml"))
        );
        assert_eq!(
            path_in(&a(&["ferry", "status", "--config=g.toml"])),
            Some(PathBuf::from("g.toml"))
        );
    }
}
