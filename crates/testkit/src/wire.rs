//! Just enough of the MongoDB wire protocol to run an admin command (`hello`,
//! `replSetInitiate`, `shutdown`) without a driver: OP_MSG framing and a
//! BSON subset (the types those commands send and their replies use; every
//! other type is skipped by its length and read as [`Bson::Other`]).
//!
//! The testkit stays free of the async driver so it can start servers from
//! plain `#[test]`s; tests themselves use the `mongodb` crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A BSON value of the subset this module understands.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Bson {
    Double(f64),
    String(String),
    Document(Doc),
    Array(Vec<Bson>),
    Bool(bool),
    Null,
    Int32(i32),
    Int64(i64),
    /// Any other type: present, not decoded.
    Other,
}

/// A BSON document: fields in order.
pub(crate) type Doc = Vec<(String, Bson)>;

/// Looks a field up.
pub(crate) fn get<'a>(d: &'a Doc, key: &str) -> Option<&'a Bson> {
    d.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `ok: 1` in whichever numeric type the server chose.
pub(crate) fn is_ok(d: &Doc) -> bool {
    match get(d, "ok") {
        Some(Bson::Double(f)) => *f == 1.0,
        Some(Bson::Int32(i)) => *i == 1,
        Some(Bson::Int64(i)) => *i == 1,
        _ => false,
    }
}

/// The server's error code of a failed reply.
pub(crate) fn code(d: &Doc) -> Option<i64> {
    match get(d, "code") {
        Some(Bson::Int32(i)) => Some(i64::from(*i)),
        Some(Bson::Int64(i)) => Some(*i),
        Some(Bson::Double(f)) => Some(*f as i64),
        _ => None,
    }
}

pub(crate) fn errmsg(d: &Doc) -> String {
    match get(d, "errmsg") {
        Some(Bson::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn encode_doc(d: &Doc, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (k, v) in d {
        encode_elem(k, v, out);
    }
    out.push(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn encode_elem(key: &str, v: &Bson, out: &mut Vec<u8>) {
    let tag: u8 = match v {
        Bson::Double(_) => 0x01,
        Bson::String(_) => 0x02,
        Bson::Document(_) => 0x03,
        Bson::Array(_) => 0x04,
        Bson::Bool(_) => 0x08,
        Bson::Null | Bson::Other => 0x0A,
        Bson::Int32(_) => 0x10,
        Bson::Int64(_) => 0x12,
    };
    out.push(tag);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    match v {
        Bson::Double(f) => out.extend_from_slice(&f.to_le_bytes()),
        Bson::String(s) => {
            out.extend_from_slice(&((s.len() + 1) as i32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        Bson::Document(d) => encode_doc(d, out),
        Bson::Array(a) => {
            let d: Doc = a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v.clone()))
                .collect();
            encode_doc(&d, out);
        }
        Bson::Bool(b) => out.push(u8::from(*b)),
        Bson::Null | Bson::Other => {}
        Bson::Int32(i) => out.extend_from_slice(&i.to_le_bytes()),
        Bson::Int64(i) => out.extend_from_slice(&i.to_le_bytes()),
    }
}

/// Decodes the document at the start of `b`; `None` on malformed input.
pub(crate) fn decode_doc(b: &[u8]) -> Option<Doc> {
    let len = i32::from_le_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    let body = b.get(4..len.checked_sub(1)?)?;
    let mut d = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let tag = body[i];
        i += 1;
        let nul = body[i..].iter().position(|&c| c == 0)?;
        let key = String::from_utf8_lossy(&body[i..i + nul]).into_owned();
        i += nul + 1;
        let rest = &body[i..];
        let i32_at = |o: usize| -> Option<i32> {
            Some(i32::from_le_bytes(rest.get(o..o + 4)?.try_into().ok()?))
        };
        let (v, used) = match tag {
            0x01 => (
                Bson::Double(f64::from_le_bytes(rest.get(0..8)?.try_into().ok()?)),
                8,
            ),
            0x02 | 0x0D | 0x0E => {
                let n = i32_at(0)? as usize;
                let s = String::from_utf8_lossy(rest.get(4..4 + n.checked_sub(1)?)?).into_owned();
                (
                    if tag == 0x02 {
                        Bson::String(s)
                    } else {
                        Bson::Other
                    },
                    4 + n,
                )
            }
            0x03 | 0x04 => {
                let n = i32_at(0)? as usize;
                let inner = decode_doc(rest.get(..n)?)?;
                if tag == 0x03 {
                    (Bson::Document(inner), n)
                } else {
                    (Bson::Array(inner.into_iter().map(|(_, v)| v).collect()), n)
                }
            }
            0x05 => (Bson::Other, 5 + i32_at(0)? as usize),
            0x06 | 0x0A | 0x7F | 0xFF => (if tag == 0x0A { Bson::Null } else { Bson::Other }, 0),
            0x07 => (Bson::Other, 12),
            0x08 => (Bson::Bool(*rest.first()? != 0), 1),
            0x09 | 0x11 => (Bson::Other, 8),
            0x0B => {
                let a = rest.iter().position(|&c| c == 0)?;
                let b = rest[a + 1..].iter().position(|&c| c == 0)?;
                (Bson::Other, a + b + 2)
            }
            0x0C => (Bson::Other, 4 + i32_at(0)? as usize + 12),
            0x0F => (Bson::Other, i32_at(0)? as usize),
            0x10 => (Bson::Int32(i32_at(0)?), 4),
            0x12 => (
                Bson::Int64(i64::from_le_bytes(rest.get(0..8)?.try_into().ok()?)),
                8,
            ),
            0x13 => (Bson::Other, 16),
            _ => return None,
        };
        if used > rest.len() {
            return None;
        }
        i += used;
        d.push((key, v));
    }
    Some(d)
}

/// Runs `cmd` against database `db` on `addr`, on a new connection, every
/// read and write bounded by `timeout`. `Err` is a connection or protocol
/// failure; a command the server refused is `Ok` with `ok: 0`.
pub(crate) fn command(
    addr: SocketAddr,
    db: &str,
    mut cmd: Doc,
    timeout: Duration,
) -> Result<Doc, String> {
    cmd.push(("$db".into(), Bson::String(db.into())));
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    body.push(0); // section kind 0: the command document
    encode_doc(&cmd, &mut body);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as i32).to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes()); // requestID
    msg.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    msg.extend_from_slice(&2013i32.to_le_bytes()); // OP_MSG
    msg.extend_from_slice(&body);

    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    s.write_all(&msg)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut header = [0u8; 16];
    s.read_exact(&mut header)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let len = i32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if !(21..48_000_000).contains(&len) {
        return Err(format!("{addr}: reply length {len}"));
    }
    let mut rest = vec![0u8; len - 16];
    s.read_exact(&mut rest)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    // flagBits (4), section kind 0 (1), then the reply document.
    if rest.get(4) != Some(&0) {
        return Err(format!("{addr}: unexpected OP_MSG section"));
    }
    decode_doc(&rest[5..]).ok_or_else(|| format!("{addr}: malformed BSON in the reply"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d: Doc = vec![
            ("a".into(), Bson::Int32(1)),
            ("b".into(), Bson::String("x".into())),
            (
                "c".into(),
                Bson::Array(vec![Bson::Document(vec![("d".into(), Bson::Bool(true))])]),
            ),
            ("e".into(), Bson::Double(1.5)),
            ("f".into(), Bson::Int64(-7)),
            ("g".into(), Bson::Null),
        ];
        let mut out = Vec::new();
        encode_doc(&d, &mut out);
        assert_eq!(decode_doc(&out), Some(d));
        assert_eq!(decode_doc(&out[..out.len() - 2]), None);
    }
}
