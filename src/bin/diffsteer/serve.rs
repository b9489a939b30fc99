//! `diffsteer serve`: opens the engine, starts the service and the HTTP server,
//! and logs `listening on http://HOST:PORT` once requests are taken.

use std::sync::Arc;

use diffsteer::pipeline::{Service, ServiceOptions};
use diffsteer::serve::{self, RequestLimits};

use crate::args::ServeArgs;
use crate::engine_flags::{engine_error, open_engine};
use crate::usage_error::{usage, CliError};

pub fn run(args: &ServeArgs, threads: Option<usize>) -> Result<(), CliError> {
    let engine = Arc::new(open_engine(
        &args.model,
        &args.target,
        threads,
        args.classifier.clone(),
    )?);
    let service = Arc::new(
        Service::start(
            engine,
            ServiceOptions {
                batch: args.batch,
                max_queue: args.max_queue,
            },
        )
        .map_err(engine_error)?,
    );
    let limits = RequestLimits {
        max_count: args.max_count,
        max_steps: args.max_steps,
        max_particles: args.max_particles,
        max_body_bytes: args.max_body_bytes,
    };
    // The HTTP side only parses, encodes and waits: two threads are plenty, and the
    // engine's pool keeps the cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| usage("serve", format!("cannot start the async runtime: {e}")))?;
    let address = format!("{}:{}", args.host, args.port);
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| usage("--port", format!("cannot listen on {address}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| usage("--port", format!("cannot read the bound address: {e}")))?;
        eprintln!("listening on http://{local}");
        serve::run(listener, service.clone(), limits, serve::shutdown_signal())
            .await
            .map_err(|e| CliError::Runtime(diffsteer::Error::io(address.clone(), "serving", e)))
    });
    service.shutdown();
    eprintln!("stopped: every request in flight finished");
    result
}
