//! The HTTP server: the router, the application state it shares, and serving on a socket the
//! caller has already bound (so tests bind port 0 and know the address before anything runs).

pub mod audit;
mod audited;
pub mod backend;
pub mod changes;
pub mod connections;
pub mod dashboard;
pub mod drift;
mod error;
pub mod history;
mod origin;
mod raw;
mod record;
mod tls;
mod unrouted;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post, put};
use axum::Router;

use crate::operations::health::Health;
pub use error::ApiError;

/// The server as its HTTP edge holds it: opened with [`App::open`] (deciding on the system
/// clock) or [`App::open_with`] (on a clock a test can move).
pub use crate::operations::Server as App;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("server.tls: {file}: {problem}")]
    Tls { file: String, problem: String },
    #[error("cannot listen for /metrics on {address} (server {{ metrics_listen }}): {source}")]
    Metrics {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Notify(#[from] crate::operations::notify::NotifyError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether the files of `server.tls` make usable TLS settings; what is wrong with them if not.
pub fn check_tls(settings: &crate::config::Tls) -> Result<(), StartError> {
    tls::config(settings).map(drop)
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/v1/state/{env}", any(backend::nameless))
        .route("/v1/state/{env}/", any(backend::nameless))
        .route("/v1/state/{env}/{*name}", any(backend::state))
        .route("/v1/changes", get(changes::list).post(changes::create))
        .route("/v1/changes/{id}", get(changes::show))
        .route("/v1/changes/{id}/attest", post(changes::attest))
        .route("/v1/changes/{id}/plan", put(changes::replan))
        .route("/v1/changes/{id}/{verb}", post(changes::decide))
        .route(
            "/v1/history/{env}/{*name}",
            get(history::history).post(history::history),
        )
        .route("/v1/status", get(history::status))
        .route("/v1/drift", get(drift::status))
        .route(
            "/v1/drift/{env}/{*name}",
            get(drift::state).post(drift::state),
        )
        .route("/v1/audit", get(audit::read))
        .route("/metrics", get(metrics))
        .route("/v1/breakglass", post(changes::open_breakglass))
        .route("/v1/breakglass/{id}/close", post(changes::close_breakglass))
        .merge(dashboard::routes())
        // After every route: it applies to those registered before it.
        .method_not_allowed_fallback(unrouted::method_not_allowed)
        .fallback(unrouted::not_found)
        // Around every route and fallback: it writes the audit record a handler opened.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            record::layer,
        ))
        .with_state(app)
}

fn health_reply(code: StatusCode, health: &Health) -> (StatusCode, String) {
    let body =
        serde_json::to_string(health).unwrap_or_else(|_| "{\"status\":\"degraded\"}".to_string());
    (code, format!("{body}\n"))
}

/// `GET /healthz` (liveness): 200 while the server runs, naming in its body every database
/// that does not answer and every environment that is not served.
async fn health(State(app): State<Arc<App>>) -> impl IntoResponse {
    health_reply(StatusCode::OK, &app.health().await)
}

/// `GET /metrics`: Prometheus's text format, for a caller with `audit:read` somewhere
/// (Prometheus sends a token as `authorization: { credentials: ... }`). Scrapes are not
/// recorded in the audit log: they would fill it every few seconds.
async fn metrics(
    State(app): State<Arc<App>>,
    raw: raw::Raw,
) -> Result<impl IntoResponse, ApiError> {
    let origin = raw.origin()?;
    let authorization = raw
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = app
        .authenticate(authorization, origin.certificate.as_deref())
        .await?;
    let text = crate::operations::metrics::scrape(&app, &caller, origin.client).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, METRICS_TYPE)], text))
}

/// `GET /readyz` (readiness): the same body, 503 while anything it names is unavailable.
async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    let health = app.health().await;
    let code = if health.unavailable.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    health_reply(code, &health)
}

/// Serves until `shutdown` completes, with TLS when the config has a `tls` block, and the
/// connections bounded as `server` says (see [`connections`]), writing checkpoints of every
/// audit chain's head at start, as the chains grow, and once serving ends, delivering the
/// notifications of the config's `notify` blocks meanwhile, and closing the databases of
/// environments nobody uses.
pub async fn serve(
    app: Arc<App>,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = match &app.config.server.metrics_listen {
        Some(address) => Some(serve_metrics(app.clone(), address)?),
        None => None,
    };
    let notify = app.start_notify().await?;
    let checkpoints = app.start_checkpoints().await;
    let closing = app.start_closing_idle();
    let served = serve_connections(app.clone(), listener, shutdown).await;
    closing.abort();
    notify.shutdown().await;
    app.stop_checkpoints(checkpoints).await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    served
}

/// Serves `GET /metrics`, without credentials, on `server { metrics_listen }`, and nothing
/// else there; it ends when the server does.
fn serve_metrics(app: Arc<App>, address: &str) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let listener = std::net::TcpListener::bind(address).map_err(|source| StartError::Metrics {
        address: address.to_string(),
        source,
    })?;
    tracing::info!(address, "serving /metrics without credentials");
    let limits = app.config.server.connections;
    let router = Router::new()
        .route("/metrics", get(open_metrics))
        .with_state(app);
    Ok(tokio::spawn(async move {
        let never = std::future::pending::<()>();
        if let Err(e) = connections::serve(router, listener, limits, None, never).await {
            tracing::error!(error = %e, "the metrics address stopped serving");
        }
    }))
}

/// `GET /metrics` on `server { metrics_listen }`.
async fn open_metrics(State(app): State<Arc<App>>) -> Result<impl IntoResponse, ApiError> {
    let text = crate::operations::metrics::measure(&app).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, METRICS_TYPE)], text))
}

/// Prometheus's text format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn serve_connections(
    app: Arc<App>,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let limits = app.config.server.connections;
    let tls = app
        .config
        .server
        .tls
        .as_ref()
        .map(tls::config)
        .transpose()?;
    connections::serve(router(app), listener, limits, tls, shutdown).await?;
    Ok(())
}
