//! One replay worker: one shard, one target.
//!
//! Loop: read the next bounded batch after the applied checkpoint; wait for
//! new records when there are none (woken by the lag tracker when the tailer
//! journals more, with a short timeout as a safety net); pass the rate
//! limiter; apply through the sink, retrying transient errors with backoff;
//! record the durable sequence in the lag tracker at once and in the journal
//! (which refuses to move it backward): after every batch by default, or at
//! most every [`WorkerConfig::record_every`] while the shard streams, at once
//! for a batch that holds a fence, and whenever the worker finds nothing more
//! to read or stops.
//!
//! The journal's applied checkpoint drives truncation and tells a restarted
//! worker where to resume; a worker resumes from the higher of it and the
//! target's own checkpoint ([`Sink::durable_checkpoint`]), so a journal
//! checkpoint a moment behind costs at most a moment of idempotent
//! re-apply. The agent spaces them for the Kafka journal
//! ([`KAFKA_RECORD_EVERY`]), where each is a record in the journal's own
//! partition that every handle reads; the RocksDB journal's are cheap.

use crate::{RateLimiter, Sink, SinkError};
use ferry_core::metric_names as m;
use ferry_core::{ErrorKind, ErrorPolicy, Seq, ShardId};
use ferry_journal::{Journal, ReadBudget};
use ferry_lag::LagTracker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Tells workers to stop. Every task holds a clone; `stop` is broadcast.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A new shutdown signal and the sender that triggers it.
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown was requested (or the sender is gone).
    pub async fn wait(&mut self) {
        while !*self.0.borrow_and_update() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Tuning of a worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// How much one apply call gets at most.
    pub budget: ReadBudget,
    /// Longest wait for new records before looking again anyway.
    pub idle_wait: Duration,
    /// Longest one apply call may take: a target that hangs (a stopped
    /// process, a network that drops packets) becomes a transient error,
    /// shown in `status`, instead of a silent stall.
    pub apply_timeout: Duration,
    /// How often, at most, a streaming worker records its applied
    /// checkpoint in the journal; zero: after every batch.
    pub record_every: Duration,
}

/// [`WorkerConfig::record_every`] for the Kafka journal.
pub const KAFKA_RECORD_EVERY: Duration = Duration::from_secs(1);

/// The default [`WorkerConfig::apply_timeout`].
pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            budget: ReadBudget::DEFAULT,
            // The lag tracker wakes workers at once; this only bounds the
            // damage of a missed wake-up.
            idle_wait: Duration::from_millis(200),
            apply_timeout: DEFAULT_APPLY_TIMEOUT,
            record_every: Duration::ZERO,
        }
    }
}

/// Retries `op` per the error policy until it succeeds, a non-transient error
/// comes back, or shutdown is requested (`Ok(None)`).
///
/// Each failure that is retried is reported to `report` (the lag tracker's
/// error for the shard and target, cleared by the next apply that lands),
/// so `status` shows a target that keeps failing, not only its lag.
async fn retry<T, F, Fut>(
    what: &str,
    target: &str,
    shutdown: &mut Shutdown,
    report: impl Fn(String),
    mut op: F,
) -> Result<Option<T>, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) => {
                metrics::counter!(m::SINK_ERRORS_TOTAL, "error_type" => e.error_type(), "target" => target.to_string())
                    .increment(1);
                match e.kind.policy(attempt) {
                    ErrorPolicy::Retry { after } => {
                        tracing::warn!(target_store = target, error = %e, attempt, "{what} failed; retrying in {after:?}");
                        report(format!(
                            "{what} failed, retrying (attempt {}): {e}",
                            attempt + 1
                        ));
                        attempt += 1;
                        tokio::select! {
                            () = tokio::time::sleep(after) => {}
                            () = shutdown.wait() => return Ok(None),
                        }
                    }
                    ErrorPolicy::StopShard | ErrorPolicy::Fail => return Err(e),
                }
            }
        }
    }
}

/// Runs one worker until shutdown. Returns `Err` only for fatal errors; a
/// permanent error stops this shard for this target, is reported to the lag
/// tracker, and the worker then idles until shutdown.
pub async fn run<J: Journal, S: Sink>(
    journal: Arc<J>,
    sink: Arc<S>,
    shard: ShardId,
    lag: Arc<LagTracker>,
    limiter: Option<Arc<RateLimiter>>,
    cfg: WorkerConfig,
    mut shutdown: Shutdown,
) -> Result<(), SinkError> {
    let target = sink.name().to_string();
    let fatal = |e: ferry_journal::JournalError| SinkError::fatal(format!("journal: {e}"));
    let from_journal = journal.applied(&target, shard).map_err(fatal)?.unwrap_or(0);
    let Some(from_sink) = retry(
        "reading the target checkpoint",
        &target,
        &mut shutdown,
        |error| lag.worker_error(shard, &target, error),
        || sink.durable_checkpoint(shard),
    )
    .await?
    else {
        return Ok(());
    };
    lag.clear_error(shard, &target);
    let mut applied: Seq = from_journal.max(from_sink.unwrap_or(0));
    if applied > from_journal {
        // The target got further than the journal recorded before a crash.
        journal
            .set_applied(&target, shard, applied)
            .await
            .map_err(fatal)?;
    }
    let mut wake = lag.subscribe(shard);
    lag.register(shard, 0, &[(target.clone(), applied)]);
    // The stage timings' handles, looked up once, not once per batch.
    let stage = |name: &'static str| metrics::histogram!(m::PIPELINE_SECONDS, "stage" => name);
    let (read_s, apply_s, applied_s, checkpoint_s) = (
        stage("read"),
        stage("apply"),
        stage("applied"),
        stage("checkpoint"),
    );
    // What the journal holds for this worker, and when it was recorded.
    let mut recorded = applied;
    let mut recorded_at = std::time::Instant::now();
    let record = |seq: Seq| {
        let journal = Arc::clone(&journal);
        let target = target.clone();
        let checkpoint_s = checkpoint_s.clone();
        async move {
            let at = std::time::Instant::now();
            journal
                .set_applied(&target, shard, seq)
                .await
                .map_err(fatal)?;
            checkpoint_s.record(at.elapsed().as_secs_f64());
            Ok::<(), SinkError>(())
        }
    };
    while !shutdown.is_stopping() {
        let read_at = std::time::Instant::now();
        let events = match journal.read(shard, applied + 1, cfg.budget) {
            Ok(ev) => ev,
            Err(e) if e.kind() == ErrorKind::Permanent => {
                lag.worker_error(shard, &target, e.to_string());
                tracing::error!(shard = shard.0, target_store = %target, error = %e, "replay stopped for this shard");
                shutdown.wait().await;
                return Ok(());
            }
            Err(e) => return Err(fatal(e)),
        };
        let Some(last) = events.last() else {
            if applied > recorded {
                record(applied).await?;
                (recorded, recorded_at) = (applied, std::time::Instant::now());
            }
            tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep(cfg.idle_wait) => {}
                () = shutdown.wait() => {}
            }
            continue;
        };
        read_s.record(read_at.elapsed().as_secs_f64());
        let last_position = last.position.order;
        // A shard's events are journaled in capture order: the first
        // captured one is the oldest.
        let oldest = events.iter().map(|e| e.capture_ts_ms).find(|&c| c > 0);
        if let Some(limiter) = &limiter {
            tokio::select! {
                () = crate::throttle(limiter, events.len()) => {}
                () = shutdown.wait() => return Ok(()),
            }
        }
        let report = |error: String| lag.worker_error(shard, &target, error);
        let apply_at = std::time::Instant::now();
        let result = retry("applying a batch", &target, &mut shutdown, report, || async {
            match tokio::time::timeout(cfg.apply_timeout, sink.apply(shard, &events)).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::transient(format!(
                    "{target} did not answer within {:?} ({} events of shard {shard}); check that it is up and reachable",
                    cfg.apply_timeout,
                    events.len()
                ))),
            }
        })
        .await;
        let durable = match result {
            Ok(Some(seq)) => seq,
            Ok(None) => return Ok(()),
            Err(e) if e.kind == ErrorKind::Fatal => return Err(e),
            Err(e) => {
                lag.worker_error(shard, &target, e.message.clone());
                tracing::error!(shard = shard.0, target_store = %target, error = %e, "replay stopped for this shard");
                shutdown.wait().await;
                return Ok(());
            }
        };
        apply_s.record(apply_at.elapsed().as_secs_f64());
        if let Some(c) = oldest {
            applied_s.record(ferry_lag::now_ms().saturating_sub(c) as f64 / 1000.0);
        }
        if durable > applied {
            let count = durable - applied;
            let position = events
                .iter()
                .rev()
                .find(|e| e.seq <= durable)
                .map_or(last_position, |e| e.position.order);
            lag.applied(shard, &target, durable, count, position);
            applied = durable;
            let fence = events.iter().any(|e| matches!(e.op, ferry_core::Op::Fence));
            if fence {
                tracing::debug!(shard = shard.0, target_store = %target, seq = durable, "applied through a fence");
            }
            if fence || recorded_at.elapsed() >= cfg.record_every {
                record(applied).await?;
                (recorded, recorded_at) = (applied, std::time::Instant::now());
            }
        }
    }
    // Stopping: the last checkpoint, if the journal still takes it (a
    // restart resumes from the target's own checkpoint either way).
    if applied > recorded {
        if let Err(e) = record(applied).await {
            tracing::warn!(shard = shard.0, target_store = %target, error = %e, "stopping: the journal did not take the last applied checkpoint");
        }
    }
    Ok(())
}
