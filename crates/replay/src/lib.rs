//! The replay engine: applies the journal to targets.
//!
//! One [`worker`] per (shard, target) reads the shard's journal records in
//! bounded batches from the target's applied checkpoint on, hands them to
//! the target's [`Sink`], and moves the checkpoint only after the sink says
//! the batch is durable. A [`truncator`] removes records every target has
//! applied.
//!
//! Errors are classified once, by the sink, into [`ErrorKind`]s; what
//! happens then is [`ErrorKind::policy`]: transient errors retry with
//! backoff forever (a target outage must not lose the migration), permanent
//! ones stop the shard for this target and are reported, fatal ones stop the
//! pipeline.

mod sink;
pub mod truncator;
pub mod worker;

pub use sink::{Sink, SinkError};
pub use worker::{Shutdown, WorkerConfig};

/// Operations per second allowed against targets (`--rate-limit`).
pub type RateLimiter = governor::DefaultDirectRateLimiter;

pub use ferry_core::ErrorKind;

#[cfg(test)]
mod tests;
