//! The status page for a browser: the same data as `ferry status`.

use crate::api::StatusResponse;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(s: &StatusResponse) -> String {
    let mut rows = String::new();
    for sh in &s.lag.shards {
        for (t, p) in &sh.targets {
            let phase = serde_json::to_value(&sh.phase)
                .ok()
                .and_then(|v| v.get("phase").and_then(|p| p.as_str()).map(str::to_string))
                .unwrap_or_default();
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.0}</td><td>{}</td></tr>",
                sh.shard,
                esc(&phase),
                esc(t),
                sh.journaled_seq,
                p.applied_seq,
                p.lag_events,
                p.lag_seconds,
                p.rate_per_s,
                esc(p.error.as_deref().unwrap_or(""))
            ));
        }
    }
    let proof = s
        .proof
        .as_ref()
        .map(|p| {
            format!(
                "<p>Cutover proof: fence at {}, {} keys verified, {} differences, read-only window {} ms.</p>",
                p.fence_position, p.verified_keys, p.differences, p.read_only_window_ms
            )
        })
        .unwrap_or_default();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>Ferry</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>Ferry: {state:?}</h1><p>{sources} → {targets}</p><p>Cutover: {phase:?} {msg}</p>{proof}{error}
<table><tr><th>shard</th><th>phase</th><th>target</th><th>journaled</th><th>applied</th><th>lag (events)</th><th>lag (s)</th><th>rate/s</th><th>error</th></tr>{rows}</table></body></html>"#,
        state = s.state,
        sources = esc(&s.sources.join(", ")),
        targets = esc(&s.targets.join(", ")),
        phase = s.cutover.phase,
        msg = esc(&s.cutover.message),
        error = s
            .error
            .as_deref()
            .map(|e| format!("<p><b>Error:</b> {}</p>", esc(e)))
            .unwrap_or_default(),
    )
}
