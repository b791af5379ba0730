//! Continuous verification of a route: the source and the target compared
//! range by range in the background while the sync runs, so the cutover
//! compares only what changed since.
//!
//! The verifier is written once over a [`RangeModel`]: how a data model cuts
//! its source into ranges, places a journaled event's key among them and
//! compares one range on both sides. Two models implement it: keys and
//! values ([`KvRanges`], etcd) and documents by `_id`
//! ([`super::doc_ranges::DocRanges`], MongoDB).
//!
//! # Ranges, and when one stays verified
//!
//! The key space is cut into ranges at every [`RANGE_KEYS`]th source key
//! when the verifier starts; range *i* is `[bound_i, bound_{i+1})` in the
//! order of the bounds' bytes, the first starts at the empty key and the
//! last is open, so the ranges cover every key there is or will be. (For
//! key-value stores a key is the suffix below each side's prefix.) Each
//! range has a generation that every applied event touching it increases
//! ([`RangeVerifier::touch`], called by the route's sinks after an apply).
//!
//! A check of a range reads the generation, then compares the range on both
//! sides with [`super::kv::compare`] (each side at its own current
//! revision, the source first). Equal, and the generation unchanged, means
//! the target held the source's range as of the source read, with every
//! later change still to come as events; the range is verified *at that
//! generation*. An event applied afterwards moves the generation on, so the
//! range is dirty until checked again. At the cutover every event up to the
//! fence is applied, so a range still verified at its current generation
//! equals the source's, and only the dirty ranges (and those never checked,
//! or differing) are compared inside the read-only window
//! ([`RangeVerifier::verify_dirty`]).
//!
//! A write on the target behind Ferry's back touches no generation: the
//! background passes, which go over every range again at the bounded read
//! rate, are what find it. A range that differs twice, [`STANDING_AFTER`]
//! apart, with its generation unchanged and the route's lag at zero both
//! times, is a standing difference: `status` names its keys, and the
//! cutover, which compares it again inside the window, does not open while
//! it differs. A difference seen while events are in flight is lag, not a
//! difference, and is only looked at again.
//!
//! # Memory and restarts
//!
//! Per range: its first suffix, two generations, a digest and a time, about
//! 100 bytes plus the suffix: for a million keys in ranges of
//! [`RANGE_KEYS`], some 500 ranges, about 60 KB with 20-byte keys. Nothing
//! is kept on disk: after a restart every range is unverified until the
//! first pass checks it, so a cutover soon after a restart compares more
//! inside its window, never less.

use super::kv::{self, Difference};
use super::{KvCursor, KvEntry, KvReader};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Source keys per range when the ranges are cut.
pub const RANGE_KEYS: usize = 2_000;
/// How long a difference must stand, generation and lag unchanged, before
/// it is reported.
pub const STANDING_AFTER: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Default)]
struct Range {
    /// Moves on with every applied event that touches the range.
    generation: u64,
    /// The generation a check found equal, and when.
    verified: Option<(u64, u64)>,
    /// The first check that found it differing: generation and when.
    differing: Option<(u64, Instant)>,
    /// Differences that stood (see the module doc).
    standing: Vec<Difference>,
}

#[derive(Default)]
struct State {
    /// `bounds[i]`: the first suffix of range `i`; `bounds[0]` is empty.
    bounds: Vec<Vec<u8>>,
    ranges: Vec<Range>,
    passes: u64,
    keys_read: u64,
}

impl State {
    fn index(&self, suffix: &[u8]) -> Option<usize> {
        if self.bounds.is_empty() {
            return None;
        }
        Some(self.bounds.partition_point(|b| b.as_slice() <= suffix) - 1)
    }

    /// The ranges a place touches.
    fn ranges_of(&self, place: &Place) -> std::ops::Range<usize> {
        let (key, prefix) = match place {
            Place::Key(k) => (k, false),
            Place::Prefix(p) => (p, true),
            Place::Outside => return 0..0,
        };
        let Some(first) = self.index(key) else {
            return 0..0;
        };
        let mut end = first + 1;
        while prefix && self.bounds.get(end).is_some_and(|b| b.starts_with(key)) {
            end += 1;
        }
        first..end
    }

    fn dirty(&self, i: usize) -> bool {
        let r = &self.ranges[i];
        !r.standing.is_empty() || r.verified.is_none_or(|(g, _)| g != r.generation)
    }
}

/// What `status` shows of a route's verifier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierStatus {
    pub source: String,
    pub target: String,
    /// Ranges cut (0 until the first pass has cut them).
    pub ranges: u64,
    /// Ranges verified at their current generation.
    pub verified: u64,
    /// Complete passes over every range.
    pub passes: u64,
    /// Keys read from both sides since the start.
    pub keys_read: u64,
    /// Standing differences (the first few), by key.
    pub differences: Vec<Difference>,
}

/// What the cutover compared inside its window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCheck {
    pub ranges: u64,
    /// Ranges compared inside the window (dirty, never checked, differing).
    pub compared_ranges: u64,
    pub compared_keys: u64,
    /// Ranges verified earlier and untouched since: not read again.
    pub clean_ranges: u64,
    pub differences: Vec<Difference>,
    pub difference_count: u64,
    /// Each range (the first [`MAX_RANGE_LOG`]) as the window found it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub range_log: Vec<RangeEntry>,
}

/// At most this many ranges are listed in a proof's `range_log` (some
/// 50 MB of keys at 2,000 keys a range; beyond, the counts stand alone).
pub const MAX_RANGE_LOG: usize = 25_000;

/// One range in the cutover's proof: where it starts, when it was last
/// found equal before the window, and whether the window compared it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeEntry {
    /// The range's first key (key-value: lossy UTF-8, empty for the first
    /// range; documents: the namespace and the `_id`).
    pub first: String,
    /// When a check last found it equal at the generation it then had
    /// (ms since the epoch); absent if none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at_ms: Option<u64>,
    /// Compared inside the window (dirty, never verified, or differing);
    /// otherwise verified at its current generation and not read again.
    pub in_window: bool,
}

impl WindowCheck {
    /// As the cutover's comparison of this target: the keys compared
    /// inside the window and what differed.
    pub fn comparison(&self) -> super::Comparison {
        super::Comparison {
            compared: self.compared_keys,
            differences: self.difference_count,
            details: self.differences.iter().take(20).map(kv::detail_line).collect(),
            summary: format!(
                "compared {} of {} ranges inside the window ({} keys); {} verified before and untouched since",
                self.compared_ranges, self.ranges, self.compared_keys, self.clean_ranges
            ),
            ..Default::default()
        }
    }
}

/// Where a journaled event's key falls among the ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// In the range holding this key: `bound_i <= key < bound_{i+1}`.
    Key(Vec<u8>),
    /// Somewhere among the keys that start with this prefix: the range
    /// holding the prefix and every range whose bound starts with it.
    Prefix(Vec<u8>),
    /// Not one of the model's keys.
    Outside,
}

/// What one range's comparison found.
#[derive(Clone, Debug, Default)]
pub struct RangeReport {
    /// Keys (or documents) read on both sides.
    pub keys: u64,
    /// Of them, on the source.
    pub source_keys: u64,
    pub difference_count: u64,
    /// The first [`kv::MAX_LISTED`].
    pub differences: Vec<Difference>,
}

impl RangeReport {
    pub fn is_equal(&self) -> bool {
        self.difference_count == 0
    }

    /// Adds another report's findings (differences listed up to the cap).
    pub fn absorb(&mut self, other: RangeReport) {
        self.keys += other.keys;
        self.source_keys += other.source_keys;
        self.difference_count += other.difference_count;
        for d in other.differences {
            if self.differences.len() < kv::MAX_LISTED {
                self.differences.push(d);
            }
        }
    }
}

/// A data model's ranges: what [`RangeVerifier`] needs of a source and a
/// target of one model.
///
/// Contract: bounds come back from [`Self::cut`] sorted by their bytes,
/// the first empty; [`Self::place`] puts every key an event may write into
/// the range that [`Self::compare`] reads it in (or a wider span), so that
/// an event's touch dirties the range that holds its document. `compare`
/// reads the source first, then the target, each at its current state.
#[async_trait]
pub trait RangeModel: Send + Sync {
    fn source_name(&self) -> &str;
    fn target_name(&self) -> &str;
    /// Reads the source once in order and returns every `every`th key as a
    /// bound, the empty bound first, with the keys read.
    async fn cut(&self, every: usize) -> Result<(Vec<Vec<u8>>, u64), String>;
    /// Where the key of a journaled event falls.
    fn place(&self, key: &[u8]) -> Place;
    /// Compares the range `[from, to)` (`to` `None`: to the end).
    async fn compare(&self, from: &[u8], to: Option<&[u8]>) -> Result<RangeReport, String>;
    /// What no range covers, compared inside the window beside the dirty
    /// ranges (documents: namespaces created since the cut, and indexes).
    async fn window_extra(&self) -> Result<RangeReport, String> {
        Ok(RangeReport::default())
    }
    /// A bound as people read it (the proof's `range_log`).
    fn describe(&self, bound: &[u8]) -> String {
        String::from_utf8_lossy(bound).into_owned()
    }
    /// What the model learnt by its last [`Self::cut`] beyond the bounds,
    /// for a resumable comparison to carry to its next run.
    fn save_cut(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Takes back what [`Self::save_cut`] gave, instead of cutting again.
    fn load_cut(&self, _saved: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
}

/// A whole store as one range, for the pairs whose readers compare only
/// whole (a Vault mount, a JSON document, the keyring's files): a check
/// is the comparison `ferry verify` makes, and every event dirties it. A
/// quiet source's store stays verified, so the cutover compares nothing of
/// it inside the window; one that changed since the last pass is compared
/// whole there, as it was before continuous verification.
pub struct Whole {
    pub source_name: String,
    pub source: super::Reader,
    pub target_name: String,
    pub target: super::Reader,
    pub options: super::CompareOptions,
}

#[async_trait]
impl RangeModel for Whole {
    fn source_name(&self) -> &str {
        &self.source_name
    }
    fn target_name(&self) -> &str {
        &self.target_name
    }
    async fn cut(&self, _every: usize) -> Result<(Vec<Vec<u8>>, u64), String> {
        Ok((vec![Vec::new()], 0))
    }
    fn place(&self, _key: &[u8]) -> Place {
        Place::Prefix(Vec::new())
    }
    async fn compare(&self, _from: &[u8], _to: Option<&[u8]>) -> Result<RangeReport, String> {
        let c = super::compare(
            &self.source_name,
            &self.source,
            &self.target_name,
            &self.target,
            self.options,
        )
        .await?;
        Ok(RangeReport {
            keys: c.compared,
            source_keys: c.compared,
            difference_count: c.differences,
            differences: c
                .details
                .into_iter()
                .take(kv::MAX_LISTED)
                .map(|d| Difference {
                    key_suffix: d,
                    kind: kv::DiffKind::ValueDiffers,
                    detail: "the store compared whole".into(),
                })
                .collect(),
        })
    }
}

/// What a resumable comparison ([`RangeVerifier::verify_all`]) keeps
/// between runs: the ranges as cut, and those found equal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    pub version: u32,
    pub source: String,
    pub target: String,
    /// When the run that cut the ranges started (ms since the epoch).
    pub started_ms: u64,
    /// The bounds, base64.
    pub bounds: Vec<String>,
    /// The model's own record of its cut ([`RangeModel::save_cut`]).
    pub model: serde_json::Value,
    /// Ranges compared equal, by index, by this run and the earlier ones.
    pub done: Vec<usize>,
    /// Keys and documents read by every run so far.
    pub keys_read: u64,
}

const PROGRESS_VERSION: u32 = 1;

impl Progress {
    /// The file a comparison of `source` with `target` keeps its progress
    /// in: one per pair, named by a digest of the two names.
    pub fn file_name(source: &str, target: &str) -> String {
        let mut h = blake3::Hasher::new();
        h.update(source.as_bytes());
        h.update(b"\n");
        h.update(target.as_bytes());
        format!("verify-{}.json", &h.finalize().to_hex()[..16])
    }
}

/// What [`RangeVerifier::verify_all`] found.
#[derive(Clone, Debug, Default)]
pub struct FullCheck {
    pub ranges: u64,
    /// Ranges compared by this run.
    pub compared_ranges: u64,
    /// Ranges an earlier, interrupted run had compared equal: not read
    /// again.
    pub resumed_ranges: u64,
    /// When the ranges were cut (ms since the epoch).
    pub started_ms: u64,
    pub report: RangeReport,
}

/// The key-value model: suffixes below each side's prefix, compared by
/// [`kv::compare`] over range reads.
pub struct KvRanges {
    source: Arc<dyn KvReader>,
    target: Arc<dyn KvReader>,
    ttl_tolerance_s: i64,
}

impl KvRanges {
    pub fn new(source: Arc<dyn KvReader>, target: Arc<dyn KvReader>, ttl_tolerance_s: i64) -> Self {
        KvRanges {
            source,
            target,
            ttl_tolerance_s,
        }
    }

    fn slice(inner: &Arc<dyn KvReader>, from: &[u8], to: Option<&[u8]>) -> Slice {
        Slice {
            inner: Arc::clone(inner),
            from: from.to_vec(),
            to: to.map(<[u8]>::to_vec),
        }
    }
}

#[async_trait]
impl RangeModel for KvRanges {
    fn source_name(&self) -> &str {
        self.source.name()
    }
    fn target_name(&self) -> &str {
        self.target.name()
    }

    async fn cut(&self, every: usize) -> Result<(Vec<Vec<u8>>, u64), String> {
        let mut bounds = vec![Vec::new()];
        let mut cursor = self.source.cursor();
        let mut n = 0usize;
        while let Some(page) = cursor.next_page().await? {
            for e in page {
                n += 1;
                if n.is_multiple_of(every) {
                    bounds.push(e.suffix);
                }
            }
        }
        Ok((bounds, n as u64))
    }

    fn place(&self, key: &[u8]) -> Place {
        match self.source.suffix(key) {
            Some(s) => Place::Key(s.to_vec()),
            None => Place::Outside,
        }
    }

    async fn compare(&self, from: &[u8], to: Option<&[u8]>) -> Result<RangeReport, String> {
        let src = Self::slice(&self.source, from, to);
        let tgt = Self::slice(&self.target, from, to);
        let r = kv::compare(&src, &tgt, self.ttl_tolerance_s).await?;
        Ok(RangeReport {
            keys: r.source_keys + r.target_keys,
            source_keys: r.source_keys,
            difference_count: r.difference_count(),
            differences: r.differences,
        })
    }
}

/// The continuous verifier of one route's target.
pub struct RangeVerifier {
    model: Box<dyn RangeModel>,
    state: Mutex<State>,
}

/// A reader of one range of another reader.
struct Slice {
    inner: Arc<dyn KvReader>,
    from: Vec<u8>,
    to: Option<Vec<u8>>,
}

#[async_trait]
impl KvReader for Slice {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn cursor(&self) -> Box<dyn KvCursor> {
        self.inner.cursor_range(&self.from, self.to.as_deref())
    }
    async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), String> {
        self.inner.lease_ttl(lease).await
    }
}

/// How long reading `keys` takes at `keys_per_s`.
fn pace(keys: u64, keys_per_s: u64) -> Duration {
    Duration::from_secs_f64(keys as f64 / keys_per_s.max(1) as f64)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RangeVerifier {
    /// A key-value route's verifier.
    pub fn new(source: Arc<dyn KvReader>, target: Arc<dyn KvReader>, ttl_tolerance_s: i64) -> Self {
        Self::over(Box::new(KvRanges::new(source, target, ttl_tolerance_s)))
    }

    /// The verifier of any model.
    pub fn over(model: Box<dyn RangeModel>) -> Self {
        RangeVerifier {
            model,
            state: Mutex::new(State::default()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("verifier lock poisoned"))
    }

    /// The source's and the target's names, as the model gives them.
    pub fn names(&self) -> (&str, &str) {
        (self.model.source_name(), self.model.target_name())
    }

    /// Applied events touched these keys (source keys, as journaled).
    pub fn touch<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        let places: Vec<Place> = keys.into_iter().map(|k| self.model.place(k)).collect();
        self.with(|s| {
            for p in &places {
                for i in s.ranges_of(p) {
                    s.ranges[i].generation += 1;
                }
            }
        });
    }

    /// Every range dirty: a target write no event names is coming (a
    /// snapshot's sweep at its end).
    pub fn invalidate(&self) {
        self.with(|s| s.ranges.iter_mut().for_each(|r| r.generation += 1));
    }

    /// Cuts the ranges from the source's keys (read once, every
    /// [`RANGE_KEYS`]th kept). Touches before the cut are not needed: every
    /// range starts unverified.
    async fn cut(&self) -> Result<(), String> {
        let (bounds, n) = self.model.cut(RANGE_KEYS).await?;
        if bounds.first().is_none_or(|b| !b.is_empty()) || !bounds.is_sorted() {
            return Err(format!(
                "{}: the ranges' bounds are not in order; no continuous verification",
                self.model.source_name()
            ));
        }
        let ranges = vec![Range::default(); bounds.len()];
        self.with(|s| {
            s.keys_read += n;
            s.bounds = bounds;
            s.ranges = ranges;
        });
        Ok(())
    }

    /// Checks range `i` once; `lag_zero` says whether the route had no event
    /// in flight around the check.
    async fn check(&self, i: usize, lag_zero: bool) -> Result<RangeReport, String> {
        let (before, from, to) = self.with(|s| {
            (
                s.ranges[i].generation,
                s.bounds[i].clone(),
                s.bounds.get(i + 1).cloned(),
            )
        });
        let report = self.model.compare(&from, to.as_deref()).await?;
        self.with(|s| {
            s.keys_read += report.keys;
            let r = &mut s.ranges[i];
            if r.generation != before {
                // An event arrived meanwhile: nothing is concluded.
                r.differing = None;
                return;
            }
            if report.is_equal() {
                r.verified = Some((before, now_ms()));
                r.differing = None;
                r.standing.clear();
            } else if !lag_zero {
                r.differing = None;
            } else {
                match r.differing {
                    Some((g, since)) if g == before && since.elapsed() >= STANDING_AFTER => {
                        if r.standing.is_empty() {
                            tracing::warn!(
                                source = self.model.source_name(),
                                target = self.model.target_name(),
                                first = ?report.differences.first(),
                                "the target differs from the source in a range no event touched: written behind Ferry's back?"
                            );
                        }
                        r.standing.clone_from(&report.differences);
                    }
                    Some((g, _)) if g == before => {}
                    _ => r.differing = Some((before, Instant::now())),
                }
            }
        });
        Ok(report)
    }

    /// Background passes until `stop` resolves: the ranges are cut, then
    /// checked one after another, dirty ones first, for ever, reading at
    /// most `keys_per_s` keys a second (both sides counted). `lag_zero`
    /// says whether the route has no event in flight.
    pub async fn run(
        self: Arc<Self>,
        keys_per_s: u64,
        lag_zero: impl Fn() -> bool + Send,
        mut stop: impl FnMut() -> bool + Send,
    ) {
        let pace = |keys: u64| pace(keys, keys_per_s);
        while !stop() {
            if self.with(|s| s.bounds.is_empty()) {
                let t = Instant::now();
                if let Err(e) = self.cut().await {
                    tracing::debug!(source = self.model.source_name(), "verifier: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let n = self.with(|s| s.keys_read);
                tokio::time::sleep(pace(n).saturating_sub(t.elapsed())).await;
            }
            let dirty: Vec<bool> = self.with(|s| (0..s.ranges.len()).map(|i| s.dirty(i)).collect());
            let mut order: Vec<usize> = (0..dirty.len()).collect();
            order.sort_by_key(|&i| !dirty[i]);
            for i in order {
                if stop() {
                    return;
                }
                let t = Instant::now();
                let lag_before = lag_zero();
                match self.check(i, lag_before).await {
                    Ok(r) => {
                        tokio::time::sleep(pace(r.keys.max(1)).saturating_sub(t.elapsed())).await
                    }
                    Err(e) => {
                        tracing::debug!(source = self.model.source_name(), "verifier: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            self.with(|s| s.passes += 1);
        }
    }

    /// Whether the ranges are cut (a verifier that has not cut them yet
    /// knows nothing: the cutover compares everything).
    pub fn ready(&self) -> bool {
        self.with(|s| !s.bounds.is_empty())
    }

    /// Inside the cutover's window, every event up to the fence applied:
    /// compares the ranges not verified at their current generation, and
    /// what no range covers.
    pub async fn verify_dirty(&self) -> Result<WindowCheck, String> {
        let n = self.with(|s| s.ranges.len());
        let mut w = WindowCheck {
            ranges: n as u64,
            ..Default::default()
        };
        let mut all = RangeReport::default();
        for i in 0..n {
            let (dirty, bound, verified_at_ms) = self.with(|s| {
                (
                    s.dirty(i),
                    (i < MAX_RANGE_LOG).then(|| s.bounds[i].clone()),
                    s.ranges[i].verified.map(|(_, at)| at),
                )
            });
            let first = bound.map(|b| self.model.describe(&b)).unwrap_or_default();
            if i < MAX_RANGE_LOG {
                w.range_log.push(RangeEntry {
                    first,
                    verified_at_ms,
                    in_window: dirty,
                });
            }
            if !dirty {
                w.clean_ranges += 1;
                continue;
            }
            w.compared_ranges += 1;
            all.absorb(self.check(i, true).await?);
        }
        all.absorb(self.model.window_extra().await?);
        w.compared_keys = all.keys;
        w.difference_count = all.difference_count;
        w.differences = all.differences;
        Ok(w)
    }

    /// A whole comparison, range by range, that can be resumed: `resume`
    /// is the progress an interrupted run saved (ignored unless it is of
    /// this source and target), `save` is called with the progress after
    /// the cut, then at most once a second, and at the end. Ranges that
    /// `resume` holds as equal are not read again; the rest, and what no
    /// range covers, are compared now. `keys_per_s` bounds the read rate.
    pub async fn verify_all(
        &self,
        resume: Option<Progress>,
        keys_per_s: Option<u64>,
        mut save: impl FnMut(&Progress) -> Result<(), String> + Send,
    ) -> Result<FullCheck, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let resume = resume.filter(|p| {
            p.version == PROGRESS_VERSION
                && p.source == self.model.source_name()
                && p.target == self.model.target_name()
        });
        let mut p = match resume {
            Some(p) => {
                let bounds = p
                    .bounds
                    .iter()
                    .map(|b| b64.decode(b).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        format!("the saved progress is damaged ({e}); start again with --restart")
                    })?;
                if bounds.first().is_none_or(|b| !b.is_empty())
                    || !bounds.is_sorted()
                    || p.done.iter().any(|&i| i >= bounds.len())
                {
                    return Err(
                        "the saved progress is damaged (its ranges are not in order); start again with --restart".into(),
                    );
                }
                self.model.load_cut(&p.model)?;
                let ranges = vec![Range::default(); bounds.len()];
                self.with(|s| {
                    s.bounds = bounds;
                    s.ranges = ranges;
                });
                p
            }
            None => {
                let started_ms = now_ms();
                self.cut().await?;
                let (bounds, keys_read) = self.with(|s| (s.bounds.clone(), s.keys_read));
                Progress {
                    version: PROGRESS_VERSION,
                    source: self.model.source_name().to_string(),
                    target: self.model.target_name().to_string(),
                    started_ms,
                    bounds: bounds.iter().map(|b| b64.encode(b)).collect(),
                    model: self.model.save_cut(),
                    done: Vec::new(),
                    keys_read,
                }
            }
        };
        save(&p)?;
        let n = self.with(|s| s.ranges.len());
        let done: std::collections::HashSet<usize> = p.done.iter().copied().collect();
        let mut check = FullCheck {
            ranges: n as u64,
            resumed_ranges: done.len() as u64,
            started_ms: p.started_ms,
            ..Default::default()
        };
        let pace = |keys: u64| keys_per_s.map_or(Duration::ZERO, |r| pace(keys, r));
        let mut saved = Instant::now();
        for i in (0..n).filter(|i| !done.contains(i)) {
            let t = Instant::now();
            let (from, to) = self.with(|s| (s.bounds[i].clone(), s.bounds.get(i + 1).cloned()));
            let r = self.model.compare(&from, to.as_deref()).await?;
            check.compared_ranges += 1;
            p.keys_read += r.keys;
            let keys = r.keys;
            if r.is_equal() {
                p.done.push(i);
            }
            check.report.absorb(r);
            if saved.elapsed() >= Duration::from_secs(1) {
                save(&p)?;
                saved = Instant::now();
            }
            tokio::time::sleep(pace(keys).saturating_sub(t.elapsed())).await;
        }
        check.report.absorb(self.model.window_extra().await?);
        save(&p)?;
        Ok(check)
    }

    pub fn status(&self) -> VerifierStatus {
        self.with(|s| VerifierStatus {
            source: self.model.source_name().to_string(),
            target: self.model.target_name().to_string(),
            ranges: s.ranges.len() as u64,
            verified: (0..s.ranges.len()).filter(|&i| !s.dirty(i)).count() as u64,
            passes: s.passes,
            keys_read: s.keys_read,
            differences: s
                .ranges
                .iter()
                .flat_map(|r| r.standing.iter().cloned())
                .take(20)
                .collect(),
        })
    }
}

/// A cursor over the entries of `inner` whose suffix is in `[from, to)`,
/// filtering a whole cursor: what a reader without range reads offers.
pub struct Filtered {
    pub inner: Box<dyn KvCursor>,
    pub from: Vec<u8>,
    pub to: Option<Vec<u8>>,
    pub done: bool,
}

#[async_trait]
impl KvCursor for Filtered {
    async fn next_page(&mut self) -> Result<Option<Vec<KvEntry>>, String> {
        if self.done {
            return Ok(None);
        }
        match self.inner.next_page().await? {
            None => Ok(None),
            Some(page) => {
                let mut out = Vec::new();
                for e in page {
                    if self.to.as_deref().is_some_and(|t| e.suffix.as_slice() >= t) {
                        self.done = true;
                        break;
                    }
                    if e.suffix >= self.from {
                        out.push(e);
                    }
                }
                Ok(Some(out))
            }
        }
    }
    fn position(&self) -> i64 {
        self.inner.position()
    }
}
