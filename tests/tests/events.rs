//! The task events a shim publishes, in order, with their payloads.

use std::time::Duration;

use serde_json::Value;
use shim_e2e::events::{Event, EventWatcher};
use shim_e2e::Ctx;

shim_e2e::scenarios! {
    event_sequence,
}

fn field_u64(e: &Event, key: &str) -> Option<u64> {
    e.payload.get(key).and_then(Value::as_u64)
}

/// A timestamp field: ctr 1.6 prints RFC 3339 strings, ctr 1.7 and 2.1 print
/// `{"seconds":..,"nanos":..}` objects. Compared as JSON values.
fn field_time<'a>(e: &'a Event, key: &str) -> Option<&'a Value> {
    e.payload
        .get(key)
        .filter(|v| v.is_string() || v.is_object())
}

fn field_str<'a>(e: &'a Event, key: &str) -> Option<&'a str> {
    e.payload.get(key).and_then(Value::as_str)
}

/// How many times `event_sequence` runs on containerd 2.x, which loses one of
/// a container's events now and then, with its own Go shim too: mostly the
/// final `/tasks/delete`, and once in CI a `/tasks/paused` from our oci shim
/// although the `/tasks/resumed` after it arrived (our publisher forwards
/// strictly in order and retries until containerd accepts, so containerd had
/// accepted the lost one).
const ATTEMPTS_2X: usize = 6;

/// How one run of the sequence ended, when it did not fail the test.
enum Outcome {
    Complete,
    /// containerd 2.x only: every event arrived, in order, except this one
    /// (and `/containers/delete`, published by containerd after the task
    /// delete, did arrive).
    LostOne(&'static str),
}

/// run -d, exec, pause, resume, SIGKILL, delete: the `/tasks/*` events for
/// the container arrive exactly in this order, with consistent payloads.
/// On containerd 2.x, a run that lost exactly one event and got every other
/// in order is retried with a new container (at most `ATTEMPTS_2X` runs);
/// anything else fails at once, and so does a shim that never gets a whole
/// sequence through.
fn event_sequence(ctx: &Ctx) {
    let watcher = EventWatcher::start(ctx, Duration::from_secs(300));
    let lossy = ctx.containerd_version().is_2x();
    let attempts = if lossy { ATTEMPTS_2X } else { 1 };
    for attempt in 1..=attempts {
        let id = format!("c{attempt}");
        match one_sequence(ctx, &watcher, &id, lossy) {
            Outcome::Complete => return,
            Outcome::LostOne(topic) => eprintln!(
                "[event_sequence / {}] containerd {} lost {topic} of {id} \
                 (attempt {attempt}/{attempts}); every other event was in order",
                ctx.variant.name(),
                ctx.containerd_version().name()
            ),
        }
    }
    ctx.fail(format!(
        "an event was lost in all {attempts} attempts on containerd {}: more than \
         containerd's own occasional loss\nall ctr events output:\n{}",
        ctx.containerd_version().name(),
        watcher.raw()
    ));
}

fn one_sequence(ctx: &Ctx, watcher: &EventWatcher, id: &str, lossy: bool) -> Outcome {
    let t = ctx.run_sleeper(id);
    let out = ctx.exec(id, "x1", &[], &["sh", "-c", "exit 5"]);
    ctx.check_code(&out, 5, "exec");
    ctx.ctr_ok(&["task", "pause", id]);
    ctx.wait_status(id, "PAUSED", Duration::from_secs(5));
    ctx.ctr_ok(&["task", "resume", id]);
    ctx.wait_status(id, "RUNNING", Duration::from_secs(5));
    ctx.kill_and_remove(id);
    let complete = watcher.wait_for_topic(id, "/containers/delete", Duration::from_secs(10));

    let events: Vec<Event> = watcher
        .events_for(id)
        .into_iter()
        .filter(|e| e.topic.starts_with("/tasks/"))
        .collect();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    let expected = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let dump = || {
        format!(
            "events for {id}:\n{}\nall ctr events output:\n{}\nctr events stderr:\n{}",
            watcher
                .events_for(id)
                .iter()
                .map(|e| format!("{} {}", e.topic, e.payload))
                .collect::<Vec<_>>()
                .join("\n"),
            watcher.raw(),
            watcher.stderr()
        )
    };
    ctx.ensure(complete, || {
        format!("no /containers/delete event\n{}", dump())
    });
    if topics == expected {
        check_payloads(ctx, id, &t, &events, &dump);
        return Outcome::Complete;
    }
    let lost = lossy.then(|| lost_one(&topics, &expected)).flatten();
    ctx.ensure(lost.is_some(), || {
        format!("task topics {topics:?}\nexpected {expected:?}\n{}", dump())
    });
    Outcome::LostOne(lost.expect("checked above"))
}

/// The one topic missing from `got` when it is `expected` with exactly one
/// element removed.
fn lost_one(got: &[&str], expected: &[&'static str]) -> Option<&'static str> {
    (0..expected.len()).find_map(|skip| {
        let rest = expected
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != skip)
            .map(|(_, t)| *t);
        rest.eq(got.iter().copied()).then_some(expected[skip])
    })
}

/// The payloads of the whole sequence.
fn check_payloads(
    ctx: &Ctx,
    id: &str,
    t: &shim_e2e::TaskInfo,
    events: &[Event],
    dump: &dyn Fn() -> String,
) {
    let bundle = ctx.bundle(id).display().to_string();
    let [create, start, added, started, exec_exit, paused, resumed, exit] =
        <&[Event; 8]>::try_from(&events[..8]).expect("at least eight events, checked above");
    let init = u64::from(t.pid);
    ctx.ensure(field_u64(create, "pid") == Some(init), || {
        format!("/tasks/create pid should be {init}\n{}", dump())
    });
    ctx.ensure(field_str(create, "bundle") == Some(bundle.as_str()), || {
        format!("/tasks/create bundle should be {bundle}\n{}", dump())
    });
    ctx.ensure(
        create.payload["rootfs"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            && create.payload["io"]["stdout"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
        || {
            format!(
                "/tasks/create should carry rootfs mounts and io paths\n{}",
                dump()
            )
        },
    );
    ctx.ensure(field_u64(start, "pid") == Some(init), || {
        format!("/tasks/start pid should be {init}\n{}", dump())
    });
    ctx.ensure(field_str(added, "exec_id") == Some("x1"), || {
        format!("/tasks/exec-added exec_id\n{}", dump())
    });
    let exec_pid = field_u64(started, "pid");
    ctx.ensure(
        field_str(started, "exec_id") == Some("x1") && exec_pid.is_some_and(|p| p != init && p > 0),
        || format!("/tasks/exec-started exec_id and pid\n{}", dump()),
    );
    ctx.ensure(
        field_str(exec_exit, "id") == Some("x1")
            && field_u64(exec_exit, "pid") == exec_pid
            && field_u64(exec_exit, "exit_status") == Some(5)
            && field_time(exec_exit, "exited_at").is_some(),
        || {
            format!(
                "the exec's /tasks/exit (id x1, its pid, status 5, exited_at)\n{}",
                dump()
            )
        },
    );
    ctx.ensure(
        field_str(paused, "container_id") == Some(id)
            && field_str(resumed, "container_id") == Some(id),
        || format!("/tasks/paused and /tasks/resumed\n{}", dump()),
    );
    ctx.ensure(
        field_str(exit, "id") == Some(id)
            && field_u64(exit, "pid") == Some(init)
            && field_u64(exit, "exit_status") == Some(137)
            && field_time(exit, "exited_at").is_some(),
        || {
            format!(
                "the init's /tasks/exit (id {id}, pid {init}, status 137)\n{}",
                dump()
            )
        },
    );
    let Some(delete) = events.get(8) else {
        return;
    };
    ctx.ensure(
        field_u64(delete, "pid") == Some(init)
            && field_u64(delete, "exit_status") == Some(137)
            && field_time(delete, "exited_at") == field_time(exit, "exited_at"),
        || {
            format!(
                "/tasks/delete (pid {init}, status 137, same exited_at as the exit)\n{}",
                dump()
            )
        },
    );
}
