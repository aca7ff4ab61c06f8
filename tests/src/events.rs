//! Watching containerd's event stream with `ctr events`.

use std::time::Duration;

use serde_json::Value;

use crate::cmd::{Running, Stdin};
use crate::ctx::Ctx;
use crate::image::IMAGE;
use crate::util::wait_for;

/// One event line of `ctr events`.
#[derive(Debug, Clone)]
pub struct Event {
    pub namespace: String,
    pub topic: String,
    pub payload: Value,
}

impl Event {
    /// Whether the event is about container `id` (tasks carry `container_id`,
    /// container events `id`).
    pub fn is_for(&self, id: &str) -> bool {
        self.payload.get("container_id").and_then(Value::as_str) == Some(id)
            || (self.topic.starts_with("/containers/")
                && self.payload.get("id").and_then(Value::as_str) == Some(id))
    }
}

/// Parse `ctr events` output: `DATE TIME +0000 UTC NS TOPIC JSON`.
pub fn parse_events(text: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(7, ' ');
            let (_date, _time, _off, _utc) = (it.next()?, it.next()?, it.next()?, it.next()?);
            let namespace = it.next()?.to_string();
            let topic = it.next()?.to_string();
            let payload = serde_json::from_str(it.next().unwrap_or("{}")).ok()?;
            Some(Event {
                namespace,
                topic,
                payload,
            })
        })
        .collect()
}

/// A background `ctr events`, synchronised: when [`EventWatcher::start`]
/// returns, the subscription is known to be live.
pub struct EventWatcher<'a> {
    ctx: &'a Ctx,
    child: Option<Running>,
    log: std::path::PathBuf,
}

impl<'a> EventWatcher<'a> {
    /// Start `ctr events` and wait until it has seen a marker container's
    /// `/containers/create` (so no later event can be missed).
    pub fn start(ctx: &'a Ctx, limit: Duration) -> EventWatcher<'a> {
        // ctr writes events to stdout; send it through a file so it can be
        // read while ctr keeps running.
        let log = ctx
            .work
            .join(format!("events-{}.txt", crate::util::random_hex(3)));
        let inner = format!(
            "exec {} > {} 2> {}",
            crate::util::shell_join(&crate::cmd::with_timeout(limit, &ctx.ctr_argv(&["events"]))),
            crate::util::shell_quote(&log.display().to_string()),
            crate::util::shell_quote(&format!("{}.err", log.display()))
        );
        let child = Running::spawn(
            &["sh".to_string(), "-c".to_string(), inner],
            &[],
            Stdin::Null,
        );
        let w = EventWatcher {
            ctx,
            child: Some(child),
            log,
        };
        let marker = format!("marker-{}", crate::util::random_hex(3));
        let seen = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            // No `--` (ctr 2.x would keep it as the command): `true` has no flags.
            let out = ctx.ctr(&["container", "create", IMAGE, &marker, "true"]);
            ctx.check(&out, "creating the events marker container");
            let got = wait_for(
                Duration::from_millis(500),
                Duration::from_millis(20),
                || {
                    w.events()
                        .iter()
                        .any(|e| e.topic == "/containers/create" && e.is_for(&marker))
                        .then_some(())
                },
            );
            let rm = ctx.ctr(&["container", "rm", &marker]);
            ctx.check(&rm, "removing the events marker container");
            got
        });
        if seen.is_none() {
            ctx.fail(format!(
                "ctr events did not report the marker container within 20 s; its output:\n{}",
                w.raw()
            ));
        }
        w
    }

    /// Everything `ctr events` printed so far.
    pub fn raw(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What `ctr events` wrote on stderr (e.g. events it could not decode
    /// and skipped), for failure messages.
    pub fn stderr(&self) -> String {
        let mut p = self.log.clone().into_os_string();
        p.push(".err");
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// All events so far.
    pub fn events(&self) -> Vec<Event> {
        parse_events(&self.raw())
    }

    /// Events so far about container `id` in the test's namespace.
    pub fn events_for(&self, id: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.namespace == self.ctx.ns && e.is_for(id))
            .collect()
    }

    /// Wait until an event with `topic` about `id` has arrived.
    pub fn wait_for_topic(&self, id: &str, topic: &str, limit: Duration) -> bool {
        wait_for(limit, Duration::from_millis(50), || {
            self.events_for(id)
                .iter()
                .any(|e| e.topic == topic)
                .then_some(())
        })
        .is_some()
    }
}

impl Drop for EventWatcher<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }
}
