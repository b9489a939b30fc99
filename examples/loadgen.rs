//! Load generator for `diffsteer serve`: N concurrent clients send a fixed mix of
//! requests (steps 10–50, every scheduler, CFG with rescale and intervals,
//! unconditional, reward guidance, Feynman-Kac particles) to a server on this
//! machine, then the same requests go one after the other for comparison, and a
//! sample of the concurrent answers is checked byte for byte against the same
//! request answered alone.
//!
//!     diffsteer serve --port 8000 &
//!     cargo run --release --example loadgen -- --url http://127.0.0.1:8000 --clients 1,4,16,64 --requests 64
//!
//! Per client count it prints requests/s, images/s, latency p50/p95/p99, errors by
//! status, samples per model call (from /metrics), and the speed-up over the
//! one-after-the-other run; `--json FILE` writes the same as JSON.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Options {
    url: String,
    clients: Vec<usize>,
    requests: usize,
    check: usize,
    json: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        url: "http://127.0.0.1:8000".into(),
        clients: vec![1, 4, 16, 64],
        requests: 64,
        check: 4,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => o.url = value()?.trim_end_matches('/').to_string(),
            "--clients" => {
                o.clients = value()?
                    .split(',')
                    .map(|c| c.trim().parse::<usize>().ok().filter(|&c| c > 0))
                    .collect::<Option<_>>()
                    .ok_or("--clients: expected a comma list of whole numbers ≥ 1")?
            }
            "--requests" => {
                o.requests = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--requests: expected a whole number ≥ 1")?
            }
            "--check" => o.check = value()?.parse().map_err(|_| "--check: expected a whole number")?,
            "--json" => o.json = Some(value()?),
            "--help" | "-h" => {
                return Err("usage: loadgen [--url URL] [--clients 1,4,16,64] [--requests N] [--check K] [--json FILE]".into())
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

/// Request `k` of the mix.
fn request(k: usize) -> Value {
    let seed = 1000 + k as u64;
    match k % 8 {
        0 => {
            json!({"id": format!("r{k}"), "count": 1, "class": k % 10, "steps": 20, "scheduler": "dpm++2m", "seed": seed})
        }
        1 => {
            json!({"id": format!("r{k}"), "count": 1, "class": k % 10, "steps": 50, "scheduler": "ddim", "cfg": 4, "cfg_rescale": 0.5, "seed": seed})
        }
        2 => {
            json!({"id": format!("r{k}"), "count": 2, "steps": 30, "scheduler": "euler-a", "cfg_interval": "3:25", "seed": seed})
        }
        3 => {
            json!({"id": format!("r{k}"), "count": 1, "class": "none", "steps": 25, "scheduler": "ddpm", "seed": seed})
        }
        4 => {
            json!({"id": format!("r{k}"), "count": 1, "class": "none", "steps": 30, "reward": format!("classifier:{}", k % 10), "seed": seed})
        }
        5 => {
            json!({"id": format!("r{k}"), "count": 1, "class": "none", "steps": 20, "reward": format!("classifier:{}", k % 10), "particles": 4, "scheduler": "ddpm", "seed": seed})
        }
        6 => {
            json!({"id": format!("r{k}"), "count": 1, "class": k % 10, "steps": 10, "scheduler": "euler", "karras": true, "seed": seed})
        }
        _ => json!({"id": format!("r{k}"), "count": 3, "class": k % 10, "steps": 15, "seed": seed}),
    }
}

struct Answer {
    status: u16,
    seconds: f64,
    images: usize,
    body: Option<Value>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn send(agent: &ureq::Agent, url: &str, body: &Value) -> Answer {
    let started = Instant::now();
    let result = agent
        .post(format!("{url}/v1/generate"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes());
    let (status, body) = match result {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r
                .body_mut()
                .with_config()
                .limit(256 << 20)
                .read_to_string()
                .unwrap_or_default();
            (status, serde_json::from_str::<Value>(&text).ok())
        }
        Err(_) => (0, None),
    };
    let images = body
        .as_ref()
        .and_then(|b| b["images"].as_array().map(Vec::len))
        .unwrap_or(0);
    Answer {
        status,
        seconds: started.elapsed().as_secs_f64(),
        images,
        body,
    }
}

fn metric(agent: &ureq::Agent, url: &str, name: &str) -> f64 {
    agent
        .get(format!("{url}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix(&format!("{name} "))
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(f64::NAN)
}

struct Run {
    clients: usize,
    seconds: f64,
    answers: Vec<(usize, Answer)>,
    samples_per_call: f64,
}

/// Sends requests `0..n` from `clients` threads taking the next unsent request.
fn run(url: &str, clients: usize, n: usize) -> Run {
    let a = agent();
    let (calls0, samples0) = (
        metric(&a, url, "diffsteer_model_calls_total"),
        metric(&a, url, "diffsteer_model_call_samples_total"),
    );
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let mut answers: Vec<(usize, Answer)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let agent = agent();
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= n {
                            return mine;
                        }
                        mine.push((k, send(&agent, url, &request(k))));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    answers.sort_by_key(|(k, _)| *k);
    let calls = metric(&a, url, "diffsteer_model_calls_total") - calls0;
    let samples = metric(&a, url, "diffsteer_model_call_samples_total") - samples0;
    Run {
        clients,
        seconds,
        answers,
        samples_per_call: samples / calls,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(run: &Run, baseline_seconds: f64) -> Value {
    let mut latencies: Vec<f64> = run.answers.iter().map(|(_, a)| a.seconds).collect();
    latencies.sort_by(f64::total_cmp);
    let mut errors: BTreeMap<u16, usize> = BTreeMap::new();
    for (_, a) in &run.answers {
        if a.status != 200 {
            *errors.entry(a.status).or_default() += 1;
        }
    }
    let images: usize = run.answers.iter().map(|(_, a)| a.images).sum();
    json!({
        "clients": run.clients,
        "requests": run.answers.len(),
        "seconds": run.seconds,
        "requests_per_s": run.answers.len() as f64 / run.seconds,
        "images_per_s": images as f64 / run.seconds,
        "latency_p50_s": percentile(&latencies, 50.0),
        "latency_p95_s": percentile(&latencies, 95.0),
        "latency_p99_s": percentile(&latencies, 99.0),
        "errors": errors.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "samples_per_model_call": run.samples_per_call,
        "speedup_vs_one_after_another": baseline_seconds / run.seconds,
    })
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let url = &options.url;
    if agent()
        .get(format!("{url}/healthz"))
        .call()
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        eprintln!("error: no healthy server at {url} (start one with `diffsteer serve`)");
        std::process::exit(1);
    }
    let n = options.requests;
    eprintln!("one after the other: {n} requests ...");
    let baseline = run(url, 1, n);
    let mut rows = vec![summary(&baseline, baseline.seconds)];
    let mut checked = 0;
    let mut mismatches = 0;
    println!(
        "{:>8} {:>9} {:>10} {:>9} {:>8} {:>8} {:>8} {:>12} {:>8}  errors",
        "clients",
        "seconds",
        "requests/s",
        "images/s",
        "p50 s",
        "p95 s",
        "p99 s",
        "samples/call",
        "speed-up"
    );
    let print = |row: &Value, label: &str| {
        println!(
            "{:>8} {:>9.2} {:>10.2} {:>9.2} {:>8.2} {:>8.2} {:>8.2} {:>12.2} {:>7.2}×  {}",
            label,
            row["seconds"].as_f64().unwrap_or(f64::NAN),
            row["requests_per_s"].as_f64().unwrap_or(f64::NAN),
            row["images_per_s"].as_f64().unwrap_or(f64::NAN),
            row["latency_p50_s"].as_f64().unwrap_or(f64::NAN),
            row["latency_p95_s"].as_f64().unwrap_or(f64::NAN),
            row["latency_p99_s"].as_f64().unwrap_or(f64::NAN),
            row["samples_per_model_call"].as_f64().unwrap_or(f64::NAN),
            row["speedup_vs_one_after_another"]
                .as_f64()
                .unwrap_or(f64::NAN),
            row["errors"]
        );
    };
    print(&rows[0], "1 (seq)");
    for &clients in &options.clients {
        eprintln!("{clients} clients: {n} requests ...");
        let load = run(url, clients, n);
        // The same request answered alone must give the same bytes.
        for (k, answer) in load
            .answers
            .iter()
            .step_by((n / options.check.max(1)).max(1))
            .take(options.check)
        {
            let alone = &baseline.answers[*k].1;
            let same = match (&answer.body, &alone.body) {
                (Some(a), Some(b)) => a["images"] == b["images"],
                _ => false,
            };
            checked += 1;
            if !same {
                mismatches += 1;
                eprintln!("MISMATCH: request {k} under load differs from the same request alone");
            }
        }
        let row = summary(&load, baseline.seconds);
        print(&row, &clients.to_string());
        rows.push(row);
    }
    println!(
        "{checked} answers under load checked against the same request alone: {mismatches} differ"
    );
    if let Some(path) = &options.json {
        let report = json!({"url": url, "requests": n, "runs": rows, "checked": checked, "mismatches": mismatches});
        if let Err(e) = std::fs::write(
            path,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        ) {
            eprintln!("error: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
    if mismatches > 0 {
        std::process::exit(1);
    }
}
