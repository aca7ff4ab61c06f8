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

fn field_str<'a>(e: &'a Event, key: &str) -> Option<&'a str> {
    e.payload.get(key).and_then(Value::as_str)
}

/// run -d, exec, pause, resume, SIGKILL, delete: the `/tasks/*` events for
/// the container arrive exactly in this order, with consistent payloads.
fn event_sequence(ctx: &Ctx) {
    let id = "c1";
    let watcher = EventWatcher::start(ctx, Duration::from_secs(120));
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
            "events for {id}:\n{}\nall ctr events output:\n{}",
            watcher
                .events_for(id)
                .iter()
                .map(|e| format!("{} {}", e.topic, e.payload))
                .collect::<Vec<_>>()
                .join("\n"),
            watcher.raw()
        )
    };
    ctx.ensure(complete, || {
        format!("no /containers/delete event\n{}", dump())
    });
    ctx.ensure(topics == expected, || {
        format!("task topics {topics:?}\nexpected {expected:?}\n{}", dump())
    });

    let bundle = ctx.bundle(id).display().to_string();
    let [create, start, added, started, exec_exit, paused, resumed, exit, delete] =
        <[Event; 9]>::try_from(events).expect("nine events, checked above");
    let init = u64::from(t.pid);
    ctx.ensure(field_u64(&create, "pid") == Some(init), || {
        format!("/tasks/create pid should be {init}\n{}", dump())
    });
    ctx.ensure(
        field_str(&create, "bundle") == Some(bundle.as_str()),
        || format!("/tasks/create bundle should be {bundle}\n{}", dump()),
    );
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
    ctx.ensure(field_u64(&start, "pid") == Some(init), || {
        format!("/tasks/start pid should be {init}\n{}", dump())
    });
    ctx.ensure(field_str(&added, "exec_id") == Some("x1"), || {
        format!("/tasks/exec-added exec_id\n{}", dump())
    });
    let exec_pid = field_u64(&started, "pid");
    ctx.ensure(
        field_str(&started, "exec_id") == Some("x1")
            && exec_pid.is_some_and(|p| p != init && p > 0),
        || format!("/tasks/exec-started exec_id and pid\n{}", dump()),
    );
    ctx.ensure(
        field_str(&exec_exit, "id") == Some("x1")
            && field_u64(&exec_exit, "pid") == exec_pid
            && field_u64(&exec_exit, "exit_status") == Some(5)
            && field_str(&exec_exit, "exited_at").is_some(),
        || {
            format!(
                "the exec's /tasks/exit (id x1, its pid, status 5, exited_at)\n{}",
                dump()
            )
        },
    );
    ctx.ensure(
        field_str(&paused, "container_id") == Some(id)
            && field_str(&resumed, "container_id") == Some(id),
        || format!("/tasks/paused and /tasks/resumed\n{}", dump()),
    );
    ctx.ensure(
        field_str(&exit, "id") == Some(id)
            && field_u64(&exit, "pid") == Some(init)
            && field_u64(&exit, "exit_status") == Some(137)
            && field_str(&exit, "exited_at").is_some(),
        || {
            format!(
                "the init's /tasks/exit (id {id}, pid {init}, status 137)\n{}",
                dump()
            )
        },
    );
    ctx.ensure(
        field_u64(&delete, "pid") == Some(init)
            && field_u64(&delete, "exit_status") == Some(137)
            && field_str(&delete, "exited_at") == field_str(&exit, "exited_at"),
        || {
            format!(
                "/tasks/delete (pid {init}, status 137, same exited_at as the exit)\n{}",
                dump()
            )
        },
    );
}
