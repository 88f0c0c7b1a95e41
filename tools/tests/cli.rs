//! The `sluice` CLI end to end against the in-process mock broker that the client's
//! tests use (`client/tests/support/mock.rs`): real argument parsing, real gRPC,
//! captured stdin/stdout/stderr and exit codes.

#[path = "../../client/tests/support/mock.rs"]
mod mock;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use mock::Cluster;
use sluice_tools::{Io, run_with};

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Env {
    cluster: Cluster,
    addr: String,
    // Runs the mock broker for as long as the test.
    _runtime: tokio::runtime::Runtime,
}

impl Env {
    fn start() -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = Cluster::new();
        let addr = runtime.block_on(cluster.start_broker(1));
        Self {
            cluster,
            addr,
            _runtime: runtime,
        }
    }

    /// Runs `sluice --bootstrap ADDR ARGS...` with `stdin`; returns (code, stdout, stderr).
    fn sluice(&self, args: &[&str], stdin: &str) -> (ExitCode, String, String) {
        let (out, err) = (Buf::default(), Buf::default());
        let io = Io {
            stdin: Box::new(std::io::Cursor::new(stdin.as_bytes().to_vec())),
            stdout: Box::new(out.clone()),
            stderr: Box::new(err.clone()),
        };
        let argv = ["sluice", "--bootstrap", &self.addr, "--timeout", "5s"]
            .into_iter()
            .chain(args.iter().copied());
        let code = run_with(argv, io);
        (code, out.text(), err.text())
    }

    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let (code, out, err) = self.sluice(args, stdin);
        assert_eq!(code, ExitCode::SUCCESS, "{args:?}: {err}");
        out
    }

    fn fails(&self, args: &[&str], stdin: &str) -> String {
        let (code, out, err) = self.sluice(args, stdin);
        assert_eq!(code, ExitCode::FAILURE, "{args:?} should fail: {out}");
        assert!(err.starts_with("error: "), "{err}");
        err
    }
}

#[test]
fn topic_lifecycle() {
    let env = Env::start();
    let out = env.ok(&["topic", "create", "orders", "--partitions", "3"], "");
    assert_eq!(
        out,
        "Created topic 'orders' with 3 partition(s) and the default replication factor.\n"
    );
    let err = env.fails(&["topic", "create", "orders", "--partitions", "3"], "");
    assert!(err.contains("already exists"), "{err}");

    assert_eq!(
        env.ok(&["topic", "list"], ""),
        "NAME    PARTITIONS  REPLICATION-FACTOR\norders  3           1\n"
    );
    let out = env.ok(&["topic", "describe", "orders"], "");
    assert!(out.starts_with("Topic: orders  Partitions: 3"), "{out}");
    assert!(out.contains("PARTITION  LEADER"), "{out}");

    env.ok(&["topic", "alter", "orders", "--partitions", "5"], "");
    let json = env.ok(&["topic", "describe", "orders", "--output", "json"], "");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["partitions"].as_array().unwrap().len(), 5);
    assert_eq!(v["partitions"][4]["leader"], 1);

    let err = env.fails(&["topic", "describe", "nope"], "");
    assert!(err.contains("unknown topic"), "{err}");
    env.ok(&["topic", "delete", "orders"], "");
    let err = env.fails(&["topic", "delete", "orders"], "");
    assert!(err.contains("cannot delete topic 'orders'"), "{err}");
}

#[test]
fn produce_then_consume() {
    let env = Env::start();
    env.ok(&["topic", "create", "t", "--partitions", "2"], "");
    let input: String = (0..20).map(|i| format!("key-{i}:value {i}\n")).collect();
    let (code, out, err) = env.sluice(&["produce", "t", "--key-separator", ":"], &input);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.is_empty());
    assert!(err.starts_with("Produced 20 record(s)"), "{err}");
    let stored: usize = (0..2).map(|p| env.cluster.records("t", p).len()).sum();
    assert_eq!(stored, 20);

    // Default: every partition, from the beginning, stop at the end.
    let out = env.ok(&["consume", "t"], "");
    let mut values: Vec<&str> = out.lines().collect();
    values.sort_by_key(|v| v[6..].parse::<u32>().unwrap());
    let want: Vec<String> = (0..20).map(|i| format!("value {i}")).collect();
    assert_eq!(values, want);

    // One partition, a format, a start offset.
    let p0 = env.cluster.records("t", 0);
    let out = env.ok(
        &[
            "consume",
            "t",
            "--partition",
            "0",
            "--offset",
            "1",
            "--format",
            "{partition}\\t{offset}\\t{key}={value}",
        ],
        "",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), p0.len() - 1);
    let (_, key, value) = &p0[1];
    assert_eq!(
        lines[0],
        format!(
            "0\t1\t{}={}",
            String::from_utf8_lossy(key.as_ref().unwrap()),
            String::from_utf8_lossy(value.as_ref().unwrap())
        )
    );

    // JSON lines, limited.
    let out = env.ok(
        &["consume", "t", "--output", "json", "--max-records", "3"],
        "",
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["key"].as_str().unwrap().starts_with("key-"));

    // Caught up already: prints nothing and stops.
    let out = env.ok(&["consume", "t", "--offset", "1000000"], "");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn bad_input_fails_clearly() {
    let env = Env::start();
    let err = env.fails(&["consume", "nope"], "");
    assert!(
        err.contains("unknown topic") && err.contains("nope"),
        "{err}"
    );
    let err = env.fails(&["produce", "nope"], "x\n");
    assert!(err.contains("unknown topic"), "{err}");

    env.ok(&["topic", "create", "t", "--partitions", "1"], "");
    let err = env.fails(&["consume", "t", "--partition", "3"], "");
    assert!(err.contains("--partition 3 does not exist"), "{err}");
    let err = env.fails(&["produce", "t", "--partition", "1"], "");
    assert!(err.contains("--partition 1 does not exist"), "{err}");

    let (code, _, err) = env.sluice(&["produce", "t", "--key-separator", "="], "a=1\nb2\nc=3\n");
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        err.contains("line 2") && err.contains("key separator"),
        "{err}"
    );
    assert_eq!(
        env.cluster.records("t", 0).len(),
        1,
        "the lines before the bad one were sent"
    );

    let err = env.fails(
        &["consume", "t", "--format", "{value}", "--output", "json"],
        "",
    );
    assert!(err.contains("cannot be combined"), "{err}");
}

#[test]
fn cluster_info_lists_brokers() {
    let env = Env::start();
    let out = env.ok(&["cluster", "info"], "");
    assert_eq!(
        out,
        format!(
            "ID  ADDRESS{}  ROLE\n1   {}  controller\n",
            " ".repeat(env.addr.len() - "ADDRESS".len()),
            env.addr
        )
    );
    let json = env.ok(&["cluster", "info", "--output", "json"], "");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["controller"], 1);
    assert_eq!(v["brokers"][0]["addr"], env.addr.as_str());
}
