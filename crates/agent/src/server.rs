//! The HTTPS control API (see [`crate::api`]).
//!
//! The listener is bound before anything else starts, so a taken port is
//! one clear error at start-up rather than a dead API later. Authentication
//! is a bearer token compared in constant time; when the agent requires
//! client certificates, the TLS handshake already proved the caller and no
//! token is needed. `/metrics` is open to scrapers (it holds no secrets).

use crate::api::{StatusResponse, StopRequest, StopResponse};
use crate::security::token_matches;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

/// What the API needs from the agent.
pub trait Control: Send + Sync + 'static {
    fn status(&self) -> StatusResponse;
    fn stop(&self, req: StopRequest) -> StopResponse;
}

struct ApiState {
    token: String,
    /// False when client certificates are required (the handshake authenticated).
    token_required: bool,
    control: Arc<dyn Control>,
    metrics: PrometheusHandle,
}

/// Binds `addr` now; the error names the address and the fix.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let l = TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen on {addr} ({e}); choose another --agent.listen or stop what uses it")
    })?;
    l.set_nonblocking(true)
        .map_err(|e| format!("cannot configure the listener on {addr}: {e}"))?;
    Ok(l)
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    token: String,
    token_required: bool,
    control: Arc<dyn Control>,
    metrics: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(ApiState {
        token,
        token_required,
        control,
        metrics,
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/page.js", get(page_js))
        // Browsers ask for it on their own; there is none.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/v1/status", get(status))
        .route("/v1/stop", post(stop))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    axum_server::from_tcp_rustls(listener, config)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
}

fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    if !state.token_required {
        return true;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.is_some_and(|t| token_matches(t.trim(), &state.token))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": "missing or wrong token: the CLI reads it from <journal>/agent.token"})),
    )
        .into_response()
}

async fn status(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    Json(s.control.status()).into_response()
}

async fn stop(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Option<Json<StopRequest>>,
) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let resp = s.control.stop(req);
    let code = if resp.accepted {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CONFLICT
    };
    (code, Json(resp)).into_response()
}

async fn metrics_text(State(s): State<Arc<ApiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// The status page's shell: no data, so no token (see [`crate::page`]).
async fn page() -> Response {
    with_page_headers("text/html; charset=utf-8", crate::page::INDEX_HTML)
}

async fn page_js() -> Response {
    with_page_headers("text/javascript; charset=utf-8", crate::page::PAGE_JS)
}

fn with_page_headers(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    for (k, v) in crate::page::SECURITY_HEADERS {
        r.headers_mut().insert(
            header::HeaderName::from_static(k),
            header::HeaderValue::from_static(v),
        );
    }
    r
}
