//! Events: what happened to credentials, the store and the config, told to operators.
//!
//! ```text
//!  slot, admin, store watch ──emit──▶ EventBus ──▶ ring (bounded, for Last-Event-ID replay)
//!                                          ├──▶ broadcast ──▶ GET /events (SSE)
//!                                          └──▶ one bounded queue per webhook ──▶ delivery task
//!  proxy (logging phase) ──audit──▶ bounded queue ──▶ audit file writer (JSON lines)
//! ```
//!
//! Emitting never waits: a full queue drops the event for that sink and counts it in
//! `bearerd_events_dropped_total{sink}`, so the data path never waits for a webhook or a disk.

pub mod audit;
pub mod trace;
pub mod webhook;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus::IntCounterVec;
use tokio::sync::broadcast;

pub use crate::api::{Event, EventKind};

/// How many events the ring keeps for replay.
pub const RING_CAPACITY: usize = 1024;

/// Where an event was dropped: `sink` of `bearerd_events_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Webhook,
    Audit,
    /// A `/events` reader too slow for the broadcast: it is cut off and replays from the
    /// ring when it reconnects with `Last-Event-ID`.
    Stream,
}

impl Sink {
    pub const ALL: [Sink; 3] = [Sink::Webhook, Sink::Audit, Sink::Stream];

    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Webhook => "webhook",
            Sink::Audit => "audit",
            Sink::Stream => "stream",
        }
    }
}

tokio::task_local! {
    /// The admin request an operation runs for: its events carry this id.
    static CAUSE: String;
}

/// Runs `f` with its events attributed to the request `request_id`.
pub async fn caused_by<F: std::future::Future>(request_id: String, f: F) -> F::Output {
    CAUSE.scope(request_id, f).await
}

fn random_hex(bytes: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes * 2);
    for b in (0..bytes).map(|_| rand::random::<u8>()) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What an event says, before the bus numbers it.
#[derive(Debug, Clone)]
pub struct Happened {
    pub kind: EventKind,
    pub credential: Option<String>,
    pub subject_tag: Option<String>,
    pub outcome: String,
    pub generation: Option<u64>,
    pub error_kind: Option<String>,
    pub detail: Option<String>,
}

impl Happened {
    pub fn new(kind: EventKind, outcome: impl Into<String>) -> Happened {
        Happened {
            kind,
            credential: None,
            subject_tag: None,
            outcome: outcome.into(),
            generation: None,
            error_kind: None,
            detail: None,
        }
    }

    pub fn credential(mut self, name: &str) -> Happened {
        self.credential = Some(name.to_string());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Happened {
        self.detail = Some(detail.into());
        self
    }
}

struct Ring {
    next: u64,
    events: VecDeque<Arc<Event>>,
}

/// A webhook's queue, as the bus sees it.
pub(crate) struct WebhookQueue {
    pub on: Vec<EventKind>,
    pub queue: tokio::sync::mpsc::Sender<Arc<Event>>,
}

/// Every event of one sidecar: numbered, kept in the ring, sent to live readers and to
/// the webhooks that take its kind.
pub struct EventBus {
    /// Makes ids unique across restarts, so a reader's `Last-Event-ID` from before one
    /// replays the whole ring instead of nothing.
    boot: String,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
    webhooks: Mutex<Vec<WebhookQueue>>,
    dropped: IntCounterVec,
    /// Spans' way out, when `[telemetry]` names a collector.
    tracer: std::sync::OnceLock<Arc<trace::Tracer>>,
}

impl EventBus {
    pub fn new(dropped: IntCounterVec) -> Arc<EventBus> {
        for s in Sink::ALL {
            dropped.with_label_values(&[s.as_str()]);
        }
        Arc::new(EventBus {
            boot: random_hex(4),
            ring: Mutex::new(Ring {
                next: 1,
                events: VecDeque::with_capacity(RING_CAPACITY),
            }),
            live: broadcast::channel(RING_CAPACITY).0,
            webhooks: Mutex::new(Vec::new()),
            dropped,
            tracer: std::sync::OnceLock::new(),
        })
    }

    /// Spans from now on go to this tracer (set once, at start).
    pub fn attach_tracer(&self, tracer: Arc<trace::Tracer>) {
        let _ = self.tracer.set(tracer);
    }

    /// The tracer, when tracing is on.
    pub fn tracer(&self) -> Option<&Arc<trace::Tracer>> {
        self.tracer.get()
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add_webhook(&self, queue: WebhookQueue) {
        self.webhooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(queue);
    }

    pub fn count_dropped(&self, sink: Sink) {
        self.dropped.with_label_values(&[sink.as_str()]).inc();
    }

    /// Numbers the event, keeps it, and hands it to every sink; never waits.
    pub fn emit(&self, h: Happened) {
        let request_id = CAUSE
            .try_with(Clone::clone)
            .unwrap_or_else(|_| random_hex(16));
        let event = {
            let mut ring = self.ring();
            let event = Arc::new(Event {
                id: format!("{}.{}", self.boot, ring.next),
                kind: h.kind,
                at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                credential: h.credential,
                subject_tag: h.subject_tag,
                outcome: h.outcome,
                request_id,
                generation: h.generation,
                error_kind: h.error_kind,
                detail: h.detail,
            });
            ring.next += 1;
            if ring.events.len() == RING_CAPACITY {
                ring.events.pop_front();
            }
            ring.events.push_back(Arc::clone(&event));
            // Under the ring's lock, so a reader that subscribes under it sees each event
            // once: in its replay or live.
            let _ = self.live.send(Arc::clone(&event));
            event
        };
        tracing::debug!(event = %event.id, kind = event.kind.as_str(), credential = event.credential.as_deref(), outcome = %event.outcome, request_id = %event.request_id, "event");
        for w in self
            .webhooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if (w.on.is_empty() || w.on.contains(&event.kind))
                && w.queue.try_send(Arc::clone(&event)).is_err()
            {
                self.count_dropped(Sink::Webhook);
            }
        }
    }

    /// The events after `last_id` (all the ring holds when it is unknown, or from before
    /// this process started) and a receiver for the ones to come, with no gap or repeat.
    pub fn subscribe(
        &self,
        last_id: Option<&str>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let ring = self.ring();
        let after = last_id
            .and_then(|id| id.split_once('.'))
            .filter(|(boot, _)| *boot == self.boot)
            .and_then(|(_, n)| n.parse::<u64>().ok());
        let replay = ring
            .events
            .iter()
            .filter(|e| after.is_none_or(|after| sequence(&e.id) > after))
            .cloned()
            .collect();
        (replay, self.live.subscribe())
    }

    /// The newest `n` events, oldest first (the console's first view).
    pub fn recent(&self, n: usize) -> Vec<Arc<Event>> {
        let ring = self.ring();
        let skip = ring.events.len().saturating_sub(n);
        ring.events.iter().skip(skip).cloned().collect()
    }
}

fn sequence(id: &str) -> u64 {
    id.rsplit_once('.')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// A slot's way to the bus: its credential's name and, for a subject's slot, the
/// subject's tag (never the subject).
#[derive(Clone)]
pub struct EventTap {
    pub bus: Arc<EventBus>,
    pub subject_tag: Option<Arc<str>>,
}

impl EventTap {
    pub fn emit(&self, credential: &str, mut h: Happened) {
        h.credential = Some(credential.to_string());
        h.subject_tag = self.subject_tag.as_deref().map(str::to_string);
        self.bus.emit(h);
    }
}

/// Emits `store_down` and `store_up` as the store's health changes (looked at every
/// second), until `shutdown` changes.
pub async fn watch_store(
    bus: Arc<EventBus>,
    health: impl Fn() -> (bool, Option<String>),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut was_up = true;
    loop {
        let (up, error) = health();
        if up != was_up {
            let h = if up {
                Happened::new(EventKind::StoreUp, "up")
            } else {
                let h = Happened::new(EventKind::StoreDown, "down");
                match error {
                    Some(e) => h.detail(e),
                    None => h,
                }
            };
            bus.emit(h);
            was_up = up;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> Arc<EventBus> {
        let c = IntCounterVec::new(prometheus::Opts::new("d", "d"), &["sink"]).unwrap();
        EventBus::new(c)
    }

    #[test]
    fn a_reader_replays_after_its_last_id_and_sees_the_rest_live() {
        let bus = bus();
        for _ in 0..3 {
            bus.emit(Happened::new(EventKind::Refreshed, "success"));
        }
        let (all, _) = bus.subscribe(None);
        assert_eq!(all.len(), 3);
        let (after_first, mut live) = bus.subscribe(Some(&all[0].id));
        assert_eq!(after_first.len(), 2);
        assert_eq!(after_first[0].id, all[1].id);
        bus.emit(Happened::new(EventKind::Failed, "permanent_error"));
        let next = live.try_recv().unwrap();
        assert_eq!(next.kind, EventKind::Failed);
        // An id from another run (or a made-up one) replays everything the ring holds.
        let (again, _) = bus.subscribe(Some("00000000.2"));
        assert_eq!(again.len(), 4);
    }

    #[test]
    fn the_ring_keeps_the_newest_events() {
        let bus = bus();
        for _ in 0..RING_CAPACITY + 10 {
            bus.emit(Happened::new(EventKind::Refreshed, "success"));
        }
        let (all, _) = bus.subscribe(None);
        assert_eq!(all.len(), RING_CAPACITY);
        assert_eq!(sequence(&all[0].id), 11);
        assert_eq!(bus.recent(2).len(), 2);
    }
}
