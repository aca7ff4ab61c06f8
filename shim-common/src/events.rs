//! Task events, forwarded to containerd over ttrpc (`Events/Forward` at `TTRPC_ADDRESS`).
//!
//! One task sends the queue strictly in order, so create < start < exit < delete holds on the
//! wire as it does in the service. A send that fails (containerd restarting, socket gone) is
//! retried with back-off on a fresh connection until it goes through: an exit that happens while
//! containerd is away is delivered when it returns, never dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{MessageField, MessageFull};
use protos::forward::{Envelope, ForwardRequest};
use protos::forward_ttrpc::EventsClient;
use tokio::sync::{mpsc, Notify};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Envelope>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
    namespace: String,
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// Packs a message as containerd's typeurl does: the bare full name, no `type.googleapis.com/`.
pub fn to_any<M: MessageFull>(m: &M) -> Any {
    let mut any = Any::new();
    any.type_url = M::descriptor().full_name().to_string();
    any.value = m.write_to_bytes().unwrap_or_default();
    any
}

impl Publisher {
    /// `address` is containerd's ttrpc socket path; empty disables forwarding (events are
    /// logged and dropped), which only happens when the shim runs outside containerd.
    pub fn start(address: String, namespace: String) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        tokio::spawn(forward_loop(address, rx, pending.clone(), drained.clone()));
        Publisher {
            tx,
            pending,
            drained,
            namespace,
        }
    }

    pub fn publish<M: MessageFull>(&self, topic: &str, event: &M) {
        let mut env = Envelope::new();
        env.timestamp = MessageField::some(timestamp(SystemTime::now()));
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = MessageField::some(to_any(event));
        log::debug!("event {topic}");
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(env).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits (at most `limit`) until every queued event has been delivered; the daemon calls it
    /// before exiting so the last `/tasks/delete` is not lost with the process.
    pub async fn flush(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                if self.pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

async fn forward_loop(
    address: String,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    let mut client: Option<EventsClient> = None;
    while let Some(env) = rx.recv().await {
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0u32;
        while !address.is_empty() {
            if client.is_none() {
                match ttrpc::asynchronous::Client::connect(&format!("unix://{address}")).await {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(e) => log::debug!("connecting to containerd at {address}: {e}"),
                }
            }
            if let Some(c) = &client {
                let mut req = ForwardRequest::new();
                req.envelope = MessageField::some(env.clone());
                let ctx = ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64);
                match c.forward(ctx, &req).await {
                    Ok(_) => break,
                    Err(e) => {
                        log::warn!("forwarding event {}: {e}", env.topic);
                        client = None;
                    }
                }
            }
            attempts += 1;
            if attempts.is_multiple_of(20) {
                log::warn!(
                    "event {} still undelivered after {attempts} attempts",
                    env.topic
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            drained.notify_waiters();
        }
    }
}
