//! `diffsteer serve`: the engine over HTTP, on axum + tokio (the most widely used
//! async HTTP stack in Rust: hyper underneath, tower layers for limits, graceful
//! shutdown built in, and a `Router` another service can mount in its own app).
//!
//! Every request goes to one [`Service`]: its samples join the running batch at
//! the next step boundary, share model calls with every other request's samples
//! whatever their settings, and leave when done (continuous batching).
//!
//! | route | |
//! |---|---|
//! | `POST /v1/generate` | a request (the JSON of a `diffsteer batch` line; `id` optional) → `{"id", "images": [{"index", "seed", "png_base64", "metadata"}]}`; `?stream=true` streams Server-Sent Events instead (`progress`, `image`, `done`) |
//! | `POST /v1/images/generations` | OpenAI's image API on a text-to-image pipeline (`prompt`, `n`, `size`, `response_format: "b64_json"`; see [`openai`]) |
//! | `GET /healthz` | 200 while serving, 503 while shutting down |
//! | `GET /metrics` | Prometheus text ([`metrics`]) |
//!
//! Limits and back-pressure: the queue is bounded (429 with `Retry-After` when
//! full), request sizes are bounded ([`RequestLimits`]: 400 naming the field, 413
//! for a body too large), and every error is JSON (`{"error": {"message", "field"}}`).
//! When a client disconnects, its samples leave the batch at the next step.

mod error;
mod generate;
pub mod metrics;
pub mod openai;

pub use error::ApiError;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use crate::pipeline::Service;

/// Bounds on what one request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_count: u64,
    pub max_steps: usize,
    pub max_particles: usize,
    pub max_body_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_count: 64,
            max_steps: 500,
            max_particles: 16,
            max_body_bytes: 1 << 20,
        }
    }
}

/// Generation requests answered, by HTTP status (499: the client went away).
#[derive(Debug, Default)]
pub struct HttpCounters {
    by_status: Mutex<BTreeMap<u16, u64>>,
}

impl HttpCounters {
    pub fn count(&self, status: u16) {
        let mut map = self
            .by_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *map.entry(status).or_default() += 1;
    }

    pub fn by_status(&self) -> Vec<(u16, u64)> {
        self.by_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(s, c)| (*s, *c))
            .collect()
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    service: Arc<Service>,
    limits: RequestLimits,
    http: Arc<HttpCounters>,
}

/// The server's routes over `service`, for [`run`] or for mounting in another
/// axum app.
pub fn router(service: Arc<Service>, limits: RequestLimits) -> Router {
    let state = AppState {
        service,
        limits,
        http: Arc::new(HttpCounters::default()),
    };
    Router::new()
        .route(
            "/v1/generate",
            post(generate::generate).fallback(method_not_allowed),
        )
        .route(
            "/v1/images/generations",
            post(openai::generations).fallback(method_not_allowed),
        )
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .route("/metrics", get(metrics_text).fallback(method_not_allowed))
        .fallback(not_found)
        // The generate handler reads and bounds the body itself (a body over the
        // limit is answered 413 in the server's JSON form).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route (routes: POST /v1/generate, GET /healthz, GET /metrics)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed (POST /v1/generate, GET /healthz, GET /metrics)",
    )
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.service.is_accepting() {
        (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting down"})),
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let text = metrics::render(&state.service.metrics(), &state.http);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Serves `service` on `listener` until `shutdown` resolves; then new requests
/// are answered 503 while those in flight finish, and it returns once they have.
pub async fn run(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    limits: RequestLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(service.clone(), limits);
    let drained = {
        let service = service.clone();
        async move {
            shutdown.await;
            service.stop_accepting();
            while !service.is_idle() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(drained)
        .await
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
