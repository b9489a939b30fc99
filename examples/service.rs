//! A service embedding the engine: open the model once, submit requests from
//! several threads at once, and receive each request's images as they finish.
//! All requests share the engine's model calls (continuous batching), whatever
//! their settings.
//!
//!     cargo run --release --example service

use std::sync::Arc;

use diffsteer::pipeline::{Engine, EngineOptions, Request, Service, ServiceOptions, TicketEvent};

fn main() -> diffsteer::Result<()> {
    let engine = Arc::new(Engine::open(EngineOptions::new("weights/digits"))?);
    let service = Arc::new(Service::start(
        engine,
        ServiceOptions {
            batch: 16,
            max_queue: 64,
        },
    )?);

    // Three clients, each with its own settings.
    let requests = [
        r#"{"count": 4, "class": 7, "steps": 30, "scheduler": "dpm++2m"}"#,
        r#"{"count": 2, "class": 3, "steps": 50, "cfg": 5, "cfg_rescale": 0.7}"#,
        r#"{"count": 3, "class": "none", "steps": 25, "reward": "classifier:5"}"#,
    ];
    let clients: Vec<_> = requests
        .iter()
        .enumerate()
        .map(|(client, text)| {
            let service = service.clone();
            let text = text.to_string();
            std::thread::spawn(move || -> diffsteer::Result<()> {
                let request = Request::from_json_str(&text)?;
                let ticket = service
                    .submit(&request)
                    .map_err(|e| diffsteer::Error::invalid("request", e.to_string()))?;
                while let Some(event) = ticket.recv() {
                    match event {
                        TicketEvent::Image { index, result } => {
                            let image = result?;
                            let path = format!("client{client}-{index}.png");
                            std::fs::write(&path, image.png()?)
                                .map_err(|e| diffsteer::Error::io(&path, "cannot write", e))?;
                            println!(
                                "client {client}: {path} (seed {}, class {:?})",
                                image.metadata.seed, image.metadata.class
                            );
                        }
                        TicketEvent::Progress { .. } => {}
                        TicketEvent::Done => break,
                    }
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .map_err(|_| diffsteer::Error::invalid("client", "a client thread panicked"))??;
    }
    let m = service.metrics();
    println!(
        "{} requests, {} images, {} model calls, {:.1} samples per call",
        m.completed,
        m.images,
        m.model_calls,
        m.model_call_samples as f64 / m.model_calls.max(1) as f64
    );
    service.shutdown();
    Ok(())
}
