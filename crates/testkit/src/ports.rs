//! Free loopback ports for test servers.
//!
//! A port is chosen at random *below* the kernel's ephemeral range and
//! checked by binding it on `127.0.0.1`. Why not simply bind port 0? That
//! returns an ephemeral port, the range the kernel also draws client source
//! ports from: while an outage test has the server stopped, a reconnecting
//! client could be given that very port as its source port and the server's
//! restart would fail. Below the range only explicit binds compete.
//!
//! Every port handed out is remembered for the life of the process and never
//! handed out again, so two servers in one test binary cannot end up sharing
//! a port even when one of them is stopped. Across processes (nextest runs
//! each test in its own) the random choice keeps collisions unlikely, and a
//! server that loses the race fails with "address already in use", which the
//! callers retry with new ports.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Lowest port we pick: clear of the well-known and most registered ports.
const LOW: u16 = 10_000;
const TRIES: usize = 500;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// One free port on 127.0.0.1.
pub(crate) fn free_port() -> io::Result<u16> {
    pick(1)
}

/// A port `p` such that `p` and `p + 1` are both free (OpenBao's dev server
/// binds its cluster listener on the API port plus one).
pub(crate) fn free_port_pair() -> io::Result<u16> {
    pick(2)
}

fn pick(width: u16) -> io::Result<u16> {
    let (low, high) = range();
    let span = u64::from(high - low - width);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..TRIES {
        let p = low + (random() % span) as u16;
        if (p..p + width).any(|q| handed.contains(&q)) {
            continue;
        }
        // Hold every listener until all are bound, then drop them together:
        // the ports are free again the moment the sockets close.
        let bound: Result<Vec<_>, _> = (p..p + width)
            .map(|q| TcpListener::bind(("127.0.0.1", q)))
            .collect();
        if bound.is_ok() {
            handed.extend(p..p + width);
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port in {low}..{high} after {TRIES} tries"),
    ))
}

/// `[LOW, start of the ephemeral range)`, or a fixed fallback when the
/// ephemeral range cannot be read or leaves too little room below it.
fn range() -> (u16, u16) {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok());
    match start {
        Some(s) if s >= LOW + 2_000 => (LOW, s),
        _ => (LOW, 30_000),
    }
}

/// A cheap random number: std's per-instance random hash keys, mixed with a
/// counter and the process id so threads and processes draw differently.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let (low, high) = range();
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let p = free_port().unwrap();
            assert!((low..high).contains(&p));
            assert!(seen.insert(p), "port {p} handed out twice");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        let p = free_port_pair().unwrap();
        assert!(!seen.contains(&p) && !seen.contains(&(p + 1)));
        TcpListener::bind(("127.0.0.1", p + 1)).unwrap();
    }
}
