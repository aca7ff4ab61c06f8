//! containerd wire types for our runtime shims.
//!
//! The messages and ttrpc services are generated at build time from our own
//! `.proto` files in `proto/`, which reproduce containerd's package names,
//! message names and field numbers. Messages are rust-protobuf 3 types; the
//! `*_ttrpc` modules hold the async ttrpc client (`TaskClient`,
//! `EventsClient`), server trait (`Task`, `Events`) and registration function
//! (`create_task`, `create_events`) for each service.

pub use protobuf;
pub use ttrpc;

use std::collections::HashMap;
use std::sync::Arc;

/// Declares `pub mod $name` holding `$OUT_DIR/$name.rs`. The lints allowed
/// here are the ones the generators allow in their standalone file headers,
/// which the build script strips.
macro_rules! generated_module {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[allow(
            unknown_lints,
            clippy::all,
            dead_code,
            missing_docs,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            trivial_casts,
            unsafe_code,
            unused_attributes,
            unused_imports,
            unused_mut,
            unused_results,
            unused_qualifications
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
        }
    };
}

generated_module!(
    /// Task API v2 messages (`containerd.task.v2`).
    shim
);
generated_module!(
    /// Task API v2 service: `Task`, `TaskClient`, `create_task`.
    shim_ttrpc
);
generated_module!(
    /// Task API v3 messages (`containerd.task.v3`), wire-identical to v2.
    shim_v3
);
generated_module!(
    /// Task API v3 service: `Task`, `TaskClient`, `create_task`.
    shim_v3_ttrpc
);
generated_module!(
    /// `containerd.types.Mount` and the mount manager's types.
    mount
);
generated_module!(
    /// `containerd.v1.types`: process `Status` and `ProcessInfo`.
    task
);
generated_module!(
    /// `containerd.types.RuntimeInfo`, answered by `shim -info`.
    introspection
);
generated_module!(
    /// Task events (`containerd.events`).
    events
);
generated_module!(
    /// `containerd.services.events.ttrpc.v1`: `ForwardRequest`, `Envelope`.
    forward
);
generated_module!(
    /// Event forwarding service: `Events`, `EventsClient`, `create_events`.
    forward_ttrpc
);
generated_module!(
    /// cgroup v1 `Metrics` (`io.containerd.cgroups.v1`).
    metrics_v1
);
generated_module!(
    /// cgroup v2 `Metrics` (`io.containerd.cgroups.v2`).
    metrics_v2
);
generated_module!(
    /// runc shim options (`containerd.runc.v1`).
    runc_options
);
generated_module!(
    /// CRI generic runtime options (`runtimeoptions.v1`).
    runtimeoptions
);
generated_module!(
    /// Shim start-up handshake (`containerd.runtime.bootstrap.v1`).
    bootstrap
);

generated_module!(
    /// The VM shim's guest agent protocol (`shimvm.agent.v1`), our own.
    agent
);
generated_module!(
    /// Guest agent service: `Agent`, `AgentClient`, `create_agent`.
    agent_ttrpc
);

/// ttrpc service name of the VM shim's guest agent.
pub const AGENT_SERVICE: &str = "shimvm.agent.v1.Agent";
/// Version of `proto/agent.proto`, answered by `Agent.Health`; bumped on every incompatible
/// change so a host never drives a guest image built from another protocol.
pub const AGENT_PROTOCOL_VERSION: u32 = 2;

/// ttrpc service name of the task API v2.
pub const TASK_V2_SERVICE: &str = "containerd.task.v2.Task";
/// ttrpc service name of the task API v3.
pub const TASK_V3_SERVICE: &str = "containerd.task.v3.Task";
/// ttrpc service name of containerd's event forwarding service.
pub const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";

/// Builds a ttrpc service map that serves one v2 `Task` implementation under
/// both [`TASK_V2_SERVICE`] and [`TASK_V3_SERVICE`].
///
/// The v3 API differs from v2 only in its package name, so its requests
/// decode as the v2 messages and v2 responses are valid v3 responses.
pub fn create_task_v2_and_v3(
    service: Arc<dyn shim_ttrpc::Task + Send + Sync>,
) -> HashMap<String, ttrpc::r#async::Service> {
    let mut services = shim_ttrpc::create_task(service.clone());
    let v3 = shim_ttrpc::create_task(service)
        .remove(TASK_V2_SERVICE)
        .expect("generated create_task registers containerd.task.v2.Task");
    services.insert(TASK_V3_SERVICE.to_string(), v3);
    services
}

/// Type URLs of the `google.protobuf.Any` payloads exchanged with containerd.
///
/// containerd names protobuf messages by their bare full name (no
/// `type.googleapis.com/` prefix) and registers the OCI runtime-spec Go types
/// under `types.containerd.io/opencontainers/runtime-spec/1/...`; those spec
/// payloads are JSON, not protobuf.
pub mod type_urls {
    /// `containerd.events.TaskCreate`
    pub const TASK_CREATE: &str = "containerd.events.TaskCreate";
    /// `containerd.events.TaskStart`
    pub const TASK_START: &str = "containerd.events.TaskStart";
    /// `containerd.events.TaskDelete`
    pub const TASK_DELETE: &str = "containerd.events.TaskDelete";
    /// `containerd.events.TaskIO`
    pub const TASK_IO: &str = "containerd.events.TaskIO";
    /// `containerd.events.TaskExit`
    pub const TASK_EXIT: &str = "containerd.events.TaskExit";
    /// `containerd.events.TaskOOM`
    pub const TASK_OOM: &str = "containerd.events.TaskOOM";
    /// `containerd.events.TaskExecAdded`
    pub const TASK_EXEC_ADDED: &str = "containerd.events.TaskExecAdded";
    /// `containerd.events.TaskExecStarted`
    pub const TASK_EXEC_STARTED: &str = "containerd.events.TaskExecStarted";
    /// `containerd.events.TaskPaused`
    pub const TASK_PAUSED: &str = "containerd.events.TaskPaused";
    /// `containerd.events.TaskResumed`
    pub const TASK_RESUMED: &str = "containerd.events.TaskResumed";
    /// `containerd.events.TaskCheckpointed`
    pub const TASK_CHECKPOINTED: &str = "containerd.events.TaskCheckpointed";

    /// cgroup v1 stats in `StatsResponse.stats`.
    pub const CGROUPS_V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
    /// cgroup v2 stats in `StatsResponse.stats`.
    pub const CGROUPS_V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

    /// runc shim options in `CreateTaskRequest.options`.
    pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
    /// runc checkpoint options in `CheckpointTaskRequest.options`.
    pub const RUNC_CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";
    /// runc exec details in `ProcessInfo.info`.
    pub const RUNC_PROCESS_DETAILS: &str = "containerd.runc.v1.ProcessDetails";
    /// CRI generic runtime options in `CreateTaskRequest.options`.
    pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

    /// OCI runtime-spec `Spec` (JSON).
    pub const OCI_SPEC: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
    /// OCI runtime-spec `Process` (JSON), in `ExecProcessRequest.spec`.
    pub const OCI_PROCESS: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
    /// OCI runtime-spec `LinuxResources` (JSON), in `UpdateTaskRequest.resources`.
    pub const OCI_LINUX_RESOURCES: &str =
        "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
    /// OCI runtime-spec `WindowsResources` (JSON).
    pub const OCI_WINDOWS_RESOURCES: &str =
        "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources";
    /// OCI runtime features document (JSON), in `RuntimeInfo.features`.
    pub const OCI_FEATURES: &str =
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

    /// Whether an Any's `type_url` names `expected`.
    ///
    /// Exact match, or, for a protobuf message name (`expected` without
    /// `/`), a URL with any host prefix such as
    /// `type.googleapis.com/containerd.runc.v1.Options`, which containerd's
    /// decoder also accepts.
    pub fn matches(type_url: &str, expected: &str) -> bool {
        if type_url == expected {
            return true;
        }
        !expected.contains('/')
            && type_url
                .rsplit_once('/')
                .is_some_and(|(_, name)| name == expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::{Enum, Message};
    use std::collections::BTreeSet;

    struct Unimplemented;

    impl shim_ttrpc::Task for Unimplemented {}
    impl shim_v3_ttrpc::Task for Unimplemented {}

    fn method_names(
        services: &HashMap<String, ttrpc::r#async::Service>,
        name: &str,
    ) -> BTreeSet<String> {
        services[name].methods.keys().cloned().collect()
    }

    #[test]
    fn v2_and_v3_services_have_the_same_methods() {
        let v2 = shim_ttrpc::create_task(Arc::new(Unimplemented));
        let v3 = shim_v3_ttrpc::create_task(Arc::new(Unimplemented));
        assert_eq!(v2.keys().collect::<Vec<_>>(), vec![TASK_V2_SERVICE]);
        assert_eq!(v3.keys().collect::<Vec<_>>(), vec![TASK_V3_SERVICE]);

        let expected: BTreeSet<String> = [
            "State",
            "Create",
            "Start",
            "Delete",
            "Pids",
            "Pause",
            "Resume",
            "Checkpoint",
            "Kill",
            "Exec",
            "ResizePty",
            "CloseIO",
            "Update",
            "Wait",
            "Stats",
            "Connect",
            "Shutdown",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(method_names(&v2, TASK_V2_SERVICE), expected);
        assert_eq!(method_names(&v3, TASK_V3_SERVICE), expected);

        let both = create_task_v2_and_v3(Arc::new(Unimplemented));
        assert_eq!(both.len(), 2);
        assert_eq!(method_names(&both, TASK_V2_SERVICE), expected);
        assert_eq!(method_names(&both, TASK_V3_SERVICE), expected);
    }

    struct NoAgent;

    impl agent_ttrpc::Agent for NoAgent {}

    #[test]
    fn agent_service_methods() {
        let services = agent_ttrpc::create_agent(Arc::new(NoAgent));
        assert_eq!(services.keys().collect::<Vec<_>>(), vec![AGENT_SERVICE]);
        let expected: BTreeSet<String> = [
            "Health",
            "SyncGuest",
            "Shutdown",
            "CreateContainer",
            "StartContainer",
            "ExecProcess",
            "SignalProcess",
            "WaitProcess",
            "RemoveContainer",
            "WriteStdin",
            "ReadStdout",
            "ReadStderr",
            "CloseStdin",
            "ResizeTty",
            "StatsContainer",
            "PauseContainer",
            "ResumeContainer",
            "UpdateContainer",
            "ListProcesses",
            "GetOOMEvent",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(method_names(&services, AGENT_SERVICE), expected);
        assert_eq!(agent::file_descriptor().package(), "shimvm.agent.v1");
    }

    #[test]
    fn v2_and_v3_message_descriptors_match() {
        let v2 = shim::file_descriptor();
        let v3 = shim_v3::file_descriptor();
        assert_eq!(v2.package(), "containerd.task.v2");
        assert_eq!(v3.package(), "containerd.task.v3");
        let fields = |fd: &protobuf::reflect::FileDescriptor| -> Vec<(String, String, i32)> {
            fd.messages()
                .flat_map(|m| {
                    let name = m.name().to_string();
                    m.fields()
                        .map(move |f| (name.clone(), f.name().to_string(), f.number()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        assert_eq!(fields(v2), fields(v3));
        assert_eq!(v2.messages().count(), 26);
    }

    #[test]
    fn delete_response_wire_format() {
        let mut resp = shim::DeleteResponse::new();
        resp.pid = 1;
        resp.exit_status = 137;
        // field 1 varint 1, field 2 varint 137 (0x89 0x01)
        let bytes = resp.write_to_bytes().unwrap();
        assert_eq!(bytes, [0x08, 0x01, 0x10, 0x89, 0x01]);

        let decoded = shim_v3::DeleteResponse::parse_from_bytes(&bytes).unwrap();
        assert_eq!(decoded.pid, 1);
        assert_eq!(decoded.exit_status, 137);
        assert!(decoded.exited_at.is_none());

        let mut with_time = resp.clone();
        with_time.exited_at.mut_or_insert_default().seconds = 2;
        // field 3, length-delimited Timestamp { seconds = 2 }
        assert_eq!(
            with_time.write_to_bytes().unwrap(),
            [0x08, 0x01, 0x10, 0x89, 0x01, 0x1a, 0x02, 0x08, 0x02]
        );
    }

    #[test]
    fn runc_options_wire_format() {
        let mut opts = runc_options::Options::new();
        opts.binary_name = "runc".into();
        // field 6, length-delimited
        assert_eq!(opts.write_to_bytes().unwrap(), b"\x32\x04runc");

        let bytes = [
            0x3a, 0x03, b'/', b'r', b'r', // root = 7
            0x48, 0x01, // systemd_cgroup = 9
            0x68, 0x03, // task_api_version = 13
        ];
        let decoded = runc_options::Options::parse_from_bytes(&bytes).unwrap();
        assert_eq!(decoded.root, "/rr");
        assert!(decoded.systemd_cgroup);
        assert_eq!(decoded.task_api_version, 3);
        assert_eq!(decoded.binary_name, "");
    }

    #[test]
    fn state_response_status_enum() {
        let mut state = shim::StateResponse::new();
        state.status = task::Status::STOPPED.into();
        state.exit_status = 1;
        // field 4 varint 3, field 9 varint 1
        assert_eq!(state.write_to_bytes().unwrap(), [0x20, 0x03, 0x48, 0x01]);
        assert_eq!(task::Status::PAUSING.value(), 5);
        let decoded = shim::StateResponse::parse_from_bytes(&[0x20, 0x04]).unwrap();
        assert_eq!(decoded.status.enum_value(), Ok(task::Status::PAUSED));
    }

    #[test]
    fn forward_request_wraps_event() {
        let mut exit = events::TaskExit::new();
        exit.container_id = "c".into();
        exit.pid = 7;
        let mut envelope = forward::Envelope::new();
        envelope.namespace = "k8s.io".into();
        envelope.topic = "/tasks/exit".into();
        envelope.event = protobuf::MessageField::some(protobuf::well_known_types::any::Any {
            type_url: type_urls::TASK_EXIT.into(),
            value: exit.write_to_bytes().unwrap(),
            ..Default::default()
        });
        let mut req = forward::ForwardRequest::new();
        req.envelope = protobuf::MessageField::some(envelope);

        let decoded =
            forward::ForwardRequest::parse_from_bytes(&req.write_to_bytes().unwrap()).unwrap();
        let event = &decoded.envelope.event;
        assert_eq!(event.type_url, "containerd.events.TaskExit");
        assert_eq!(
            events::TaskExit::parse_from_bytes(&event.value).unwrap(),
            exit
        );
        assert_eq!(
            <events::TaskExit as protobuf::MessageFull>::descriptor().full_name(),
            type_urls::TASK_EXIT
        );
    }

    #[test]
    fn bootstrap_negative_log_level() {
        let mut params = bootstrap::BootstrapParams::new();
        params.log_level = bootstrap::LogLevel::LOG_LEVEL_DEBUG.into();
        // int32 -4 is a 10-byte varint
        let bytes = params.write_to_bytes().unwrap();
        assert_eq!(
            bytes,
            [0x18, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        let mut params = bootstrap::BootstrapParams::new();
        params.instance_id = "id".into();
        params.socket_dir = Some(String::new());
        // proto3 `optional` keeps an explicitly set empty string on the wire
        assert_eq!(params.write_to_bytes().unwrap(), b"\x0a\x02id\x4a\x00");
    }

    #[test]
    fn type_urls_match_descriptors() {
        use protobuf::MessageFull;
        let names = [
            (events::TaskCreate::descriptor(), type_urls::TASK_CREATE),
            (events::TaskStart::descriptor(), type_urls::TASK_START),
            (events::TaskDelete::descriptor(), type_urls::TASK_DELETE),
            (events::TaskIO::descriptor(), type_urls::TASK_IO),
            (events::TaskExit::descriptor(), type_urls::TASK_EXIT),
            (events::TaskOOM::descriptor(), type_urls::TASK_OOM),
            (
                events::TaskExecAdded::descriptor(),
                type_urls::TASK_EXEC_ADDED,
            ),
            (
                events::TaskExecStarted::descriptor(),
                type_urls::TASK_EXEC_STARTED,
            ),
            (events::TaskPaused::descriptor(), type_urls::TASK_PAUSED),
            (events::TaskResumed::descriptor(), type_urls::TASK_RESUMED),
            (
                events::TaskCheckpointed::descriptor(),
                type_urls::TASK_CHECKPOINTED,
            ),
            (
                metrics_v1::Metrics::descriptor(),
                type_urls::CGROUPS_V1_METRICS,
            ),
            (
                metrics_v2::Metrics::descriptor(),
                type_urls::CGROUPS_V2_METRICS,
            ),
            (runc_options::Options::descriptor(), type_urls::RUNC_OPTIONS),
            (
                runc_options::CheckpointOptions::descriptor(),
                type_urls::RUNC_CHECKPOINT_OPTIONS,
            ),
            (
                runc_options::ProcessDetails::descriptor(),
                type_urls::RUNC_PROCESS_DETAILS,
            ),
            (
                runtimeoptions::Options::descriptor(),
                type_urls::RUNTIME_OPTIONS,
            ),
        ];
        for (descriptor, url) in names {
            assert_eq!(descriptor.full_name(), url);
        }
    }

    #[test]
    fn type_url_matching() {
        use type_urls::{matches, OCI_PROCESS, RUNC_OPTIONS};
        assert!(matches("containerd.runc.v1.Options", RUNC_OPTIONS));
        assert!(matches(
            "type.googleapis.com/containerd.runc.v1.Options",
            RUNC_OPTIONS
        ));
        assert!(!matches("containerd.runc.v1.OptionsX", RUNC_OPTIONS));
        assert!(matches(OCI_PROCESS, OCI_PROCESS));
        assert!(!matches("Process", OCI_PROCESS));
        assert!(!matches("x/y/Process", OCI_PROCESS));
    }

    struct Echo;

    #[async_trait::async_trait]
    impl shim_ttrpc::Task for Echo {
        async fn connect(
            &self,
            _ctx: &ttrpc::r#async::TtrpcContext,
            req: shim::ConnectRequest,
        ) -> ttrpc::Result<shim::ConnectResponse> {
            let mut resp = shim::ConnectResponse::new();
            resp.shim_pid = 42;
            resp.version = req.id;
            Ok(resp)
        }
    }

    /// A v3 client talks to a v2 implementation registered under both names.
    #[test]
    fn v3_client_reaches_v2_handlers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("protos-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let sock = dir.join("task.sock");
            let _ = std::fs::remove_file(&sock);
            let addr = format!("unix://{}", sock.display());

            let mut server = ttrpc::r#async::Server::new()
                .bind(&addr)
                .unwrap()
                .register_service(create_task_v2_and_v3(Arc::new(Echo)));
            server.start().await.unwrap();

            let client = ttrpc::r#async::Client::connect(&addr).await.unwrap();
            let mut req = shim_v3::ConnectRequest::new();
            req.id = "v3".into();
            let resp = shim_v3_ttrpc::TaskClient::new(client.clone())
                .connect(ttrpc::context::with_timeout(0), &req)
                .await
                .unwrap();
            assert_eq!(resp.shim_pid, 42);
            assert_eq!(resp.version, "v3");

            let mut req = shim::ConnectRequest::new();
            req.id = "v2".into();
            let resp = shim_ttrpc::TaskClient::new(client.clone())
                .connect(ttrpc::context::with_timeout(0), &req)
                .await
                .unwrap();
            assert_eq!(resp.version, "v2");

            let err = shim_v3_ttrpc::TaskClient::new(client)
                .pids(
                    ttrpc::context::with_timeout(0),
                    &shim_v3::PidsRequest::new(),
                )
                .await
                .unwrap_err();
            match err {
                ttrpc::Error::RpcStatus(status) => {
                    assert_eq!(status.code(), ttrpc::Code::NOT_FOUND)
                }
                other => panic!("unexpected error {other:?}"),
            }

            server.shutdown().await.unwrap();
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
