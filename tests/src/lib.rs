//! Test harness for the end-to-end suite: finds the built binaries and the peer venv, takes
//! free ports and temp dirs, runs processes that are killed when their guard drops, and waits
//! on readiness (a socket accepting connections, an HTTP 200), never on fixed sleeps.
//!
//! Missing peers are failures with instructions, never silent skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)] // test support: panics are reports

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod aws;
pub mod azure;
pub mod clients;
pub mod envoy;
pub mod gcp;
pub mod image;
pub mod istio;
pub mod procfs;
pub mod rates;
pub mod roles_anywhere;
pub mod sds;
pub mod sidecars;
pub mod spire;
pub mod stats;
pub mod vault;
pub mod wire;
pub mod wrk;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A binary built from this workspace (`cargo build --bins`; `cargo xtask test` does it), or
/// from `SUITE_BIN_DIR` when that is set (the soak run uses the host's binaries staged for
/// the image, `target/image/<arch>/usr/local/bin`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SUITE_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        if path.is_file() {
            return path;
        }
    }
    // Test executables live in target/<profile>/deps/, bench binaries in target/<profile>/;
    // the workspace binaries (and examples/) sit in target/<profile>/.
    let exe = std::env::current_exe().unwrap();
    let dirs: Vec<&Path> = exe.ancestors().skip(1).take(2).collect();
    let found = dirs
        .iter()
        .flat_map(|d| [d.join(name), d.join("examples").join(name)])
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "binary {name} not found next to {}: run `cargo build --workspace --bins` first \
             (`cargo xtask test` does this)",
            exe.display()
        )
    })
}

/// The project venv with the test peers (`SUITE_VENV`, else `<root>/.venv`).
pub fn venv() -> PathBuf {
    std::env::var_os("SUITE_VENV").map_or_else(|| root().join(".venv"), PathBuf::from)
}

/// The venv's Python, after checking that `modules` import; fails with install instructions.
pub fn python_with(modules: &[&str]) -> PathBuf {
    let python = venv().join("bin/python");
    let how = "run `cargo xtask venv` (or `cargo xtask test`), which creates .venv and runs \
               `pip install -r tests/requirements.txt`";
    assert!(
        python.exists(),
        "test peer venv missing at {}: {how}",
        venv().display()
    );
    let probe = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = Command::new(&python).args(["-c", &probe]).output().unwrap();
    assert!(
        out.status.success(),
        "test peer missing (python modules {modules:?}): {how}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// A loopback port the OS reports free right now, and never one this process was given
/// before: the OS may hand the same ephemeral port to two binds in a row once the first is
/// closed, and a sidecar given it twice (say as its listen and admin address) refuses to
/// start. The tests of one binary share this process, so none of them collide either.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if take_ports(&[port]) {
            return port;
        }
    }
}

/// Records `ports` as given out, unless one of them already was.
fn take_ports(ports: &[u16]) -> bool {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if ports.iter().any(|p| given.contains(p)) {
        return false;
    }
    given.extend(ports);
    true
}

/// A loopback port `p` such that `p` and `p + 1` are both free right now (a jwt-auth-helper
/// configured the upstream way serves admin on the port after ext_authz).
pub fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX
            && TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
            && take_ports(&[port, port + 1])
        {
            return port;
        }
    }
}

/// Polls `ready` every 10 ms until it returns true or `timeout` passes (then panics with `what`).
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every child spawned through [`Proc`] and not yet stopped, for [`kill_all_children`];
/// `closed` once that ran, so a spawn racing with it cannot leave a child behind.
struct Children {
    pids: Vec<u32>,
    closed: bool,
}

static CHILDREN: std::sync::Mutex<Children> = std::sync::Mutex::new(Children {
    pids: Vec::new(),
    closed: false,
});

fn children() -> std::sync::MutexGuard<'static, Children> {
    CHILDREN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn forget_child(pid: u32) {
    children().pids.retain(|p| *p != pid);
}

fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// SIGKILLs every child still running, and every child spawned from now on: for a signal
/// handler, where no destructor runs.
pub fn kill_all_children() {
    let mut children = children();
    children.closed = true;
    for pid in std::mem::take(&mut children.pids) {
        sigkill(pid);
    }
}

/// On Ctrl-C or SIGTERM: prints `message`, kills every child ([`kill_all_children`]), removes
/// `dir` and exits 130. For the long-running binaries (demo, soak), where no destructor runs on
/// a signal.
pub fn on_signal_clean_up(dir: PathBuf, message: &'static str) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        println!("\n{message}");
        kill_all_children();
        let _ = std::fs::remove_dir_all(dir);
        std::process::exit(130);
    });
}

/// A child process killed (and reaped) on drop, its stderr kept in a file for failure reports.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd`, logging its stderr (and stdout) to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null());
        // Spawn and register under one lock, so kill_all_children sees every child.
        let child = {
            let mut children = children();
            let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
            if children.closed {
                sigkill(child.id());
            } else {
                children.pids.push(child.id());
            }
            child
        };
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (0 once it has been stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills it at once (SIGKILL: a crash, not a graceful stop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            forget_child(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        forget_child(c.id());
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself and returns its status (it is
    /// then stopped: [`Proc::pid`] is 0); `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                forget_child(c.id());
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Panics if the process has exited, with its log.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("{} exited with {status}:\n{}", self.name, self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

/// A running `spiffe-dev-agent` on a Unix socket in a temp dir, with its admin endpoint.
#[derive(Debug)]
pub struct DevAgent {
    /// The process.
    pub proc: Proc,
    /// `unix:///…/agent.sock`.
    pub endpoint: String,
    /// The socket path.
    pub socket: PathBuf,
    /// Admin HTTP address (`/metrics`, `/rotate/x509`, `/rotate/jwt`).
    pub admin: SocketAddr,
    args: Vec<String>,
    log_dir: PathBuf,
    program: PathBuf,
}

impl DevAgent {
    /// Starts an agent with `args` (plus socket and admin flags) and waits until it serves.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_program(&bin("spiffe-dev-agent"), dir, args)
    }

    /// [`DevAgent::start`] running `program` (the binary copied out of an image, or a
    /// launcher that runs it under qemu-user).
    pub fn start_program(program: &Path, dir: &Path, args: &[&str]) -> Self {
        let socket = dir.join("agent.sock");
        let endpoint = format!("unix://{}", socket.display());
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut agent = Self {
            proc: Self::spawn(program, &endpoint, admin, args, dir),
            endpoint,
            socket,
            admin,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            log_dir: dir.to_path_buf(),
            program: program.to_path_buf(),
        };
        agent.wait_ready();
        agent
    }

    /// The address a client should use, without starting anything (for "client first" tests).
    pub fn planned(dir: &Path) -> (PathBuf, String) {
        let socket = dir.join("agent.sock");
        let endpoint = format!("unix://{}", socket.display());
        (socket, endpoint)
    }

    fn spawn(program: &Path, endpoint: &str, admin: SocketAddr, args: &[&str], dir: &Path) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(["--socket", endpoint, "--admin-listen", &admin.to_string()])
            .args(args)
            .env("RUST_LOG", "info");
        Proc::spawn("spiffe-dev-agent", cmd, dir)
    }

    /// Waits until the socket accepts connections and the admin endpoint answers.
    pub fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        let admin = self.admin;
        let proc = &mut self.proc;
        wait_until("dev agent to serve", Duration::from_secs(20), || {
            proc.assert_running();
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && http(admin, "GET", "/healthz").is_some_and(|(s, _)| s == 200)
        });
    }

    /// Kills the agent (SIGKILL) and starts it again with the same arguments and socket.
    pub fn restart(&mut self) {
        self.proc.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.proc = Self::spawn(
            &self.program,
            &self.endpoint,
            self.admin,
            &args,
            &self.log_dir,
        );
        self.wait_ready();
    }

    /// A counter from `/metrics`, e.g. `dev_agent_rpc_total{method="FetchJWTSVID"}`.
    pub fn metric(&self, series: &str) -> u64 {
        scrape(self.admin, series) as u64
    }

    /// FetchJWTSVID calls the agent has accepted.
    pub fn jwt_fetches(&self) -> u64 {
        self.metric("dev_agent_rpc_total{method=\"FetchJWTSVID\"}")
    }

    /// POSTs to an admin path (`/rotate/x509`, `/rotate/jwt`).
    pub fn post(&self, path: &str) {
        let (status, body) = http(self.admin, "POST", path).expect("agent admin");
        assert!((200..300).contains(&status), "{path}: {status} {body}");
    }
}

/// One sample from the Prometheus text at `http://admin/metrics`, e.g.
/// `dev_agent_rpc_total{method="FetchJWTSVID"}`; 0 when the series is absent (counters not yet
/// incremented). Panics if the endpoint does not answer 200.
pub fn scrape(admin: SocketAddr, series: &str) -> f64 {
    let (status, body) = http(admin, "GET", "/metrics").expect("admin /metrics");
    assert_eq!(status, 200, "{admin}/metrics");
    body.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A dev agent for `spiffe_id` whose JWT-SVIDs carry an issuer served by its own OIDC
/// discovery on a free port (what Entra ID, Google STS and AWS read); returns it and the issuer.
pub fn agent_with_oidc(dir: &Path, spiffe_id: &str) -> (DevAgent, String) {
    let oidc = free_port();
    let issuer = format!("http://127.0.0.1:{oidc}");
    let agent = DevAgent::start(
        dir,
        &[
            "--spiffe-id",
            spiffe_id,
            "--jwt-ttl",
            "5m",
            "--oidc-listen",
            &format!("127.0.0.1:{oidc}"),
            "--jwt-issuer",
            &issuer,
        ],
    );
    (agent, issuer)
}

/// Whether a test starts the agent before the sidecar or after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentStart {
    /// The agent serves before the sidecar starts.
    First,
    /// The agent is down when the sidecar starts (started again with [`DevAgent::restart`]).
    Late,
}

static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held from picking ports until the processes have bound them: tests run in parallel, and a
/// port picked but not yet bound could be handed to another test's process meanwhile.
pub fn lock_ports() -> std::sync::MutexGuard<'static, ()> {
    PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A bad-settings case: arguments, environment (the rest of it is cleared), and what stderr
/// must say.
pub type BadSettings<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// Runs the workspace binary `name` for each case: it must exit 2 naming the setting.
pub fn assert_exit_2(name: &str, cases: &[BadSettings<'_>]) {
    for (args, env, want) in cases {
        let mut cmd = Command::new(bin(name));
        cmd.env_clear().args(*args).envs(env.iter().copied());
        let out = output(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// A minimal HTTP/1.1 request on loopback: `(status, body)`; `None` if the connection fails.
/// [`envoy::request`] sends headers and returns them too.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    envoy::request(addr, method, path, &[]).map(|r| (r.status, r.body))
}

/// Runs a command to completion.
pub fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}
