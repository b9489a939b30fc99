//! The engine as a service for other threads: [`Service::submit`] validates a
//! request and queues it (a bounded queue: a full one is refused at once, so a
//! caller can push back), and one engine thread runs every queued and running
//! request through a single [`Runner`] — continuous batching across requests and
//! steps. Free slots go to waiting requests in turn (round robin), so a short
//! request never waits for a long one to be admitted whole. Each request's images
//! come back on its [`Ticket`] as they finish; dropping or cancelling the ticket
//! takes its samples out at the next step boundary. [`Service::shutdown`] stops
//! accepting, lets the requests in flight finish, and joins the thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::engine::Engine;
use super::plan::Plan;
use super::request::Request;
use super::runner::{Finished, GeneratedImage, Runner};

/// Limits of a service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceOptions {
    /// Most slots (samples × particles) in one model call.
    pub batch: usize,
    /// Most requests waiting to start; more are refused with [`SubmitError::QueueFull`].
    pub max_queue: usize,
}

/// Why a request was not taken.
#[derive(Debug, Clone)]
pub enum SubmitError {
    /// The request is invalid ([`Error::InvalidArgument`] names the field).
    Invalid(Error),
    /// The queue holds `max_queue` requests already: try again later.
    QueueFull { max_queue: usize },
    /// The service is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Invalid(e) => write!(f, "{e}"),
            SubmitError::QueueFull { max_queue } => {
                write!(
                    f,
                    "the queue is full ({max_queue} requests waiting); retry later"
                )
            }
            SubmitError::ShuttingDown => f.write_str("the service is shutting down"),
        }
    }
}

/// What a ticket receives, in order: progress and images as they come, then `Done`.
#[derive(Debug)]
pub enum TicketEvent {
    /// After a step in which the request advanced: model calls (per particle) done
    /// of all its images' calls.
    Progress { calls_done: u64, calls_total: u64 },
    /// Image `index` finished (or failed).
    Image {
        index: u64,
        result: Result<Box<GeneratedImage>>,
    },
    /// Every image has been sent (or the request was cancelled).
    Done,
}

/// Where a request's events go. A sink whose receiver is gone cancels the request
/// (at the next step boundary).
pub trait EventSink: Send {
    /// Delivers `event`; false when the receiver is gone.
    fn send(&mut self, event: TicketEvent) -> bool;

    /// Whether the receiver is gone (checked before every step).
    fn is_closed(&self) -> bool {
        false
    }
}

impl EventSink for Sender<TicketEvent> {
    fn send(&mut self, event: TicketEvent) -> bool {
        Sender::send(self, event).is_ok()
    }
}

/// Cancels a request submitted with [`Service::submit_to`] when asked or dropped.
pub struct CancelOnDrop(Arc<AtomicBool>);

impl CancelOnDrop {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A submitted request's handle: its events, and cancellation. Dropping it
/// cancels what has not finished.
pub struct Ticket {
    events: Receiver<TicketEvent>,
    cancelled: Arc<AtomicBool>,
    plan: Arc<Plan>,
}

impl Ticket {
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The next event; `None` once the service is gone.
    pub fn recv(&self) -> Option<TicketEvent> {
        self.events.recv().ok()
    }

    /// The next event if one arrives within `timeout`.
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> std::result::Result<TicketEvent, mpsc::RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// Takes the request's samples out of the batch at the next step boundary.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Every image, in index order, or the first failure.
    pub fn wait_all(self) -> Result<Vec<GeneratedImage>> {
        let mut images: Vec<Option<GeneratedImage>> = Vec::new();
        while let Some(event) = self.recv() {
            match event {
                TicketEvent::Image { index, result } => {
                    let image = result?;
                    let i = usize::try_from(index).unwrap_or(usize::MAX);
                    if images.len() <= i {
                        images.resize_with(i + 1, || None);
                    }
                    images[i] = Some(*image);
                }
                TicketEvent::Progress { .. } => {}
                TicketEvent::Done => break,
            }
        }
        let count = self.plan.count();
        let done: Vec<GeneratedImage> = images.into_iter().flatten().collect();
        if done.len() as u64 != count {
            return Err(Error::invalid(
                "request",
                format!(
                    "{} of {count} images came back (cancelled or the service stopped)",
                    done.len()
                ),
            ));
        }
        Ok(done)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Buckets (upper bounds, seconds) of the step-latency histogram.
pub const STEP_SECONDS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Counters of a service since it started.
#[derive(Debug, Clone, Default)]
pub struct ServiceMetrics {
    /// Requests by outcome: accepted, completed, failed (an image failed),
    /// cancelled, and refused (invalid, queue full, shutting down).
    pub accepted: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub rejected_invalid: u64,
    pub rejected_queue_full: u64,
    pub rejected_shutting_down: u64,
    /// Requests waiting to start.
    pub queue_depth: usize,
    /// Samples (each particle counts) in the running batch.
    pub samples_in_flight: usize,
    pub model_calls: u64,
    /// Slots summed over model calls.
    pub model_call_samples: u64,
    pub cancelled_samples: u64,
    pub images: u64,
    /// Engine steps per bucket of [`STEP_SECONDS_BUCKETS`] (cumulative counts are
    /// the Prometheus form; these are per bucket), the count above the last, and
    /// the sum of all step times.
    pub step_buckets: [u64; STEP_SECONDS_BUCKETS.len()],
    pub step_overflow: u64,
    pub step_seconds_sum: f64,
    pub step_count: u64,
}

/// A request being served.
struct Active {
    plan: Arc<Plan>,
    sender: Box<dyn EventSink>,
    cancelled: Arc<AtomicBool>,
    /// Images handed to the runner so far.
    next: u64,
    /// Images finished (sent) so far.
    finished: u64,
    any_failed: bool,
    calls_total: u64,
}

struct State {
    /// Requests that have not had an image admitted yet, oldest first.
    waiting: VecDeque<u64>,
    /// Every request not yet done, by id.
    requests: Vec<(u64, Active)>,
    next_id: u64,
    accepting: bool,
    metrics: ServiceMetrics,
}

struct Inner {
    engine: Arc<Engine>,
    options: ServiceOptions,
    state: Mutex<State>,
    wake: Condvar,
    samples_in_flight: AtomicU64,
}

/// The engine serving requests from any thread; see the module docs.
pub struct Service {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a
        // way that matters more than stopping would: go on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Service {
    /// Starts the engine thread.
    pub fn start(engine: Arc<Engine>, options: ServiceOptions) -> Result<Service> {
        if options.batch == 0 {
            return Err(Error::invalid("batch", "must be at least 1"));
        }
        // Refuse a batch that cannot fit before the first request arrives.
        engine.runner::<u64>(options.batch)?;
        let inner = Arc::new(Inner {
            engine,
            options,
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                requests: Vec::new(),
                next_id: 0,
                accepting: true,
                metrics: ServiceMetrics::default(),
            }),
            wake: Condvar::new(),
            samples_in_flight: AtomicU64::new(0),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("diffsteer-engine".into())
            .spawn(move || serve(&worker))
            .map_err(|e| Error::io("diffsteer-engine", "cannot start the engine thread", e))?;
        Ok(Service {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    pub fn options(&self) -> ServiceOptions {
        self.inner.options
    }

    /// Validates `request` and queues it; its events arrive on the ticket.
    pub fn submit(&self, request: &Request) -> std::result::Result<Ticket, SubmitError> {
        let (sender, events) = mpsc::channel();
        let (plan, cancelled) = self.enqueue(request, Box::new(sender))?;
        Ok(Ticket {
            events,
            cancelled,
            plan,
        })
    }

    /// Validates `request` and queues it; its events go to `sink`. The request is
    /// cancelled when the returned guard is dropped or the sink closes.
    pub fn submit_to(
        &self,
        request: &Request,
        sink: Box<dyn EventSink>,
    ) -> std::result::Result<(Arc<Plan>, CancelOnDrop), SubmitError> {
        let (plan, cancelled) = self.enqueue(request, sink)?;
        Ok((plan, CancelOnDrop(cancelled)))
    }

    fn enqueue(
        &self,
        request: &Request,
        sender: Box<dyn EventSink>,
    ) -> std::result::Result<(Arc<Plan>, Arc<AtomicBool>), SubmitError> {
        let plan = match self.inner.engine.prepare(request) {
            Ok(plan) => plan,
            Err(e) => {
                self.inner.lock().metrics.rejected_invalid += 1;
                return Err(SubmitError::Invalid(e));
            }
        };
        if plan.particles() > self.inner.options.batch {
            self.inner.lock().metrics.rejected_invalid += 1;
            return Err(SubmitError::Invalid(Error::invalid(
                "particles",
                format!(
                    "an image with {} particles needs {} slots of a model call; this service's batch is {}",
                    plan.particles(),
                    plan.particles(),
                    self.inner.options.batch
                ),
            )));
        }
        let mut state = self.inner.lock();
        if !state.accepting {
            state.metrics.rejected_shutting_down += 1;
            return Err(SubmitError::ShuttingDown);
        }
        if state.waiting.len() >= self.inner.options.max_queue {
            state.metrics.rejected_queue_full += 1;
            return Err(SubmitError::QueueFull {
                max_queue: self.inner.options.max_queue,
            });
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        let id = state.next_id;
        state.next_id += 1;
        let calls_total = plan.count() * plan.calls_per_image() as u64;
        state.requests.push((
            id,
            Active {
                plan: plan.clone(),
                sender,
                cancelled: cancelled.clone(),
                next: 0,
                finished: 0,
                any_failed: false,
                calls_total,
            },
        ));
        state.waiting.push_back(id);
        state.metrics.accepted += 1;
        drop(state);
        self.inner.wake.notify_all();
        Ok((plan, cancelled))
    }

    /// The counters now.
    pub fn metrics(&self) -> ServiceMetrics {
        let state = self.inner.lock();
        let mut m = state.metrics.clone();
        m.queue_depth = state.waiting.len();
        m.samples_in_flight = self.inner.samples_in_flight.load(Ordering::Acquire) as usize;
        m
    }

    /// Whether no request is queued or running.
    pub fn is_idle(&self) -> bool {
        self.inner.lock().requests.is_empty()
    }

    /// Whether new requests are taken.
    pub fn is_accepting(&self) -> bool {
        self.inner.lock().accepting
    }

    /// Stops taking requests; those queued or running still finish.
    pub fn stop_accepting(&self) {
        self.inner.lock().accepting = false;
        self.inner.wake.notify_all();
    }

    /// Stops taking requests, waits for every request to finish and joins the
    /// engine thread.
    pub fn shutdown(&self) {
        self.stop_accepting();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The engine thread: sleeps while there is nothing to do, otherwise runs steps
/// (with the pool's workers kept busy) until the batch and the queue are empty.
fn serve(inner: &Arc<Inner>) {
    let engine = inner.engine.clone();
    let mut runner = match engine.runner::<u64>(inner.options.batch) {
        Ok(runner) => runner,
        Err(_) => return,
    };
    loop {
        {
            let mut state = inner.lock();
            while state.requests.is_empty() {
                if !state.accepting {
                    return;
                }
                state = inner
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        let _ = engine.with_workers(|| {
            while run_one_step(inner, &mut runner) {}
            Ok(())
        });
    }
}

/// Admits, steps once, delivers; false when there is nothing left to run.
fn run_one_step(inner: &Inner, runner: &mut Runner<'_, u64>) -> bool {
    {
        let mut state = inner.lock();
        drop_cancelled(&mut state, runner);
        admit_round_robin(&mut state, runner);
        inner
            .samples_in_flight
            .store(runner.used_slots() as u64, Ordering::Release);
        if runner.is_idle() {
            return false;
        }
    }
    let before = runner.stats();
    let started = Instant::now();
    let finished = runner.step();
    let seconds = started.elapsed().as_secs_f64();
    let after = runner.stats();
    let mut state = inner.lock();
    let m = &mut state.metrics;
    m.model_calls += after.model_calls - before.model_calls;
    m.model_call_samples += after.slots - before.slots;
    m.images += after.images - before.images;
    m.step_count += 1;
    m.step_seconds_sum += seconds;
    match STEP_SECONDS_BUCKETS.iter().position(|&b| seconds <= b) {
        Some(i) => m.step_buckets[i] += 1,
        None => m.step_overflow += 1,
    }
    deliver(&mut state, finished);
    report_progress(&mut state, runner);
    inner
        .samples_in_flight
        .store(runner.used_slots() as u64, Ordering::Release);
    true
}

/// Free slots go to waiting requests in turn, one image at a time.
fn admit_round_robin(state: &mut State, runner: &mut Runner<'_, u64>) {
    loop {
        let mut admitted_any = false;
        let rounds = state.waiting.len();
        for _ in 0..rounds {
            let Some(id) = state.waiting.pop_front() else {
                break;
            };
            let Some(active) = state
                .requests
                .iter_mut()
                .find(|(i, _)| *i == id)
                .map(|(_, a)| a)
            else {
                continue;
            };
            if active.plan.particles() <= runner.free_slots() && active.next < active.plan.count() {
                let index = active.next;
                active.next += 1;
                admitted_any = true;
                if let Err(e) = runner.admit(&active.plan, index, id) {
                    // The plan checked everything but the noise source; the image
                    // fails, the request goes on.
                    deliver_one(state, id, index, Err(e));
                    if !state.requests.iter().any(|(i, _)| *i == id) {
                        continue;
                    }
                }
            }
            let more = state
                .requests
                .iter()
                .find(|(i, _)| *i == id)
                .is_some_and(|(_, a)| a.next < a.plan.count());
            if more {
                state.waiting.push_back(id);
            }
        }
        if !admitted_any || runner.free_slots() == 0 {
            return;
        }
    }
}

fn drop_cancelled(state: &mut State, runner: &mut Runner<'_, u64>) {
    let cancelled: Vec<u64> = state
        .requests
        .iter()
        .filter(|(_, a)| a.cancelled.load(Ordering::Acquire) || a.sender.is_closed())
        .map(|(id, _)| *id)
        .collect();
    if cancelled.is_empty() {
        return;
    }
    let dropped = runner.cancel(|id| cancelled.contains(id));
    state.metrics.cancelled_samples += dropped as u64;
    for id in cancelled {
        state.waiting.retain(|w| *w != id);
        if let Some(pos) = state.requests.iter().position(|(i, _)| *i == id) {
            let (_, mut active) = state.requests.remove(pos);
            let _ = active.sender.send(TicketEvent::Done);
            state.metrics.cancelled += 1;
        }
    }
}

fn deliver(state: &mut State, finished: Vec<Finished<u64>>) {
    for done in finished {
        deliver_one(state, done.tag, done.index, done.result);
    }
}

/// Sends image `index` of request `id`; the request is done after its last image.
fn deliver_one(state: &mut State, id: u64, index: u64, result: Result<GeneratedImage>) {
    let Some(pos) = state.requests.iter().position(|(i, _)| *i == id) else {
        return;
    };
    let active = &mut state.requests[pos].1;
    active.finished += 1;
    active.any_failed |= result.is_err();
    let _ = active.sender.send(TicketEvent::Image {
        index,
        result: result.map(Box::new),
    });
    if active.finished == active.plan.count() {
        let _ = active.sender.send(TicketEvent::Done);
        let failed = active.any_failed;
        state.requests.remove(pos);
        state.waiting.retain(|w| *w != id);
        if failed {
            state.metrics.failed += 1;
        } else {
            state.metrics.completed += 1;
        }
    }
}

fn report_progress(state: &mut State, runner: &Runner<'_, u64>) {
    let mut left: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for (tag, calls) in runner.calls_left_by_tag() {
        *left.entry(*tag).or_default() += calls;
    }
    for (id, active) in &mut state.requests {
        if let Some(&calls_left) = left.get(id) {
            let per = active.plan.calls_per_image() as u64;
            let done = active.next * per - calls_left;
            let _ = active.sender.send(TicketEvent::Progress {
                calls_done: done,
                calls_total: active.calls_total,
            });
        }
    }
}
