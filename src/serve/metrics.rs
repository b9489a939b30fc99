//! `GET /metrics` in the Prometheus text format (version 0.0.4): the engine's
//! counters (requests by status, queue depth, samples in flight, model calls and
//! the samples in them, cancelled samples, images) and a histogram of engine step
//! latency.

use std::fmt::Write;

use crate::pipeline::{ServiceMetrics, STEP_SECONDS_BUCKETS};

use super::HttpCounters;

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text of `m` and the HTTP counters.
pub fn render(m: &ServiceMetrics, http: &HttpCounters) -> String {
    let mut out = String::new();
    metric(
        &mut out,
        "diffsteer_requests_total",
        "counter",
        "Generation requests by outcome: the HTTP status answered (499: the client went away).",
    );
    for (status, count) in http.by_status() {
        let _ = writeln!(
            out,
            "diffsteer_requests_total{{status=\"{status}\"}} {count}"
        );
    }
    let gauges = [
        (
            "diffsteer_queue_depth",
            "Requests waiting for their first sample to start.",
            m.queue_depth as u64,
        ),
        (
            "diffsteer_samples_in_flight",
            "Samples (each particle counts) in the running batch.",
            m.samples_in_flight as u64,
        ),
    ];
    for (name, help, value) in gauges {
        metric(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    let counters = [
        ("diffsteer_model_calls_total", "Batched model calls.", m.model_calls),
        ("diffsteer_model_call_samples_total", "Samples summed over model calls (samples per call = this / diffsteer_model_calls_total).", m.model_call_samples),
        ("diffsteer_cancelled_samples_total", "Samples taken out of the batch because their request was cancelled.", m.cancelled_samples),
        ("diffsteer_images_total", "Images finished.", m.images),
    ];
    for (name, help, value) in counters {
        metric(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    metric(
        &mut out,
        "diffsteer_step_seconds",
        "histogram",
        "Wall time of one engine step (one model call per sample shape, with guidance and updates).",
    );
    let mut cumulative = 0;
    for (bound, count) in STEP_SECONDS_BUCKETS.iter().zip(m.step_buckets) {
        cumulative += count;
        let _ = writeln!(
            out,
            "diffsteer_step_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += m.step_overflow;
    let _ = writeln!(
        out,
        "diffsteer_step_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(out, "diffsteer_step_seconds_sum {}", m.step_seconds_sum);
    let _ = writeln!(out, "diffsteer_step_seconds_count {}", m.step_count);
    out
}
