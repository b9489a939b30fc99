//! `diffsteer serve`, black box on loopback: concurrent mixed requests each give
//! the pixels of a solo `generate` while sharing model calls; malformed input is
//! always a JSON 4xx and leaves the server healthy; a client that goes away leaves
//! no samples behind; SIGTERM lets the request in flight finish; a full queue
//! answers 429 with Retry-After. Every server here listens on 127.0.0.1 only and
//! is stopped by the test.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/digits")
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    start_model(&model(), extra)
}

fn start_model(model: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffsteer"))
        .args([
            "--threads",
            "2",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
        ])
        .arg(model)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server logs before exiting")
            .expect("a line");
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

fn post(base: &str, path: &str, body: &[u8]) -> Answer {
    let mut response = agent(Duration::from_secs(300))
        .post(format!("{base}{path}"))
        .header("Content-Type", "application/json")
        .send(body)
        .expect("an answer");
    Answer {
        status: response.status().as_u16(),
        retry_after: response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .expect("a body"),
    }
}

fn get(base: &str, path: &str) -> Answer {
    let mut response = agent(Duration::from_secs(30))
        .get(format!("{base}{path}"))
        .call()
        .expect("an answer");
    Answer {
        status: response.status().as_u16(),
        retry_after: None,
        body: response.body_mut().read_to_string().expect("a body"),
    }
}

/// The value of an unlabelled metric.
fn metric(base: &str, name: &str) -> f64 {
    let text = get(base, "/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The PNGs `generate` writes alone for `flags`.
fn solo_pngs(dir: &Path, flags: &[&str]) -> Vec<Vec<u8>> {
    solo_pngs_of(&model(), dir, flags)
}

fn solo_pngs_of(model: &Path, dir: &Path, flags: &[&str]) -> Vec<Vec<u8>> {
    let out = dir.join(flags.join("_").replace(['-', ':', '.', '+', ' '], ""));
    let r = Command::new(env!("CARGO_BIN_EXE_diffsteer"))
        .args(["--threads", "2", "generate", "-q", "--model"])
        .arg(model)
        .arg("--out")
        .arg(&out)
        .args(flags)
        .output()
        .expect("generate");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .expect("out")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("png"))
        .collect()
}

#[test]
fn concurrent_mixed_requests_share_calls_and_match_solo_generate() {
    let server = start(&["--batch", "8"]);
    // (request body, the same as generate flags)
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            r#"{"count": 2, "class": 7, "steps": 12, "scheduler": "ddim"}"#,
            vec![
                "--count",
                "2",
                "--class",
                "7",
                "--steps",
                "12",
                "--scheduler",
                "ddim",
            ],
        ),
        (
            r#"{"count": 1, "class": 3, "steps": 20, "scheduler": "dpm++2m", "karras": true, "cfg": 4.5, "cfg_rescale": 0.5}"#,
            vec![
                "--count",
                "1",
                "--class",
                "3",
                "--steps",
                "20",
                "--scheduler",
                "dpm++2m",
                "--karras",
                "--cfg",
                "4.5",
                "--cfg-rescale",
                "0.5",
            ],
        ),
        (
            r#"{"count": 2, "steps": 16, "scheduler": "euler-a", "cfg_interval": "2:12", "seed": 9}"#,
            vec![
                "--count",
                "2",
                "--steps",
                "16",
                "--scheduler",
                "euler-a",
                "--cfg-interval",
                "2:12",
                "--seed",
                "9",
            ],
        ),
        (
            r#"{"count": 1, "class": "none", "steps": 10, "scheduler": "ddpm"}"#,
            vec![
                "--count",
                "1",
                "--class",
                "none",
                "--steps",
                "10",
                "--scheduler",
                "ddpm",
            ],
        ),
        (
            r#"{"count": 1, "class": "none", "steps": 14, "reward": "classifier:2", "seed": 3}"#,
            vec![
                "--count",
                "1",
                "--class",
                "none",
                "--steps",
                "14",
                "--reward",
                "classifier:2",
                "--seed",
                "3",
            ],
        ),
        (
            r#"{"count": 1, "class": "none", "steps": 10, "reward": "classifier:6", "particles": 3, "scheduler": "ddpm", "fk_every": 3}"#,
            vec![
                "--count",
                "1",
                "--class",
                "none",
                "--steps",
                "10",
                "--reward",
                "classifier:6",
                "--particles",
                "3",
                "--scheduler",
                "ddpm",
                "--fk-every",
                "3",
            ],
        ),
        (
            r#"{"count": 2, "class": 1, "steps": 11, "scheduler": "euler", "seed": 77}"#,
            vec![
                "--count",
                "2",
                "--class",
                "1",
                "--steps",
                "11",
                "--scheduler",
                "euler",
                "--seed",
                "77",
            ],
        ),
    ];
    let cases = &cases;
    let answers: Vec<(usize, Answer)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cases.len() * 2)
            .map(|k| {
                let base = &server.base;
                scope.spawn(move || {
                    let body = cases[k % cases.len()].0;
                    (k % cases.len(), post(base, "/v1/generate", body.as_bytes()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let solos: Vec<Vec<Vec<u8>>> = cases
        .iter()
        .map(|(_, flags)| solo_pngs(tmp.path(), flags))
        .collect();
    for (case, answer) in answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        let v = json(&answer.body);
        let images = v["images"].as_array().expect("images");
        assert_eq!(images.len(), solos[case].len());
        for (i, image) in images.iter().enumerate() {
            assert_eq!(image["index"], i);
            let png = base64::engine::general_purpose::STANDARD
                .decode(image["png_base64"].as_str().expect("png"))
                .expect("base64");
            assert!(
                png == solos[case][i],
                "case {case} image {i} differs from generate alone"
            );
            assert!(image["metadata"]["scheduler"].is_string());
            assert_eq!(image["seed"], image["metadata"]["seed"]);
        }
    }
    let calls = metric(&server.base, "diffsteer_model_calls_total");
    let samples = metric(&server.base, "diffsteer_model_call_samples_total");
    assert!(samples / calls >= 3.0, "{samples} samples in {calls} calls");
}

#[test]
fn malformed_input_gets_json_4xx_and_the_server_stays_healthy() {
    let server = start(&["--batch", "4", "--max-count", "8"]);
    let base = &server.base;
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"text\"".to_vec(),
        b"{\"count\": \"two\"}".to_vec(),
        b"{\"steps\": -4}".to_vec(),
        b"{\"steps\": 1.5}".to_vec(),
        b"{\"cfg\": NaN}".to_vec(),
        b"{\"cfg\": 1e999}".to_vec(),
        b"{\"count\": 100000}".to_vec(),
        b"{\"steps\": 100000}".to_vec(),
        b"{\"particles\": 100, \"reward\": \"classifier:1\"}".to_vec(),
        b"{\"class\": 99}".to_vec(),
        b"{\"unknown\": 1}".to_vec(),
        b"{\"reward\": [1, 2]}".to_vec(),
        b"{\"cfg_interval\": \"a:b\"}".to_vec(),
        b"{\"seed\": 18446744073709551615, \"count\": 2}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
    ];
    // Random bytes and random mutations of a valid body, from a fixed generator.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid = br#"{"count": 1, "class": 4, "steps": 3, "cfg_interval": "0:2"}"#;
    for k in 0..320 {
        let mut body = valid.to_vec();
        if k % 2 == 0 {
            body = (0..(next() % 64)).map(|_| (next() % 256) as u8).collect();
        } else {
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % body.len();
                let alphabet = b"{}[]\":,0123456789-.eE xnaf";
                body[at] = alphabet[(next() as usize) % alphabet.len()];
            }
        }
        bodies.push(body);
    }
    let mut valid_answers = 0;
    for body in &bodies {
        let a = post(base, "/v1/generate", body);
        match a.status {
            200 => valid_answers += 1,
            400..=499 => {
                let v = json(&a.body);
                assert!(v["error"]["message"].is_string(), "{}", a.body);
            }
            other => panic!(
                "{other} for {:?}: {}",
                String::from_utf8_lossy(body),
                a.body
            ),
        }
    }
    // A 20 MB body is refused before it is parsed.
    let huge = vec![b' '; 20 << 20];
    let a = post(base, "/v1/generate", &huge);
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(json(&a.body)["error"]["message"].is_string());
    // Wrong methods and unknown paths.
    let a = get(base, "/v1/generate");
    assert_eq!(a.status, 405);
    assert!(json(&a.body)["error"].is_object());
    let a = post(base, "/healthz", b"{}");
    assert_eq!(a.status, 405);
    let a = get(base, "/v2/everything");
    assert_eq!(a.status, 404);
    assert!(json(&a.body)["error"].is_object());
    // A bad field is named.
    let a = post(base, "/v1/generate", br#"{"count": 1, "stesp": 3}"#);
    assert_eq!(json(&a.body)["error"]["field"], "stesp");
    // Still healthy, still serving.
    assert_eq!(get(base, "/healthz").status, 200);
    let a = post(base, "/v1/generate", valid);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(valid_answers < bodies.len());
}

#[test]
fn a_client_that_goes_away_leaves_no_samples_in_flight() {
    let server = start(&["--batch", "8"]);
    let base = server.base.clone();
    let gone = std::thread::spawn(move || {
        // Gives up after a second, long before 8 images of 400 steps are done.
        let _ = agent(Duration::from_secs(1))
            .post(format!("{base}/v1/generate"))
            .send(br#"{"count": 8, "steps": 400}"#.as_slice());
    });
    gone.join().expect("client");
    let started = Instant::now();
    loop {
        let in_flight = metric(&server.base, "diffsteer_samples_in_flight");
        if in_flight == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{in_flight} samples still in flight"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric(&server.base, "diffsteer_cancelled_samples_total"),
        8.0
    );
    assert_eq!(get(&server.base, "/healthz").status, 200);
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    let mut server = start(&["--batch", "4"]);
    let base = server.base.clone();
    let client =
        std::thread::spawn(move || post(&base, "/v1/generate", br#"{"count": 3, "steps": 150}"#));
    // Wait until the request is running.
    let started = Instant::now();
    while metric(&server.base, "diffsteer_samples_in_flight") == 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the request never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    std::thread::sleep(Duration::from_millis(200));
    // New requests are refused while the running one finishes.
    let late = post(&server.base, "/v1/generate", br#"{"count": 1, "steps": 3}"#);
    assert_eq!(late.status, 503, "{}", late.body);
    assert_eq!(get(&server.base, "/healthz").status, 503);
    let answer = client.join().expect("client");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        json(&answer.body)["images"].as_array().map(Vec::len),
        Some(3)
    );
    let status = server.child.wait().expect("exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_the_rest_200() {
    let server = start(&["--batch", "2", "--max-queue", "2"]);
    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|k| {
                let base = &server.base;
                scope.spawn(move || {
                    let body = format!(r#"{{"count": 1, "steps": 30, "seed": {k}}}"#);
                    post(base, "/v1/generate", body.as_bytes())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let refused = answers.iter().filter(|a| a.status == 429).count();
    assert!(refused > 0, "no 429 in a burst of 20");
    for a in &answers {
        match a.status {
            429 => {
                assert!(a
                    .retry_after
                    .as_deref()
                    .is_some_and(|s| s.parse::<u64>().is_ok()));
                assert!(json(&a.body)["error"]["message"].is_string());
            }
            200 => assert_eq!(json(&a.body)["images"].as_array().map(Vec::len), Some(1)),
            other => panic!("{other}: {}", a.body),
        }
    }
    let mut text = String::new();
    let _ = std::io::Cursor::new(get(&server.base, "/metrics").body).read_to_string(&mut text);
    assert!(
        text.contains("diffsteer_requests_total{status=\"429\"}"),
        "{text}"
    );
}

#[test]
fn the_openai_images_api_serves_a_text_pipeline() {
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/sd1_tiny");
    let server = start_model(&pipeline, &["--batch", "4"]);
    let a = post(
        &server.base,
        "/v1/images/generations",
        br#"{"prompt": "a photograph of an astronaut riding a horse", "n": 2, "size": "24x16",
            "response_format": "b64_json", "model": "any", "negative_prompt": "blurry", "seed": 11,
            "steps": 6}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let v = json(&a.body);
    assert!(v["created"].as_u64().is_some());
    let data = v["data"].as_array().expect("data");
    let tmp = tempfile::tempdir().expect("tmp");
    let solo = solo_pngs_of(
        &pipeline,
        tmp.path(),
        &[
            "--prompt",
            "a photograph of an astronaut riding a horse",
            "--negative-prompt",
            "blurry",
            "--count",
            "2",
            "--width",
            "24",
            "--height",
            "16",
            "--seed",
            "11",
            "--steps",
            "6",
        ],
    );
    assert_eq!(data.len(), 2);
    for (item, alone) in data.iter().zip(&solo) {
        let png = base64::engine::general_purpose::STANDARD
            .decode(item["b64_json"].as_str().expect("b64_json"))
            .expect("base64");
        assert!(&png == alone, "the API's image differs from generate alone");
    }
    for (body, field) in [
        (r#"{"n": 1}"#, "prompt"),
        (r#"{"prompt": "x", "size": "17x16"}"#, "size"),
        (r#"{"prompt": "x", "size": "big"}"#, "size"),
        (
            r#"{"prompt": "x", "response_format": "url"}"#,
            "response_format",
        ),
        (r#"{"prompt": "x", "n": 0}"#, "n"),
        (r#"{"prompt": "x", "colour": "red"}"#, "colour"),
    ] {
        let a = post(&server.base, "/v1/images/generations", body.as_bytes());
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(json(&a.body)["error"]["field"], field, "{body}");
    }
    // On a class model the route answers 400 and points to /v1/generate.
    let digits = start(&[]);
    let a = post(
        &digits.base,
        "/v1/images/generations",
        br#"{"prompt": "a seven"}"#,
    );
    assert_eq!(a.status, 400);
    assert!(a.body.contains("/v1/generate"), "{}", a.body);
}
