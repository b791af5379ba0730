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

pub mod appender;
pub mod fence;
mod sink;
pub mod truncator;
pub mod worker;

pub use appender::{AppendError, SpanAppender};
pub use fence::{FenceRequest, PollFence};
pub use sink::{SharedSink, Sink, SinkError};
pub use worker::{Shutdown, WorkerConfig};

/// Operations per second allowed against a store (`--rate-limit`).
pub type RateLimiter = governor::DefaultDirectRateLimiter;

/// Waits until `limiter` allows `n` more operations, in steps no larger
/// than its burst, so a whole batch passes at the configured rate.
pub async fn throttle(limiter: &RateLimiter, n: usize) {
    let mut left = u32::try_from(n).unwrap_or(u32::MAX);
    // The limiter's burst is its rate per second; a step larger than it is
    // refused with the burst, which then bounds every step.
    let mut most = 1000;
    while left > 0 {
        let step = left.min(most);
        let permits = std::num::NonZeroU32::new(step).expect("step > 0");
        match limiter.until_n_ready(permits).await {
            Ok(()) => left -= step,
            Err(governor::InsufficientCapacity(burst)) => most = burst.max(1),
        }
    }
}

pub use ferry_core::ErrorKind;

#[cfg(test)]
mod tests;
