//! `sluice`, the admin CLI, as a library: [`Cli`] is the command line (clap derive),
//! [`run`] is the whole program, [`run_with`] runs it on given arguments and I/O so
//! tests can drive it.
//!
//! - `cmd/`: one module per command group (`topic`, `produce`, `consume`, `group`,
//!   `cluster`, `perf`);
//! - [`output`]: tables, JSON and record formats;
//! - [`args`]: value parsers (timestamps, durations, `key=value`).
//!
//! Errors are `anyhow` here (and only here): every failure prints `error: ...` to
//! stderr and exits with status 1; usage errors exit with clap's status 2.

pub mod args;
pub mod cmd;
pub mod output;

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sluice_client::{ClientConfig, Connection};

pub use output::OutputFormat;

/// Sluice admin CLI: manage topics, produce and consume records, inspect the cluster.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Brokers to bootstrap from, comma-separated host:port.
    #[arg(
        long,
        global = true,
        env = "SLUICE_BOOTSTRAP",
        default_value = "127.0.0.1:9700",
        value_delimiter = ',',
        value_name = "ADDRS"
    )]
    pub bootstrap: Vec<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// How long one request may take, e.g. 500ms, 10s.
    #[arg(long, global = true, default_value = "30s", value_parser = args::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(cmd::topic::TopicCommand),
    /// Produce records read from stdin, one per line.
    Produce(cmd::produce::ProduceArgs),
    /// Print the records of a topic.
    Consume(cmd::consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(cmd::group::GroupCommand),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCommand),
    /// Benchmark producing, consuming and end-to-end latency.
    #[command(subcommand)]
    Perf(cmd::perf::PerfCommand),
}

/// Where a command reads and writes.
pub struct Io {
    pub stdin: Box<dyn BufRead + Send>,
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

impl Io {
    /// The process's standard streams.
    pub fn std() -> Self {
        Self {
            stdin: Box::new(std::io::BufReader::with_capacity(1 << 16, std::io::stdin())),
            stdout: Box::new(std::io::BufWriter::with_capacity(
                1 << 16,
                std::io::stdout(),
            )),
            stderr: Box::new(std::io::stderr()),
        }
    }
}

/// Runs the CLI on the process's arguments and standard streams.
pub fn run() -> ExitCode {
    run_with(std::env::args_os(), Io::std())
}

/// Runs the CLI on `args` (including the program name) and `io`.
pub fn run_with<I, T>(args: I, mut io: Io) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let out = if e.use_stderr() {
                &mut io.stderr
            } else {
                &mut io.stdout
            };
            let mut text = e.render().to_string();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(execute(cli, &mut io));
    let _ = io.stdout.flush();
    // Do not wait for background work (e.g. a stdin reader blocked on a terminal).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e:#}");
            let _ = io.stderr.flush();
            ExitCode::FAILURE
        }
    }
}

/// `sluice ... | head` closing the pipe early is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs a parsed command.
pub async fn execute(cli: Cli, io: &mut Io) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Topic(c) => cmd::topic::run(c, &global, io).await,
        Command::Produce(a) => cmd::produce::run(a, &global, io).await,
        Command::Consume(a) => cmd::consume::run(a, &global, io).await,
        Command::Group(c) => cmd::group::run(c, &global, io).await,
        Command::Cluster(c) => cmd::cluster::run(c, &global, io).await,
        Command::Perf(c) => cmd::perf::run(c, &global, io).await,
    }
}

impl GlobalArgs {
    /// The client configuration these options describe.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let config = ClientConfig {
            request_timeout: self.timeout,
            connect_timeout: self.timeout.min(Duration::from_secs(10)),
            max_retries: 5,
            ..ClientConfig::new(
                self.bootstrap
                    .iter()
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty()),
            )
        };
        config.validate().context("bad --bootstrap")?;
        Ok(config)
    }

    /// Connects to the cluster.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let config = self.client_config()?;
        let list = config.bootstrap.join(",");
        Connection::connect(config).await.with_context(|| {
            format!("cannot reach a Sluice broker at {list} (set --bootstrap or SLUICE_BOOTSTRAP)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use cmd::cluster::ClusterCommand;
    use cmd::topic::TopicCommand;
    use sluice_client::{Acks, Compression};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_have_defaults_and_go_anywhere() {
        let cli = parse(&["topic", "list"]).unwrap();
        // Unless the environment sets SLUICE_BOOTSTRAP.
        if std::env::var_os("SLUICE_BOOTSTRAP").is_none() {
            assert_eq!(cli.global.bootstrap, ["127.0.0.1:9700"]);
        }
        assert_eq!(cli.global.output, OutputFormat::Table);
        assert_eq!(cli.global.timeout, Duration::from_secs(30));

        for args in [
            &[
                "--bootstrap",
                "a:1,b:2",
                "--output",
                "json",
                "topic",
                "list",
            ][..],
            &[
                "topic",
                "list",
                "--bootstrap",
                "a:1,b:2",
                "--output",
                "json",
            ][..],
            &["topic", "--bootstrap=a:1,b:2", "list", "--output=json"][..],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.global.bootstrap, ["a:1", "b:2"], "{args:?}");
            assert_eq!(cli.global.output, OutputFormat::Json, "{args:?}");
        }
        assert!(parse(&["--output", "yaml", "topic", "list"]).is_err());
        assert!(parse(&["--timeout", "5", "topic", "list"]).is_err());
        assert_eq!(
            parse(&["--timeout", "500ms", "cluster", "info"])
                .unwrap()
                .global
                .timeout,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn topic_commands_parse() {
        let cli = parse(&[
            "topic",
            "create",
            "orders",
            "--partitions",
            "12",
            "--replication-factor",
            "3",
            "--config",
            "retention.ms=1000",
            "--config",
            "cleanup.policy=compact",
        ])
        .unwrap();
        let Command::Topic(TopicCommand::Create(c)) = cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(
            (c.name.as_str(), c.partitions, c.replication_factor),
            ("orders", 12, Some(3))
        );
        assert_eq!(
            c.configs,
            [
                ("retention.ms".to_owned(), "1000".to_owned()),
                ("cleanup.policy".to_owned(), "compact".to_owned())
            ]
        );

        assert!(
            parse(&["topic", "create", "t"]).is_err(),
            "--partitions is required"
        );
        assert!(parse(&["topic", "create", "t", "--partitions", "0"]).is_err());
        assert!(parse(&["topic", "create", "t", "--partitions", "-1"]).is_err());
        assert!(parse(&["topic", "create", "t", "-p", "1", "--config", "novalue"]).is_err());

        let cli = parse(&["topic", "alter", "orders", "--partitions", "24"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Topic(TopicCommand::Alter(ref a)) if a.name == "orders" && a.partitions == 24
        ));
        assert!(matches!(
            parse(&["topic", "describe", "orders"]).unwrap().command,
            Command::Topic(TopicCommand::Describe { ref name }) if name == "orders"
        ));
        assert!(matches!(
            parse(&["topic", "delete", "orders"]).unwrap().command,
            Command::Topic(TopicCommand::Delete { ref name }) if name == "orders"
        ));
        assert!(parse(&["topic", "describe"]).is_err());
        assert!(matches!(
            parse(&["cluster", "info"]).unwrap().command,
            Command::Cluster(ClusterCommand::Info)
        ));
    }

    #[test]
    fn produce_parses() {
        let cli = parse(&["produce", "orders"]).unwrap();
        let Command::Produce(p) = cli.command else {
            panic!()
        };
        assert_eq!(p.topic, "orders");
        assert_eq!(
            (p.acks, p.compression, p.partition),
            (Acks::All, Compression::None, None)
        );
        assert_eq!(p.key_separator, None);

        let cli = parse(&[
            "produce",
            "orders",
            "--key-separator",
            ":",
            "--acks",
            "leader",
            "--partition",
            "3",
            "--compression",
            "zstd",
        ])
        .unwrap();
        let Command::Produce(p) = cli.command else {
            panic!()
        };
        assert_eq!(p.key_separator.as_deref(), Some(":"));
        assert_eq!(
            (p.acks, p.compression, p.partition),
            (Acks::Leader, Compression::Zstd, Some(3))
        );
        assert!(parse(&["produce", "t", "--acks", "most"]).is_err());
        assert!(parse(&["produce", "t", "--compression", "gzip"]).is_err());
        assert!(parse(&["produce", "t", "--key-separator", ""]).is_err());
        assert!(parse(&["produce"]).is_err());
    }

    #[test]
    fn consume_parses() {
        let cli = parse(&["consume", "orders"]).unwrap();
        let Command::Consume(c) = cli.command else {
            panic!()
        };
        assert!(!c.from_beginning && !c.follow);
        assert_eq!(
            (c.offset, c.partition, c.from_time, c.max_records),
            (None, None, None, None)
        );

        let cli = parse(&[
            "consume",
            "orders",
            "--partition",
            "2",
            "--offset",
            "100",
            "--max-records",
            "5",
            "--follow",
            "--format",
            "{offset} {key} {value}",
        ])
        .unwrap();
        let Command::Consume(c) = cli.command else {
            panic!()
        };
        assert_eq!(
            (c.partition, c.offset, c.max_records, c.follow),
            (Some(2), Some(100), Some(5), true)
        );
        assert!(c.format.is_some());

        let cli = parse(&["consume", "t", "--from-time", "2023-11-14T22:13:20Z"]).unwrap();
        let Command::Consume(c) = cli.command else {
            panic!()
        };
        assert_eq!(c.from_time, Some(1_700_000_000_000));
        let cli = parse(&["consume", "t", "--from-time", "1700000000000"]).unwrap();
        assert!(
            matches!(cli.command, Command::Consume(ref c) if c.from_time == Some(1_700_000_000_000))
        );

        // Start positions exclude each other.
        assert!(parse(&["consume", "t", "--from-beginning", "--offset", "1"]).is_err());
        assert!(parse(&["consume", "t", "--from-beginning", "--from-time", "0"]).is_err());
        assert!(parse(&["consume", "t", "--offset", "1", "--from-time", "0"]).is_err());
        assert!(parse(&["consume", "t", "--from-time", "tuesday"]).is_err());
        assert!(parse(&["consume", "t", "--format", "{nope}"]).is_err());
        assert!(parse(&["consume", "t", "--max-records", "0"]).is_err());
    }

    #[test]
    fn group_commands_parse() {
        use cmd::group::GroupCommand;
        assert!(matches!(
            parse(&["group", "list"]).unwrap().command,
            Command::Group(GroupCommand::List)
        ));
        assert!(matches!(
            parse(&["group", "describe", "billing"]).unwrap().command,
            Command::Group(GroupCommand::Describe { ref group }) if group == "billing"
        ));
        let cli = parse(&[
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--shift-by",
            "-5",
            "--force",
        ])
        .unwrap();
        let Command::Group(GroupCommand::ResetOffsets(r)) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(
            (r.shift_by, r.force, r.topic.as_str()),
            (Some(-5), true, "orders")
        );
        // Exactly one target.
        assert!(parse(&["group", "reset-offsets", "g", "--topic", "t"]).is_err());
        assert!(
            parse(&[
                "group",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-earliest",
                "--to-latest"
            ])
            .is_err()
        );
        assert!(parse(&["group", "reset-offsets", "g", "--to-earliest"]).is_err());
        let cli = parse(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "2023-11-14T22:13:20Z",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Group(GroupCommand::ResetOffsets(ref r)) if r.to_datetime == Some(1_700_000_000_000)
        ));
        assert!(parse(&["group", "delete"]).is_err());
    }

    #[test]
    fn consume_in_a_group_parses_and_excludes_explicit_positions() {
        let cli = parse(&["consume", "orders", "--group", "billing", "--follow"]).unwrap();
        let Command::Consume(c) = cli.command else {
            panic!()
        };
        assert_eq!(c.group.as_deref(), Some("billing"));
        assert_eq!(c.commit_interval, Duration::from_secs(5));
        for bad in [
            &["consume", "t", "--group", "g", "--offset", "3"][..],
            &["consume", "t", "--group", "g", "--partition", "1"][..],
            &["consume", "t", "--group", "g", "--from-time", "0"][..],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let cli = parse(&["topic", "list", "--internal"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Topic(TopicCommand::List { internal: true })
        ));
    }

    /// A writer tests can read back.
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

    fn run_captured(args: &[&str]) -> (ExitCode, String, String) {
        let (out, err) = (Buf::default(), Buf::default());
        let io = Io {
            stdin: Box::new(std::io::Cursor::new(Vec::new())),
            stdout: Box::new(out.clone()),
            stderr: Box::new(err.clone()),
        };
        let code = run_with(std::iter::once("sluice").chain(args.iter().copied()), io);
        (code, out.text(), err.text())
    }

    #[test]
    fn usage_errors_exit_2_and_help_exits_0() {
        let (code, _, err) = run_captured(&["topic", "create", "t"]);
        assert_eq!(code, ExitCode::from(2));
        assert!(err.contains("--partitions"), "{err}");
        let (code, out, _) = run_captured(&["--help"]);
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(out.contains("topic") && out.contains("consume"), "{out}");
    }

    #[test]
    fn an_unreachable_broker_is_a_clear_error() {
        let (code, out, err) = run_captured(&["--bootstrap", "127.0.0.1:1", "topic", "list"]);
        assert_eq!(code, ExitCode::FAILURE);
        assert!(out.is_empty());
        assert!(
            err.starts_with("error: cannot reach a Sluice broker at 127.0.0.1:1"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_bootstrap_address_is_a_clear_error() {
        let (code, _, err) = run_captured(&["--bootstrap", "nohost", "cluster", "info"]);
        assert_eq!(code, ExitCode::FAILURE);
        assert!(
            err.contains("bad --bootstrap") && err.contains("nohost"),
            "{err}"
        );
    }
}
