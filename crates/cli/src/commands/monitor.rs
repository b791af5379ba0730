//! Showing progress: the `start` monitor, `status` and `status --watch`.
//!
//! On a terminal the monitor draws one progress bar per target with
//! `indicatif` (copied of total during the snapshot, with its rate and
//! ETA; then applied of journaled and the lag), under a line with the
//! agent's state; a terminal narrower than 80 columns gets the same bars
//! without the bar itself. Otherwise (piped, a log) it prints a plain line
//! every few seconds, so logs stay readable.

use crate::client::AgentTarget;
use crate::error::CliError;
use ferry_agent::api::{AgentState, CutoverPhase, StatusResponse};
use ferry_core::ExitCode;
use ferry_lag::Phase;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Totals over all shards: (copied, total) of snapshots still running.
fn snapshot_progress(s: &StatusResponse) -> Option<(u64, u64)> {
    // The snapshot's progress is one figure for the whole source, repeated
    // in every shard: take it once, not summed.
    s.lag.shards.iter().find_map(|sh| match sh.phase {
        Phase::Snapshot { copied, total } => Some((copied, total)),
        _ => None,
    })
}

fn rate(s: &StatusResponse) -> f64 {
    s.lag
        .shards
        .iter()
        .flat_map(|sh| sh.targets.values())
        .map(|t| t.rate_per_s)
        .sum()
}

/// One line summarising everything.
pub fn summary(s: &StatusResponse) -> String {
    let applied_rate = rate(s);
    let phase = match snapshot_progress(s) {
        Some((c, t)) => {
            let pct = (c * 100).checked_div(t).unwrap_or(0);
            let eta = if applied_rate > 1.0 && t > c {
                format!(", ETA {:.0} s", (t - c) as f64 / applied_rate)
            } else {
                String::new()
            };
            format!("snapshot {c}/{t} keys ({pct}%){eta}")
        }
        None if s.lag.all_streaming() => "streaming".to_string(),
        None => "starting".to_string(),
    };
    let mut line = format!(
        "{:?} | {phase} | lag {} events, {:.1} s | {:.0} events/s applied | source at {}",
        s.state,
        s.lag.max_lag_events(),
        s.lag.max_lag_seconds(),
        applied_rate,
        s.lag.source_head
    );
    if s.cutover.phase != ferry_agent::api::CutoverPhase::NotStarted {
        line.push_str(&format!(
            " | cutover {:?}: {}",
            s.cutover.phase, s.cutover.message
        ));
    }
    if let Some(e) = &s.error {
        line.push_str(&format!(" | error: {e}"));
    }
    if let Some(first) = s.unmapped.first() {
        line.push_str(&format!(
            " | {} source entries not mapped (first: {first})",
            s.unmapped.len()
        ));
    }
    line
}

/// The per-shard table of `status`.
pub fn table(s: &StatusResponse) -> String {
    let mut out = format!(
        "{}\nsource {} → {}\n",
        summary(s),
        s.sources.join(" "),
        s.targets.join(" ")
    );
    out.push_str(&format!(
        "{:>5}  {:<22} {:<28} {:>10} {:>10} {:>9} {:>8} {:>9}\n",
        "shard", "phase", "target", "journaled", "applied", "lag", "lag s", "rate/s"
    ));
    for sh in &s.lag.shards {
        let phase = match &sh.phase {
            Phase::Starting => "starting".to_string(),
            Phase::Snapshot { copied, total } => format!("snapshot {copied}/{total}"),
            Phase::Streaming => "streaming".to_string(),
            Phase::Stopped { error } => format!("stopped: {error}"),
        };
        for (t, p) in &sh.targets {
            let t_short: String = t.chars().take(28).collect();
            out.push_str(&format!(
                "{:>5}  {:<22} {:<28} {:>10} {:>10} {:>9} {:>8.1} {:>9.0}{}\n",
                sh.shard,
                phase,
                t_short,
                sh.journaled_seq,
                p.applied_seq,
                p.lag_events,
                p.lag_seconds,
                p.rate_per_s,
                p.error
                    .as_deref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(sc) = &s.scale {
        for a in &sc.agents {
            let mut notes = Vec::new();
            if sc.leader.as_ref() == Some(&a.id) {
                notes.push("tailer leader".to_string());
            }
            if a.id == sc.agent {
                notes.push("this agent".to_string());
            }
            let shards: Vec<String> = a.shards.iter().map(u32::to_string).collect();
            out.push_str(&format!(
                "agent {} at {}: shards [{}]{}\n",
                a.id,
                a.api,
                shards.join(", "),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", notes.join(", "))
                }
            ));
        }
    }
    for u in &s.unmapped {
        out.push_str(&format!(
            "not mapped (the cutover refuses until accepted): {u}\n"
        ));
    }
    if let Some(p) = &s.proof {
        out.push_str(&proof_text(p));
    }
    out
}

pub fn proof_text(p: &ferry_agent::api::CutoverProof) -> String {
    let mut out = format!(
        "cutover proof: source read-only ({}) at fence position {}; {} keys verified, {} differences; read-only window {} ms\n",
        p.read_only_mode, p.fence_position, p.verified_keys, p.differences, p.read_only_window_ms
    );
    for u in &p.unmapped_accepted {
        out.push_str(&format!("  accepted, not on the target: {u}\n"));
    }
    for sh in &p.shards {
        let applied: Vec<String> = sh.applied.iter().map(|(t, a)| format!("{t}={a}")).collect();
        out.push_str(&format!(
            "  shard {:>3}: fence seq {:>8}, applied {}\n",
            sh.shard,
            sh.fence_seq,
            applied.join(" ")
        ));
    }
    if !p.next_steps.is_empty() {
        out.push_str("next steps:\n");
        for step in &p.next_steps {
            out.push_str(&format!("  {step}\n"));
        }
    }
    out
}

fn finished(s: &StatusResponse) -> bool {
    matches!(
        s.state,
        AgentState::Done | AgentState::Aborted | AgentState::Failed
    )
}

/// The monitor's bars on a terminal: one per target, under a header.
struct Bars {
    multi: indicatif::MultiProgress,
    header: indicatif::ProgressBar,
    bars: std::collections::BTreeMap<String, indicatif::ProgressBar>,
    style: indicatif::ProgressStyle,
}

impl Bars {
    fn new() -> Bars {
        let multi = indicatif::MultiProgress::new();
        let header = multi.add(indicatif::ProgressBar::new_spinner());
        header
            .set_style(indicatif::ProgressStyle::with_template("{msg}").expect("a valid template"));
        let narrow = console_width() < 80;
        let template = if narrow {
            "{prefix} {pos}/{len} {per_sec} {msg}"
        } else {
            "{prefix:.bold} [{wide_bar:.cyan/blue}] {pos}/{len} {per_sec} ETA {eta} {msg}"
        };
        let style = indicatif::ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> ");
        Bars {
            multi,
            header,
            bars: Default::default(),
            style,
        }
    }

    fn draw(&mut self, s: &StatusResponse) {
        let mut head = format!("{:?}", s.state);
        if s.cutover.phase != CutoverPhase::NotStarted {
            head.push_str(&format!(
                " | cutover {:?}: {}",
                s.cutover.phase, s.cutover.message
            ));
        }
        if let Some(e) = &s.error {
            head.push_str(&format!(" | error: {e}"));
        }
        self.header.set_message(head);
        for p in per_target(s) {
            let bar = self.bars.entry(p.name.clone()).or_insert_with(|| {
                let b = self.multi.add(indicatif::ProgressBar::new(0));
                b.set_style(self.style.clone());
                b.set_prefix(short(&p.name, 40));
                b
            });
            let (pos, len, what) = match p.snapshot {
                Some((copied, total)) => (copied, total.max(copied), "snapshot"),
                None => (p.applied, p.journaled.max(p.applied), "applied"),
            };
            bar.set_length(len);
            bar.set_position(pos);
            let mut msg = format!("{what}, lag {} events ({:.1} s)", p.lag_events, p.lag_s);
            if let Some(e) = &p.error {
                msg.push_str(&format!(", error: {e}"));
            }
            bar.set_message(msg);
        }
    }

    fn finish(&self) {
        for b in self.bars.values() {
            b.abandon();
        }
        self.header.abandon();
    }
}

/// One target's figures over its shards.
struct TargetFigures {
    name: String,
    snapshot: Option<(u64, u64)>,
    applied: u64,
    journaled: u64,
    lag_events: u64,
    lag_s: f64,
    error: Option<String>,
}

fn per_target(s: &StatusResponse) -> Vec<TargetFigures> {
    let mut out: std::collections::BTreeMap<&str, TargetFigures> = Default::default();
    for sh in &s.lag.shards {
        for (name, t) in &sh.targets {
            let f = out.entry(name).or_insert_with(|| TargetFigures {
                name: name.clone(),
                snapshot: None,
                applied: 0,
                journaled: 0,
                lag_events: 0,
                lag_s: 0.0,
                error: None,
            });
            if let Phase::Snapshot { copied, total } = sh.phase {
                // One figure for the whole source, repeated per shard.
                f.snapshot.get_or_insert((copied, total));
            }
            if let Phase::Stopped { error } = &sh.phase {
                f.error.get_or_insert(error.clone());
            }
            f.applied += t.applied_seq;
            f.journaled += sh.journaled_seq;
            f.lag_events += t.lag_events;
            f.lag_s = f.lag_s.max(t.lag_seconds);
            if let Some(e) = &t.error {
                f.error.get_or_insert(e.clone());
            }
        }
    }
    out.into_values().collect()
}

/// The terminal's width in columns (`COLUMNS` first, for tests).
fn console_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| console::Term::stdout().size().1 as usize)
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// `text` with every line cut to `width` columns, for a table redrawn in
/// a narrow terminal (a wrapped line would break the redraw).
pub fn fit(text: &str, width: usize) -> String {
    text.lines()
        .map(|l| short(l, width.max(10)))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The terminal width for `status --watch`.
pub fn watch_width() -> usize {
    console_width()
}

/// Follows the agent until it finishes or goes away, or `until` passes.
/// With `cutover`, a failed cutover (the agent goes back to syncing) ends it too.
pub async fn follow(
    target: &AgentTarget,
    until: Option<Instant>,
    cutover: bool,
) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut bars = tty.then(Bars::new);
    let mut last_plain = Instant::now() - Duration::from_secs(60);
    let mut last: Option<StatusResponse> = None;
    let done = |bars: &Option<Bars>| {
        if let Some(b) = bars {
            b.finish();
        }
    };
    loop {
        match target.status().await {
            Ok(s) => {
                if let Some(b) = bars.as_mut() {
                    b.draw(&s);
                } else if last_plain.elapsed() >= Duration::from_secs(5) || finished(&s) {
                    println!("{}", summary(&s));
                    last_plain = Instant::now();
                }
                if cutover
                    && s.state == AgentState::Syncing
                    && s.cutover.phase == CutoverPhase::Failed
                {
                    done(&bars);
                    return Err(CliError::new(
                        ExitCode::Runtime,
                        format!(
                            "the cutover failed and the target was not opened: {}",
                            s.cutover.message
                        ),
                    ));
                }
                if finished(&s) {
                    done(&bars);
                    if let Some(p) = &s.proof {
                        print!("{}", proof_text(p));
                    }
                    return match s.state {
                        AgentState::Done => Ok(()),
                        _ => Err(CliError::new(
                            ExitCode::Runtime,
                            s.error.clone().unwrap_or_else(|| s.cutover.message.clone()),
                        )),
                    };
                }
                last = Some(s);
            }
            Err(e) => {
                done(&bars);
                // The agent went away: after a finished cutover that is normal.
                return match last {
                    Some(l) if finished(&l) => Ok(()),
                    Some(_) => Err(CliError::new(
                        ExitCode::Runtime,
                        format!("the agent stopped answering ({e}); `ferry start` with the same journal resumes"),
                    )),
                    None => Err(e),
                };
            }
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return Err(CliError::new(
                ExitCode::Runtime,
                "gave up waiting (--timeout); the agent goes on",
            ));
        }
        tokio::time::sleep(Duration::from_millis(if tty { 500 } else { 1000 })).await;
    }
}
