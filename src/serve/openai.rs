//! `POST /v1/images/generations`, OpenAI's image API on a text-to-image pipeline:
//! `prompt` (required), `n` (images, default 1), `size` (`"WxH"`, default the
//! pipeline's), `response_format` (`"b64_json"`, the only one: the server keeps no
//! files to link to), and `model` / `user` accepted and ignored, as clients send
//! them. Extensions in the engine's own terms: `negative_prompt`, `seed`, `steps`,
//! `cfg`, `scheduler`. The answer is `{"created": unix time, "data": [{"b64_json":
//! …, "revised_prompt": the prompt}, …]}`; errors are the server's usual JSON.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::pipeline::Request;

use super::generate::{collect, read_body, submit_request, Outcome};
use super::{ApiError, AppState};

const FIELDS: [&str; 10] = [
    "prompt",
    "n",
    "size",
    "response_format",
    "model",
    "user",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
];

/// The engine request an OpenAI-style body asks for.
fn request_of(body: &Map<String, Value>) -> Result<Request, ApiError> {
    let mut engine = Map::new();
    for (key, value) in body {
        match key.as_str() {
            "prompt" => {
                if !value.is_string() {
                    return Err(ApiError::bad_request(Some("prompt"), "expected a string"));
                }
                engine.insert("prompt".into(), value.clone());
            }
            "n" => {
                engine.insert("count".into(), value.clone());
            }
            "size" => {
                let text = value.as_str().ok_or_else(|| {
                    ApiError::bad_request(
                        Some("size"),
                        "expected \"WIDTHxHEIGHT\", e.g. \"256x256\"",
                    )
                })?;
                let parsed = text.split_once('x').and_then(|(w, h)| {
                    Some((w.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?))
                });
                let Some((w, h)) = parsed else {
                    return Err(ApiError::bad_request(
                        Some("size"),
                        format!("{text:?}: expected \"WIDTHxHEIGHT\", e.g. \"256x256\""),
                    ));
                };
                engine.insert("width".into(), json!(w));
                engine.insert("height".into(), json!(h));
            }
            "response_format" => {
                if value.as_str() != Some("b64_json") {
                    return Err(ApiError::bad_request(
                        Some("response_format"),
                        "only \"b64_json\" is served (the server keeps no image files to link to)",
                    ));
                }
            }
            "model" | "user" => {}
            "negative_prompt" | "seed" | "steps" | "cfg" | "scheduler" => {
                engine.insert(key.clone(), value.clone());
            }
            other => {
                return Err(ApiError::bad_request(
                    Some(other),
                    format!("unknown field; accepted: {}, scheduler", FIELDS.join(", ")),
                ))
            }
        }
    }
    if !engine.contains_key("prompt") {
        return Err(ApiError::bad_request(
            Some("prompt"),
            "missing: give the prompt",
        ));
    }
    engine.entry("count").or_insert(json!(1));
    Request::from_json(&Value::Object(engine)).map_err(|e| as_client_field(ApiError::invalid(e)))
}

/// The engine's field names as the client sent them.
fn as_client_field(mut e: ApiError) -> ApiError {
    e.field = e.field.map(|f| match f.as_str() {
        "count" => "n".to_string(),
        "width" | "height" => "size".to_string(),
        _ => f,
    });
    e
}

pub(crate) async fn generations(State(state): State<AppState>, body: Body) -> Response {
    let mut outcome = Outcome {
        http: state.http.clone(),
        status: None,
    };
    let answer = async {
        if !state.service.engine().is_text_to_image() {
            return Err(ApiError::bad_request(
                None,
                "this server's model is not a text-to-image pipeline; use POST /v1/generate",
            ));
        }
        let bytes = read_body(body, state.limits.max_body_bytes).await?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(None, format!("not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(ApiError::bad_request(None, "expected a JSON object"));
        };
        let request = request_of(&fields)?;
        let (plan, cancel, receiver) = submit_request(&state, &request).map_err(as_client_field)?;
        let body = collect(&plan, receiver).await;
        drop(cancel);
        let body = body?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prompt = request.prompt.clone().unwrap_or_default();
        let data: Vec<Value> = body["images"]
            .as_array()
            .map(|images| {
                images
                    .iter()
                    .map(|image| json!({"b64_json": image["png_base64"], "revised_prompt": prompt}))
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({"created": created, "data": data}))
    }
    .await;
    match answer {
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
