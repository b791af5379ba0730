//! Removes journal records once every target has applied them.

use crate::worker::Shutdown;
use ferry_journal::{Journal, JournalError};
use std::sync::Arc;
use std::time::Duration;

/// Every `every`, truncates each shard up to the lowest applied checkpoint
/// over `targets`. A target that never applied a shard keeps all of it.
pub async fn run<J: Journal>(
    journal: Arc<J>,
    targets: Vec<String>,
    every: Duration,
    mut shutdown: Shutdown,
) -> Result<(), JournalError> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.wait() => return Ok(()),
        }
        truncate_applied(journal.as_ref(), &targets).await?;
    }
}

/// One truncation pass; returns how many shards were truncated.
pub async fn truncate_applied<J: Journal>(
    journal: &J,
    targets: &[String],
) -> Result<usize, JournalError> {
    let mut truncated = 0;
    for shard in journal.shards()? {
        let Some(bounds) = journal.bounds(shard)? else {
            continue;
        };
        let mut min = u64::MAX;
        for t in targets {
            min = min.min(journal.applied(t, shard)?.unwrap_or(0));
        }
        if min != u64::MAX && min >= bounds.first && min <= bounds.last {
            journal.truncate(shard, min).await?;
            truncated += 1;
        }
    }
    Ok(truncated)
}
