//! Store URLs: how an operator names a source or a target.
//!
//! | URL | store |
//! |---|---|
//! | `file:///path/doc.json` or a plain path | a JSON document |
//! | `bolt:///path/file.db` | a BoltDB file |
//! | `etcd://host:port[,host:port]/prefix`, `etcd+tls://…` | etcd v3 |
//! | `vault://host:port/mount/path`, `vaults://…` | Vault KV v2 |
//! | `mongodb://…`, `mongodb+srv://…` | MongoDB |
//! | `kafka://broker[,broker]/topic[?group=NAME]` | Kafka |
//! | `cells:///path/to/cells/home` | a whole Pydio Cells node |
//!
//! Invariant: a password or token given in a URL lives only in a
//! [`SecretString`]; `Display`, `Debug` and every [`UrlError`] show a
//! redacted form (`***`). Parsing is pure: no I/O, no DNS.

use percent_encoding::percent_decode_str;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Which kind of store a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreKind {
    File,
    Bolt,
    Etcd,
    Vault,
    Mongo,
    Kafka,
    Cells,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::File => "file",
            StoreKind::Bolt => "bolt",
            StoreKind::Etcd => "etcd",
            StoreKind::Vault => "vault",
            StoreKind::Mongo => "mongodb",
            StoreKind::Kafka => "kafka",
            StoreKind::Cells => "cells",
        }
    }

    /// Whether Ferry can write to this kind of store (SPEC section 3).
    pub fn can_be_target(self) -> bool {
        !matches!(self, StoreKind::Bolt | StoreKind::Cells)
    }
}

/// One `host:port` of a network store. `host` is a name, an IPv4 address,
/// or an IPv6 address without brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A parsed, validated store URL.
#[derive(Clone)]
pub enum StoreUrl {
    File {
        path: PathBuf,
    },
    Bolt {
        path: PathBuf,
    },
    Etcd {
        tls: bool,
        endpoints: Vec<HostPort>,
        /// Key prefix, without a leading `/` (`etcd://h/config` is `config`).
        prefix: String,
        user: Option<String>,
        password: Option<SecretString>,
        params: BTreeMap<String, String>,
    },
    Vault {
        tls: bool,
        endpoint: HostPort,
        /// The KV v2 mount (`secret` in `vault://h/secret/app`).
        mount: String,
        /// The path under the mount, without leading or trailing `/`.
        path: String,
        token: Option<SecretString>,
        params: BTreeMap<String, String>,
    },
    Mongo {
        srv: bool,
        hosts: Vec<HostPort>,
        database: Option<String>,
        user: Option<String>,
        /// The whole URI, credentials included, for the driver only.
        uri: SecretString,
        /// The URI with credentials masked, for everything else.
        redacted: String,
    },
    Kafka {
        brokers: Vec<HostPort>,
        topic: String,
        /// `?group=NAME` for a source's consumer group.
        params: BTreeMap<String, String>,
    },
    Cells {
        path: PathBuf,
    },
}

/// Why a URL was refused. Every message names the problem and the fix; the
/// URL inside is always redacted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("empty store URL: give a URL such as etcd://127.0.0.1:2379/prefix or a file path")]
    Empty,
    #[error("unknown store scheme `{scheme}` in `{url}`: use one of file, bolt, etcd, etcd+tls, vault, vaults, mongodb, mongodb+srv, kafka, cells")]
    UnknownScheme { scheme: String, url: String },
    #[error("`{url}` names no host: write it as {example}")]
    NoHost { url: String, example: &'static str },
    #[error("`{url}` has a bad port `{port}`: a port is a number from 1 to 65535")]
    BadPort { url: String, port: String },
    #[error("`{url}` has a bad host `{host}`: use a host name, an IPv4 address or an IPv6 address in brackets")]
    BadHost { url: String, host: String },
    #[error("the Vault URL `{url}` names no KV mount: write it as vault://host:8200/<mount>/<path>, for example vault://127.0.0.1:8200/secret/app")]
    MissingMount { url: String },
    #[error(
        "the Vault URL `{url}` has more than one host: Vault is addressed through one endpoint"
    )]
    VaultMultiHost { url: String },
    #[error("the Kafka URL `{url}` names no topic: write it as kafka://broker:9092/<topic>")]
    MissingTopic { url: String },
    #[error("`{url}` must name an absolute local path, as in {example}")]
    BadPath { url: String, example: &'static str },
    #[error("`{url}` is not valid: {reason}")]
    Malformed { url: String, reason: String },
}

const DEFAULT_ETCD_PORT: u16 = 2379;
const DEFAULT_VAULT_PORT: u16 = 8200;
const DEFAULT_MONGO_PORT: u16 = 27017;
const DEFAULT_KAFKA_PORT: u16 = 9092;

/// Query parameters whose values are secrets and are masked when shown.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "pass",
    "token",
    "secret",
    "tlscertificatekeyfilepassword",
    "authmechanismproperties",
];

impl StoreUrl {
    /// Parses and validates `input`. Pure: no I/O.
    pub fn parse(input: &str) -> Result<StoreUrl, UrlError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(UrlError::Empty);
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            // No scheme: a plain path to a JSON document.
            return Ok(StoreUrl::File {
                path: PathBuf::from(input),
            });
        };
        let url = redact_raw(input);
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "file" => Ok(StoreUrl::File {
                path: local_path(rest, &url, "file:///etc/pydio/pydio.json")?,
            }),
            "bolt" => Ok(StoreUrl::Bolt {
                path: local_path(rest, &url, "bolt:///var/cells/services/jobs.db")?,
            }),
            "cells" => Ok(StoreUrl::Cells {
                path: local_path(rest, &url, "cells:///home/pydio/.config/pydio/cells")?,
            }),
            "etcd" | "etcd+tls" => parse_etcd(scheme == "etcd+tls", rest, &url),
            "vault" | "vaults" => parse_vault(scheme == "vaults", rest, &url),
            "mongodb" | "mongodb+srv" => parse_mongo(scheme == "mongodb+srv", input, rest, &url),
            "kafka" => parse_kafka(rest, &url),
            _ => Err(UrlError::UnknownScheme {
                scheme: scheme.chars().take(32).collect(),
                url,
            }),
        }
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            StoreUrl::File { .. } => StoreKind::File,
            StoreUrl::Bolt { .. } => StoreKind::Bolt,
            StoreUrl::Etcd { .. } => StoreKind::Etcd,
            StoreUrl::Vault { .. } => StoreKind::Vault,
            StoreUrl::Mongo { .. } => StoreKind::Mongo,
            StoreUrl::Kafka { .. } => StoreKind::Kafka,
            StoreUrl::Cells { .. } => StoreKind::Cells,
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StoreUrl::parse(s)
    }
}

/// Parts common to every network URL.
struct Authority {
    user: Option<String>,
    password: Option<SecretString>,
    hosts: Vec<HostPort>,
    path: String,
    params: BTreeMap<String, String>,
}

fn parse_authority(
    rest: &str,
    url: &str,
    default_port: u16,
    example: &'static str,
) -> Result<Authority, UrlError> {
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    if rest.contains('#') {
        return Err(UrlError::Malformed {
            url: url.to_string(),
            reason: "a fragment (`#…`) has no meaning in a store URL; remove it".into(),
        });
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (userinfo, hostlist) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((name, pw)) => (Some(decode(name)), Some(SecretString::from(decode(pw)))),
            None => (Some(decode(u)), None),
        },
    };
    if hostlist.is_empty() {
        return Err(UrlError::NoHost {
            url: url.to_string(),
            example,
        });
    }
    let hosts = hostlist
        .split(',')
        .map(|h| parse_host_port(h, url, default_port, example))
        .collect::<Result<Vec<_>, _>>()?;
    let mut params = BTreeMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(decode(k), decode(v));
    }
    Ok(Authority {
        user,
        password,
        hosts,
        path: decode(path),
        params,
    })
}

fn parse_host_port(
    s: &str,
    url: &str,
    default_port: u16,
    example: &'static str,
) -> Result<HostPort, UrlError> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(UrlError::BadHost {
                url: url.to_string(),
                host: s.to_string(),
            });
        };
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => {
                    return Err(UrlError::BadHost {
                        url: url.to_string(),
                        host: s.to_string(),
                    })
                }
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost {
            url: url.to_string(),
            example,
        });
    }
    let is_v6 = s.starts_with('[');
    let valid = if is_v6 {
        host.chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    } else {
        host.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    };
    if !valid {
        return Err(UrlError::BadHost {
            url: url.to_string(),
            host: host.chars().take(64).collect(),
        });
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(UrlError::BadPort {
                    url: url.to_string(),
                    port: p.chars().take(16).collect(),
                })
            }
        },
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

fn parse_etcd(tls: bool, rest: &str, url: &str) -> Result<StoreUrl, UrlError> {
    let a = parse_authority(rest, url, DEFAULT_ETCD_PORT, "etcd://127.0.0.1:2379/prefix")?;
    Ok(StoreUrl::Etcd {
        tls,
        endpoints: a.hosts,
        prefix: a.path,
        user: a.user,
        password: a.password,
        params: a.params,
    })
}

fn parse_vault(tls: bool, rest: &str, url: &str) -> Result<StoreUrl, UrlError> {
    let a = parse_authority(
        rest,
        url,
        DEFAULT_VAULT_PORT,
        "vault://127.0.0.1:8200/secret/path",
    )?;
    if a.hosts.len() != 1 {
        return Err(UrlError::VaultMultiHost {
            url: url.to_string(),
        });
    }
    let trimmed = a.path.trim_matches('/');
    let (mount, path) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    if mount.is_empty() {
        return Err(UrlError::MissingMount {
            url: url.to_string(),
        });
    }
    // `vault://TOKEN@host/…`: a lone userinfo is the token; `user:token@` too.
    let token = a.password.or(a.user.map(SecretString::from));
    Ok(StoreUrl::Vault {
        tls,
        endpoint: a.hosts.into_iter().next().expect("one host checked above"),
        mount: mount.to_string(),
        path: path.trim_matches('/').to_string(),
        token,
        params: a.params,
    })
}

fn parse_mongo(srv: bool, input: &str, rest: &str, url: &str) -> Result<StoreUrl, UrlError> {
    let a = parse_authority(
        rest,
        url,
        DEFAULT_MONGO_PORT,
        "mongodb://127.0.0.1:27017/cells",
    )?;
    if srv && (a.hosts.len() != 1 || rest.split(['/', '?']).next().unwrap_or("").contains(':')) {
        return Err(UrlError::Malformed {
            url: url.to_string(),
            reason: "a mongodb+srv URL names exactly one host name and no port".into(),
        });
    }
    let database = Some(a.path.trim_matches('/').to_string()).filter(|d| !d.is_empty());
    Ok(StoreUrl::Mongo {
        srv,
        hosts: a.hosts,
        database,
        user: a.user,
        uri: SecretString::from(input.to_string()),
        redacted: url.to_string(),
    })
}

fn parse_kafka(rest: &str, url: &str) -> Result<StoreUrl, UrlError> {
    let a = parse_authority(
        rest,
        url,
        DEFAULT_KAFKA_PORT,
        "kafka://127.0.0.1:9092/topic",
    )?;
    let topic = a.path.trim_matches('/');
    if topic.is_empty() {
        return Err(UrlError::MissingTopic {
            url: url.to_string(),
        });
    }
    Ok(StoreUrl::Kafka {
        brokers: a.hosts,
        topic: topic.to_string(),
        params: a.params,
    })
}

/// The path of `file:///p`, `bolt:///p`, `cells:///p` (host empty or `localhost`).
fn local_path(rest: &str, url: &str, example: &'static str) -> Result<PathBuf, UrlError> {
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') || rest.len() < 2 || rest.contains(['?', '#']) {
        return Err(UrlError::BadPath {
            url: url.to_string(),
            example,
        });
    }
    Ok(PathBuf::from(decode(rest)))
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `input` with any password or token masked, for messages. A userinfo
/// without `:` is masked whole, since Vault URLs carry a bare token there.
pub fn redact_raw(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_string();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("***@{hosts}"),
        },
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        let masked: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&masked.join("&"));
    }
    out
}

fn is_secret_param(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    SECRET_PARAMS.contains(&k.as_str())
}

fn join_hosts(hosts: &[HostPort]) -> String {
    hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn fmt_params(f: &mut fmt::Formatter<'_>, params: &BTreeMap<String, String>) -> fmt::Result {
    for (i, (k, v)) in params.iter().enumerate() {
        let v = if is_secret_param(k) { "***" } else { v };
        write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
    }
    Ok(())
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File { path } => write!(f, "file://{}", path.display()),
            StoreUrl::Bolt { path } => write!(f, "bolt://{}", path.display()),
            StoreUrl::Cells { path } => write!(f, "cells://{}", path.display()),
            StoreUrl::Etcd {
                tls,
                endpoints,
                prefix,
                user,
                password,
                params,
            } => {
                write!(f, "{}://", if *tls { "etcd+tls" } else { "etcd" })?;
                if let Some(u) = user {
                    let pw = if password.is_some() { ":***" } else { "" };
                    write!(f, "{u}{pw}@")?;
                }
                write!(f, "{}/{prefix}", join_hosts(endpoints))?;
                fmt_params(f, params)
            }
            StoreUrl::Vault {
                tls,
                endpoint,
                mount,
                path,
                token,
                params,
            } => {
                write!(f, "{}://", if *tls { "vaults" } else { "vault" })?;
                if token.is_some() {
                    write!(f, "***@")?;
                }
                write!(f, "{endpoint}/{mount}")?;
                if !path.is_empty() {
                    write!(f, "/{path}")?;
                }
                fmt_params(f, params)
            }
            StoreUrl::Mongo { redacted, .. } => f.write_str(redacted),
            StoreUrl::Kafka {
                brokers,
                topic,
                params,
            } => {
                write!(f, "kafka://{}/{topic}", join_hosts(brokers))?;
                fmt_params(f, params)
            }
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl StoreUrl {
    /// The password or token, for the one client that needs it.
    pub fn secret(&self) -> Option<&str> {
        match self {
            StoreUrl::Etcd { password, .. } => password.as_ref().map(|s| s.expose_secret()),
            StoreUrl::Vault { token, .. } => token.as_ref().map(|s| s.expose_secret()),
            StoreUrl::Mongo { uri, .. } => Some(uri.expose_secret()),
            _ => None,
        }
    }

    /// The same etcd cluster and credentials under another key prefix
    /// (any other URL unchanged).
    pub fn with_prefix(&self, prefix: impl Into<String>) -> StoreUrl {
        let mut u = self.clone();
        if let StoreUrl::Etcd { prefix: p, .. } = &mut u {
            *p = prefix.into();
        }
        u
    }

    /// The same Kafka brokers and parameters with another topic (any other
    /// URL unchanged).
    pub fn with_topic(&self, topic: impl Into<String>) -> StoreUrl {
        let mut u = self.clone();
        if let StoreUrl::Kafka { topic: t, .. } = &mut u {
            *t = topic.into();
        }
        u
    }
}

#[cfg(test)]
mod tests;
