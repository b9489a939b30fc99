//! `POST /v1/generate`: one request in the JSON of a `diffsteer batch` line; the
//! images come back as base64 PNGs with their metadata, all at once (JSON) or one
//! by one as Server-Sent Events (`?stream=true`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::pipeline::{
    CancelOnDrop, EventSink, GeneratedImage, Plan, Request, SubmitError, TicketEvent,
};

use super::{ApiError, AppState, HttpCounters};

#[derive(Debug, Deserialize)]
pub(crate) struct GenerateQuery {
    stream: Option<String>,
}

/// Events into the async world; closed once the handler (the client) is gone.
struct ChannelSink(UnboundedSender<TicketEvent>);

impl EventSink for ChannelSink {
    fn send(&mut self, event: TicketEvent) -> bool {
        self.0.send(event).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// Counts the request as 499 (client went away) unless an answer was recorded.
pub(crate) struct Outcome {
    pub http: Arc<HttpCounters>,
    pub status: Option<u16>,
}

impl Outcome {
    pub fn record(&mut self, status: StatusCode) {
        self.status = Some(status.as_u16());
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.http.count(self.status.unwrap_or(499));
    }
}

fn image_json(index: u64, image: &GeneratedImage) -> Result<Value, ApiError> {
    let png = image.png().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the image: {e}"),
        )
    })?;
    Ok(json!({
        "index": index,
        "seed": image.metadata.seed,
        "png_base64": base64::engine::general_purpose::STANDARD.encode(png),
        "metadata": image.metadata,
    }))
}

/// A request that was valid but failed while sampling (a non-finite value): the
/// request's settings made it fail, so it is the client's to change.
fn sampling_failed(index: u64, e: &crate::Error) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("image {index} failed while sampling: {e}"),
    )
}

/// Bodies over the limit are still read (and dropped) up to this size, so that
/// the client, still sending, gets the 413 rather than a broken connection.
const DRAIN_BYTES: usize = 64 << 20;

/// The body, up to `limit` bytes; larger ones are a 413.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(None, format!("cannot read the body: {e}")))?;
        total = total.saturating_add(chunk.len());
        if total > DRAIN_BYTES {
            return Err(too_large());
        }
        if total <= limit {
            bytes.extend_from_slice(&chunk);
        }
    }
    if total > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Bounds and validates the body, and queues the request.
fn submit(
    state: &AppState,
    body: &[u8],
) -> Result<(Arc<Plan>, CancelOnDrop, UnboundedReceiver<TicketEvent>), ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request(None, "the body is not UTF-8 text"))?;
    let request = Request::from_json_str(text).map_err(ApiError::invalid)?;
    submit_request(state, &request)
}

/// Bounds a request by the server's limits and queues it.
pub(crate) fn submit_request(
    state: &AppState,
    request: &Request,
) -> Result<(Arc<Plan>, CancelOnDrop, UnboundedReceiver<TicketEvent>), ApiError> {
    let limits = state.limits;
    if request.count > limits.max_count {
        return Err(ApiError::bad_request(
            Some("count"),
            format!(
                "{} images requested; this server takes at most {}",
                request.count, limits.max_count
            ),
        ));
    }
    if request.steps > limits.max_steps {
        return Err(ApiError::bad_request(
            Some("steps"),
            format!(
                "{} steps requested; this server takes at most {}",
                request.steps, limits.max_steps
            ),
        ));
    }
    if request.particles > limits.max_particles {
        return Err(ApiError::bad_request(
            Some("particles"),
            format!(
                "{} particles requested; this server takes at most {}",
                request.particles, limits.max_particles
            ),
        ));
    }
    let (sender, receiver) = unbounded_channel();
    let (plan, cancel) = state
        .service
        .submit_to(request, Box::new(ChannelSink(sender)))
        .map_err(|e| match e {
            SubmitError::Invalid(e) => ApiError::invalid(e),
            SubmitError::QueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()).with_retry_after(1)
            }
            SubmitError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).with_retry_after(5)
            }
        })?;
    Ok((plan, cancel, receiver))
}

pub(crate) async fn generate(
    State(state): State<AppState>,
    query: Result<Query<GenerateQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    let mut outcome = Outcome {
        http: state.http.clone(),
        status: None,
    };
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            let e = ApiError::bad_request(None, rejection.body_text());
            outcome.record(e.status);
            return e.into_response();
        }
    };
    let body = match read_body(body, state.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => {
            outcome.record(e.status);
            return e.into_response();
        }
    };
    let stream = match query.stream.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            let e = ApiError::bad_request(
                Some("stream"),
                format!("stream={other:?}: expected true or false"),
            );
            outcome.record(e.status);
            return e.into_response();
        }
    };
    let (plan, cancel, receiver) = match submit(&state, &body) {
        Ok(submitted) => submitted,
        Err(e) => {
            outcome.record(e.status);
            return e.into_response();
        }
    };
    if stream {
        return stream_events(plan, cancel, receiver, outcome).into_response();
    }
    let response = collect(&plan, receiver).await;
    drop(cancel);
    match response {
        Ok(body) => {
            outcome.record(StatusCode::OK);
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => {
            outcome.record(e.status);
            e.into_response()
        }
    }
}

/// Waits for every image; the response body.
pub(crate) async fn collect(
    plan: &Arc<Plan>,
    mut receiver: UnboundedReceiver<TicketEvent>,
) -> Result<Value, ApiError> {
    let mut images: Vec<(u64, Value)> = Vec::new();
    while let Some(event) = receiver.recv().await {
        match event {
            TicketEvent::Image { index, result } => match result {
                Ok(image) => images.push((index, image_json(index, &image)?)),
                Err(e) => return Err(sampling_failed(index, &e)),
            },
            TicketEvent::Progress { .. } => {}
            TicketEvent::Done => break,
        }
    }
    if images.len() as u64 != plan.count() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine stopped before the request finished",
        ));
    }
    images.sort_by_key(|(index, _)| *index);
    Ok(json!({
        "id": plan.id(),
        "images": images.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
}

/// `progress` events (`{"step": model calls done, "total": all the request's
/// calls}`), one `image` event per image (as in the JSON answer), an `error`
/// event for a failed image, then `done`.
fn stream_events(
    plan: Arc<Plan>,
    cancel: CancelOnDrop,
    receiver: UnboundedReceiver<TicketEvent>,
    mut outcome: Outcome,
) -> Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>> {
    // The stream owns the cancel guard and the outcome: a client that goes away
    // drops the stream, which cancels the request and counts it as 499.
    outcome.status = None;
    let id = plan.id().map(str::to_string);
    let mut guard = Some((cancel, outcome));
    let events = UnboundedReceiverStream::new(receiver).map(move |event| {
        let event = match event {
            TicketEvent::Progress {
                calls_done,
                calls_total,
            } => Event::default()
                .event("progress")
                .json_data(json!({"step": calls_done, "total": calls_total})),
            TicketEvent::Image { index, result } => match result {
                Ok(image) => match image_json(index, &image) {
                    Ok(v) => Event::default().event("image").json_data(v),
                    Err(e) => Event::default().event("error").json_data(e.body()),
                },
                Err(e) => {
                    if let Some((_, outcome)) = guard.as_mut() {
                        outcome.record(StatusCode::UNPROCESSABLE_ENTITY);
                    }
                    Event::default()
                        .event("error")
                        .json_data(sampling_failed(index, &e).body())
                }
            },
            TicketEvent::Done => {
                if let Some((_, mut outcome)) = guard.take() {
                    if outcome.status.is_none() {
                        outcome.record(StatusCode::OK);
                    }
                }
                Event::default().event("done").json_data(json!({"id": id}))
            }
        };
        Ok(event.unwrap_or_else(|_| Event::default().event("error").data("{}")))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
