//! Removes journal records once every target has applied them.

use crate::worker::Shutdown;
use ferry_core::ShardSpan;
use ferry_journal::{Journal, JournalError};
use std::sync::Arc;
use std::time::Duration;

/// Every `every`, truncates each shard up to the lowest applied checkpoint
/// over `targets`. A target that never applied a shard keeps all of it.
pub async fn run<J: Journal>(
    journal: Arc<J>,
    routes: Vec<(ShardSpan, Vec<String>)>,
    every: Duration,
    mut shutdown: Shutdown,
) -> Result<(), JournalError> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.wait() => return Ok(()),
        }
        for (span, targets) in &routes {
            truncate_span(journal.as_ref(), *span, targets).await?;
        }
    }
}

/// [`truncate_applied`] for the shards of one span, which only `targets` apply.
pub async fn truncate_span<J: Journal>(
    journal: &J,
    span: ShardSpan,
    targets: &[String],
) -> Result<usize, JournalError> {
    let mut truncated = 0;
    for shard in span.iter() {
        truncated += truncate_shard(journal, shard, targets).await?;
    }
    Ok(truncated)
}

async fn truncate_shard<J: Journal>(
    journal: &J,
    shard: ferry_core::ShardId,
    targets: &[String],
) -> Result<usize, JournalError> {
    let Some(bounds) = journal.bounds(shard)? else {
        return Ok(0);
    };
    let mut min = u64::MAX;
    for t in targets {
        min = min.min(journal.applied(t, shard)?.unwrap_or(0));
    }
    if min != u64::MAX && min >= bounds.first && min <= bounds.last {
        journal.truncate(shard, min).await?;
        return Ok(1);
    }
    Ok(0)
}

/// One truncation pass; returns how many shards were truncated.
pub async fn truncate_applied<J: Journal>(
    journal: &J,
    targets: &[String],
) -> Result<usize, JournalError> {
    let mut truncated = 0;
    for shard in journal.shards()? {
        truncated += truncate_shard(journal, shard, targets).await?;
    }
    Ok(truncated)
}
