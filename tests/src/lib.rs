//! Helpers for integration tests that start real broker processes.
//!
//! [`BrokerProcess`] runs the real broker program (the `test-broker` binary of this
//! crate is `sluice-broker`'s `main`, built here so tests can find it) on 127.0.0.1
//! with a temporary data directory, and kills it when dropped, even when a test fails.
//! [`Cluster`] runs several; [`CliProcess`] runs the `sluice` CLI in the background.
//! [`client_config`], [`producer_config`], [`connect`] and [`create_topic`] are the
//! client side the cluster tests share.
//!
//! The fault-injection suite adds: [`proxy`] (a TCP proxy that cuts, stalls and delays
//! the traffic between two brokers), [`faults`] (a cluster whose brokers reach each
//! other only through such proxies, and seeded fault schedules), [`damage`] (torn and
//! garbled segment files), [`disk`] (a small tmpfs to fill), [`workload`] and
//! [`checker`] (producers recording what was acknowledged, and the verdict on what
//! the replicas hold), [`readers`] (a consumer group reading and committing along),
//! and [`inspect`] (asking each broker about its own replicas).

pub mod checker;
pub mod damage;
pub mod disk;
pub mod faults;
pub mod inspect;
pub mod proxy;
pub mod readers;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use sluice_client::{Admin, ClientConfig, ClientError, Connection, NewTopic, ProducerConfig};

/// How long a broker may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker process owned by a test.
pub struct BrokerProcess {
    child: Option<Child>,
    program: PathBuf,
    pub node_id: u64,
    /// `host:port` clients use.
    pub addr: String,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    paused: bool,
}

impl BrokerProcess {
    /// Starts a single-node broker on a free port with its data in `data_dir`.
    pub fn start(program: impl Into<PathBuf>, data_dir: &Path) -> Self {
        Self::start_with(program, data_dir, 1, "127.0.0.1:0", &[])
    }

    /// Starts a broker with explicit node id, listen address and extra flags.
    pub fn start_with(
        program: impl Into<PathBuf>,
        data_dir: &Path,
        node_id: u64,
        listen: &str,
        extra_args: &[&str],
    ) -> Self {
        let mut broker = Self {
            child: None,
            program: program.into(),
            node_id,
            addr: listen.to_string(),
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            paused: false,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("open broker log file");
        let mut child = Command::new(&self.program)
            .arg("--node-id")
            .arg(self.node_id.to_string())
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start broker process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("sluice-broker listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                self.addr = addr;
                self.child = Some(child);
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                // Stdout closed early means the process ended: say how, not "slow".
                let how = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("did not start within {START_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited while starting ({status:?})")
                    }
                };
                let log = std::fs::read_to_string(self.data_dir.with_extension("log"))
                    .unwrap_or_default();
                panic!("broker {} {how}; its log:\n{log}", self.node_id);
            }
        }
    }

    /// SIGKILL: no shutdown, no flush; what was acknowledged must survive.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP: the process freezes mid-flight, sockets open, timers stopped, as a
    /// long GC pause or a stalled VM would; [`BrokerProcess::resume`] thaws it.
    pub fn pause(&mut self) {
        if !self.paused && self.signal(libc::SIGSTOP) {
            self.paused = true;
        }
    }

    /// SIGCONT after [`BrokerProcess::pause`].
    pub fn resume(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
    }

    /// The broker's anonymous resident memory (heap, stacks) in KiB, read from
    /// `/proc`; `None` when it is not running.
    pub fn anon_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn signal(&self, signal: libc::c_int) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        // SAFETY: plain kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(child.id() as i32, signal) == 0 }
    }

    /// Adds flags for every later start of this broker.
    pub fn add_args<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        self.resume();
        self.signal(libc::SIGTERM);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same address and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The broker's log output so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago, for brokers that must know peers' addresses
/// before they start.
///
/// Picked below Linux's ephemeral range (32768-60999): a port the kernel handed out
/// for `127.0.0.1:0` could be taken by any outgoing connection before the broker
/// bound it, and a CI run failed on exactly that ("Address already in use"). Each
/// port is handed out once per process, and each process starts at its own offset.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id() % 120 * 100));
    for _ in 0..SPAN {
        let port = (FIRST + next.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// A cluster of broker processes on pre-picked free ports, each with its own data
/// directory under `root`, all listed in every broker's `--peers`. Every process is
/// killed when the cluster is dropped.
pub struct Cluster {
    pub brokers: Vec<BrokerProcess>,
}

impl Cluster {
    /// Starts `n` brokers (ids 1..=n) at once, so the controller can elect while
    /// they come up, and returns when every one is listening.
    pub fn start(program: impl Into<PathBuf>, root: &Path, n: usize) -> Self {
        let mut cluster = Self::new(program, root, n);
        cluster.start_stopped();
        cluster
    }

    /// `n` brokers (ids 1..=n) configured as one cluster, none started yet: start
    /// them, or some of them, with [`Cluster::start_stopped`] / [`BrokerProcess::restart`].
    pub fn new(program: impl Into<PathBuf>, root: &Path, n: usize) -> Self {
        let program = program.into();
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| BrokerProcess {
                child: None,
                program: program.clone(),
                node_id: i as u64 + 1,
                addr: addr.clone(),
                data_dir: root.join(format!("b{}", i + 1)),
                extra_args: vec!["--peers".into(), peers.clone()],
                paused: false,
            })
            .collect();
        Self { brokers }
    }

    /// Adds `args` to every broker's command line (for brokers not started yet, or
    /// at their next restart).
    pub fn with_args(mut self, args: &[&str]) -> Self {
        for b in &mut self.brokers {
            b.extra_args.extend(args.iter().map(|a| a.to_string()));
        }
        self
    }

    /// Every broker's client address, for a bootstrap list.
    pub fn addrs(&self) -> Vec<String> {
        self.brokers.iter().map(|b| b.addr.clone()).collect()
    }

    /// The broker with id `id`.
    pub fn broker(&mut self, id: u64) -> &mut BrokerProcess {
        self.brokers
            .iter_mut()
            .find(|b| b.node_id == id)
            .expect("no broker with that id")
    }

    /// Restarts every broker that is not running, all at once.
    pub fn start_stopped(&mut self) {
        let ids: Vec<u64> = self.brokers.iter().map(|b| b.node_id).collect();
        self.start_some(&ids);
    }

    /// Starts those of the brokers `ids` that are not running, all at once, and
    /// returns when each is listening.
    pub fn start_some(&mut self, ids: &[u64]) {
        std::thread::scope(|s| {
            for b in self.brokers.iter_mut() {
                if ids.contains(&b.node_id) && !b.is_running() {
                    s.spawn(move || b.spawn());
                }
            }
        });
    }

    /// Every broker's log, for assertion messages.
    pub fn logs(&self) -> String {
        self.brokers
            .iter()
            .map(|b| format!("===== broker {} =====\n{}", b.node_id, b.log()))
            .collect()
    }
}

/// A `sluice` CLI process (the `test-sluice` binary) whose stdout and stderr lines
/// are collected as they come, killed when dropped.
pub struct CliProcess {
    child: Option<Child>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CliProcess {
    /// Runs `program` with `args` in the background.
    pub fn spawn(program: impl AsRef<Path>, args: &[&str]) -> Self {
        let mut child = Command::new(program.as_ref())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the sluice CLI");
        let collect = |stream: Box<dyn std::io::Read + Send>| {
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = collect(Box::new(child.stderr.take().expect("piped stderr")));
        Self {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// The stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client configuration for brokers at `bootstrap`: short timeouts, many retries, so
/// that a test rides through failovers without waiting long on a dead broker.
pub fn client_config(bootstrap: Vec<String>) -> ClientConfig {
    let mut c = ClientConfig::new(bootstrap);
    c.request_timeout = Duration::from_secs(5);
    c.connect_timeout = Duration::from_secs(1);
    c.retry_backoff_max = Duration::from_millis(500);
    c.max_retries = 40;
    c
}

/// A producer configuration to match [`client_config`].
pub fn producer_config() -> ProducerConfig {
    ProducerConfig {
        request_timeout: Duration::from_secs(5),
        delivery_timeout: Duration::from_secs(40),
        retry_backoff: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(250),
        ..ProducerConfig::default()
    }
}

/// A connection to `cluster`.
pub async fn connect(cluster: &Cluster) -> Connection {
    Connection::connect(client_config(cluster.addrs()))
        .await
        .expect("connect")
}

/// Creates a topic with replication factor 3. A create whose reply was lost to a
/// timeout is retried by the client and then finds its topic: that is success too.
pub async fn create_topic(conn: &Connection, name: &str, partitions: u32) {
    let created = Admin::new(conn.clone())
        .create_topic(NewTopic::new(name, partitions).replication_factor(3))
        .await;
    if let Err(e) = created
        && !matches!(e, ClientError::TopicAlreadyExists { .. })
    {
        panic!("create topic {name}: {e}");
    }
}
