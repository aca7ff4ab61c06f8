//! The host's connection to the guest agent: QEMU's chardev socket, the resynchronising
//! handshake ([`vm_channel`]), then a plain ttrpc client.

use std::path::Path;
use std::time::{Duration, Instant};

use protos::agent_ttrpc::AgentClient;
use protos::ttrpc;
use tokio::net::UnixStream;
use vm_channel::Prefixed;

use crate::{Error, Result};

/// A connected agent.
#[derive(Clone)]
pub struct Agent {
    pub client: AgentClient,
}

/// The longest unix socket path connect() takes, less the NUL.
const SUN_PATH_MAX: usize = 107;

/// Connects to a unix socket, also one whose path is longer than `sun_path`.
pub(crate) async fn connect_socket(path: &Path) -> std::io::Result<UnixStream> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return UnixStream::connect(path).await;
    }
    // Too long for sockaddr_un: go through an open descriptor of its directory, whose
    // /proc/self/fd path is short (no chdir, which would race other threads).
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default();
    let d = std::fs::File::open(dir)?;
    use std::os::fd::AsRawFd;
    let short = Path::new("/proc/self/fd")
        .join(d.as_raw_fd().to_string())
        .join(name);
    let r = UnixStream::connect(&short).await;
    drop(d);
    r
}

/// Opens one of the VM's ports (the agent's, or the output port) behind QEMU's socket at
/// `path` and runs the resynchronising handshake, retrying until `deadline`: the socket
/// appears some milliseconds after QEMU starts, and the agent answers only once the guest is
/// up (a greeting sent early waits in the channel). Every host-side stream to the guest is
/// opened here, so this is where another transport (vsock) would plug in.
pub(crate) async fn connect_port(
    path: &Path,
    deadline: Instant,
    what: &str,
) -> Result<Prefixed<UnixStream>> {
    let mut last = String::from("never tried");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Agent(format!(
                "no {what} at {} before the deadline: {last}",
                path.display()
            )));
        }
        match connect_socket(path).await {
            Ok(stream) => {
                let nonce = vm_channel::fresh_nonce();
                match tokio::time::timeout(
                    deadline - now,
                    vm_channel::host_handshake(stream, nonce),
                )
                .await
                {
                    Ok(Ok(stream)) => return Ok(stream),
                    Ok(Err(e)) => last = format!("handshake: {e}"),
                    Err(_) => last = "handshake timed out".into(),
                }
            }
            Err(e) => last = format!("connecting: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Agent {
    /// Connects to the agent behind QEMU's socket at `path`, retrying until `deadline`: the
    /// socket appears some milliseconds after QEMU starts, and the agent answers the handshake
    /// only once the guest booted (a greeting sent early waits in the channel).
    pub async fn connect(path: &Path, deadline: Instant) -> Result<Agent> {
        let stream = connect_port(path, deadline, "agent").await?;
        let socket = ttrpc::asynchronous::transport::Socket::new(stream);
        let client = ttrpc::r#async::Client::new(socket);
        Ok(Agent {
            client: AgentClient::new(client),
        })
    }

    /// A ttrpc context with a timeout.
    pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(timeout.as_nanos() as i64)
    }

    pub async fn health(&self, timeout: Duration) -> Result<protos::agent::HealthResponse> {
        let mut req = protos::agent::HealthRequest::new();
        req.host_version = env!("CARGO_PKG_VERSION").to_string();
        self.client
            .health(Self::ctx(timeout), &req)
            .await
            .map_err(|e| Error::Agent(format!("Health: {e}")))
    }

    /// Hands the guest the host's clock and fresh entropy (SyncGuest): a VM restored from a
    /// template wakes with the template's clock and random state.
    pub async fn sync_guest(&self, timeout: Duration) -> Result<()> {
        let mut entropy = vec![0u8; 64];
        // SAFETY: getrandom fills the buffer we own, up to its length.
        let n = unsafe { libc::getrandom(entropy.as_mut_ptr().cast(), entropy.len(), 0) };
        if n != entropy.len() as isize {
            return Err(Error::io(
                "reading host entropy",
                std::io::Error::last_os_error(),
            ));
        }
        let mut req = protos::agent::SyncGuestRequest::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut ts = protobuf::well_known_types::timestamp::Timestamp::new();
        ts.seconds = now.as_secs() as i64;
        ts.nanos = now.subsec_nanos() as i32;
        req.now = protobuf::MessageField::some(ts);
        req.entropy = entropy;
        self.client
            .sync_guest(Self::ctx(timeout), &req)
            .await
            .map(|_| ())
            .map_err(|e| Error::Agent(format!("SyncGuest: {e}")))
    }

    /// Asks the guest to power off. The reply can be lost when the VM goes down first, so a
    /// broken connection counts as success; the caller waits for QEMU to exit.
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        match self
            .client
            .shutdown(Self::ctx(timeout), &protos::agent::ShutdownRequest::new())
            .await
        {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::RpcStatus(s)) => Err(Error::Agent(format!(
                "Shutdown: {:?}: {}",
                s.code(),
                s.message()
            ))),
            Err(_) => Ok(()),
        }
    }
}
