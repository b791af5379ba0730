//! `ferry stop [--abort] [--timeout DUR]`: asks the agent to cut over (or
//! abort) and follows it to the end.

use super::start::runtime;
use super::status::target;
use crate::cli::StopArgs;
use crate::error::CliError;
use ferry_core::ExitCode;
use std::time::{Duration, Instant};

/// `90s`, `15m`, `1h`, `500ms`, given to `flag`.
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration, CliError> {
    let bad = || {
        CliError::new(
            ExitCode::Usage,
            format!("{flag} `{s}` is not a duration such as 90s, 15m or 1h"),
        )
    };
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(bad()),
    }
}

pub fn run(a: StopArgs) -> Result<(), CliError> {
    let timeout = parse_duration("--timeout", &a.timeout)?;
    let t = target(&a.conn)?;
    let rt = runtime()?;
    rt.block_on(async {
        let resp = t.stop(a.abort, &a.accept_unmapped).await?;
        println!("{}", resp.message);
        // A cutover asked for earlier (by a `stop` that gave up waiting) is
        // still the one to follow, not a failure.
        let running = !resp.accepted
            && !a.abort
            && t.status()
                .await
                .is_ok_and(|s| s.state == ferry_agent::api::AgentState::CuttingOver);
        if !resp.accepted && !running {
            return Err(CliError::new(ExitCode::Runtime, resp.message));
        }
        let result = super::monitor::follow(&t, Some(Instant::now() + timeout), !a.abort).await;
        match (result, a.abort) {
            // An abort that ended with the agent aborted is what was asked.
            (Err(_), true) => {
                println!("aborted: the target was not opened");
                Ok(())
            }
            (r, _) => r,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("--timeout", "90s").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration("--timeout", "15m").unwrap(),
            Duration::from_secs(900)
        );
        assert_eq!(
            parse_duration("--timeout", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("--timeout", "7").unwrap(),
            Duration::from_secs(7)
        );
        assert!(parse_duration("--timeout", "soon").is_err());
    }
}
