//! Source positions.
//!
//! A [`Position`] says where in a source's history an event came from. Every
//! store has its own notion (etcd revision, Mongo cluster time plus resume
//! token, Bolt txid, Kafka offset, Vault poll round), so a position carries two
//! parts:
//!
//! - `order`: a number that grows with the source's history and alone decides
//!   the ordering (etcd revision, Bolt txid, Kafka offset, Mongo cluster time
//!   packed as `seconds << 32 | increment`);
//! - `token`: opaque bytes a tailer needs to resume exactly there (a Mongo
//!   resume token); empty where `order` is enough.
//!
//! Invariant: for one source, a later change never has a smaller `order`.
//! Positions of different sources are never compared.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// An opaque, totally ordered position in one source's change history.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Decides ordering; see the module doc for what each store puts here.
    pub order: u64,
    /// Resume data the tailer needs besides `order`; never interpreted here.
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
}

impl Position {
    /// A position that is fully described by its order (etcd, Bolt, Kafka).
    pub fn at(order: u64) -> Self {
        Self {
            order,
            token: Vec::new(),
        }
    }

    /// A position with resume data (a Mongo resume token).
    pub fn with_token(order: u64, token: Vec<u8>) -> Self {
        Self { order, token }
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        // The token only breaks ties so that Ord agrees with Eq.
        self.order
            .cmp(&other.order)
            .then_with(|| self.token.cmp(&other.token))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token.is_empty() {
            write!(f, "{}", self.order)
        } else {
            write!(f, "{}+token[{}B]", self.order, self.token.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_decides_before_token() {
        let a = Position::with_token(5, vec![9, 9]);
        let b = Position::with_token(6, vec![0]);
        assert!(a < b);
        assert!(Position::with_token(5, vec![1]) < Position::with_token(5, vec![2]));
        assert_eq!(Position::at(7).to_string(), "7");
        assert_eq!(
            Position::with_token(7, vec![1, 2]).to_string(),
            "7+token[2B]"
        );
    }
}
