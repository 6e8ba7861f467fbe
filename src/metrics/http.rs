//! The operators' HTTP listener (`--metrics-addr`): `/metrics` in the
//! Prometheus text format, `/live` (the process answers) and `/ready` (the
//! node serves as a replica: state `ready`, not syncing or leaving), for
//! Prometheus, load balancers and Kubernetes probes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::Metrics;

/// What `/ready` asks: the node's state now (`ready`, `syncing`, ...).
pub type StateFn = Arc<dyn Fn() -> &'static str + Send + Sync>;

#[derive(Clone)]
struct Shared {
    metrics: Metrics,
    state: StateFn,
}

/// Serves `metrics` and the probes on `listener`, until the task running
/// it is dropped or aborted.
pub async fn serve(listener: TcpListener, metrics: Metrics, state: StateFn) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .with_state(Shared { metrics, state });
    axum::serve(listener, app).await
}

async fn scrape(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        shared.metrics.render(),
    )
}

/// 200 when the node is `ready`, 503 with its state otherwise.
async fn ready(State(shared): State<Shared>) -> impl IntoResponse {
    let state = (shared.state)();
    let code = if state == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{state}\n"))
}
