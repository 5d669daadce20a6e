//! `wanmux-bench` command line: a thin clap front end over the `wanmux_bench` library.
//!
//! Exit status: 0 on success, 1 on an error, 2 on a usage error, 3 when data failed
//! verification.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wanmux_bench::{BenchError, BulkOptions, Direction, Limit, RecoveryError, RrOptions};

#[derive(Debug, Parser)]
#[command(
    name = "wanmux-bench",
    version,
    about = "iperf-style throughput and latency tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve bench clients (every mode) until stopped. Prints `listening on ADDR` first, so
    /// port 0 can be used.
    Server {
        /// Address to listen on, e.g. 127.0.0.1:5201 or [::]:5201.
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
    /// Bulk throughput test against a bench server, directly or through the tunnel.
    Client(ClientArgs),
    /// Request/response latency test over one connection.
    Rr(RrArgs),
    /// The whole tunnel on this machine with an embedded default, no config: a wanmux server,
    /// a wanmux client and a bench server in this process on loopback; runs a throughput and
    /// a latency test through the tunnel and directly, and prints both.
    Demo(DemoArgs),
    /// What link deaths cost a transfer: a wanmux client and server and a bench server in this
    /// process, the links through a relay that can limit rate and add delay. Per direction:
    /// no faults, one link reset, a link reset every second; every byte verified.
    Recovery(RecoveryArgs),
}

#[derive(Debug, Args)]
struct RecoveryArgs {
    /// Links between the client and the server.
    #[arg(long, value_name = "N", default_value_t = 8)]
    links: u16,
    /// Measured seconds per phase, after the warm-up.
    #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = 5.0)]
    time: f64,
    /// Seconds of transfer before measuring and before the first kill (multiple of 0.1).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Seconds between link kills in the third phase (multiple of 0.1).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    kill_every: f64,
    /// Parallel connections of each transfer.
    #[arg(
        short = 'P',
        long = "parallel",
        value_name = "STREAMS",
        default_value_t = 1
    )]
    parallel: usize,
    /// Relay bottleneck rate per direction, shared by all links, in Mbit/s (default:
    /// unlimited).
    #[arg(long, value_name = "MBIT")]
    rate: Option<f64>,
    /// One-way delay the relay adds, in milliseconds (the RTT is twice this).
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    delay: f64,
    /// Most backlog the relay's bottleneck holds, in milliseconds at its rate.
    #[arg(long, value_name = "MS", default_value_t = 20.0)]
    queue: f64,
    /// Which directions to measure.
    #[arg(long, value_enum, default_value_t = Directions::Both)]
    direction: Directions,
    /// Repeat everything this many times and report medians and ranges.
    #[arg(long, value_name = "N", default_value_t = 1)]
    runs: usize,
    /// Print only one JSON object with the results.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Directions {
    Both,
    Upload,
    Download,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Server address, e.g. 127.0.0.1:5201 or a tunnel's mapped port.
    #[arg(long, value_name = "ADDR")]
    connect: String,
    /// Seconds to send (fractions allowed).
    #[arg(
        short = 't',
        long = "time",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    time: f64,
    /// Send exactly N bytes in total instead of for a duration (suffixes K, M, G = 1024^n).
    #[arg(long, value_name = "N", value_parser = parse_size, conflicts_with = "time")]
    bytes: Option<u64>,
    /// Parallel streams (connections).
    #[arg(
        short = 'P',
        long = "parallel",
        value_name = "STREAMS",
        default_value_t = 1
    )]
    parallel: usize,
    /// Reverse: the server sends, the client receives.
    #[arg(short = 'R', long)]
    reverse: bool,
    /// Both ways at once: an upload and a download, each on `-P` connections of its own.
    #[arg(long, conflicts_with = "reverse")]
    bidir: bool,
    /// Print only one JSON object with the results.
    #[arg(long)]
    json: bool,
    /// Largest record payload in bytes (at most 128K).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "128K")]
    len: u64,
    /// Seconds between progress lines.
    #[arg(short = 'i', long, value_name = "SECS", default_value_t = 1.0)]
    interval: f64,
    /// Fail a stream that moves no data for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Seconds per throughput test.
    #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = 3.0)]
    time: f64,
    /// Links between the client and the server (per node).
    #[arg(long, value_name = "N", default_value_t = 4)]
    links: u16,
    /// Server nodes: above 1, a cluster whose nodes relay to each connection's owner, every
    /// connection striped over all of them.
    #[arg(long, value_name = "N", default_value_t = 1)]
    nodes: u16,
    /// Parallel streams in the throughput tests.
    #[arg(
        short = 'P',
        long = "parallel",
        value_name = "STREAMS",
        default_value_t = 1
    )]
    parallel: usize,
    /// Print only one JSON object with the results.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RrArgs {
    /// Server address, e.g. 127.0.0.1:5201 or a tunnel's mapped port.
    #[arg(long, value_name = "ADDR")]
    connect: String,
    /// Round trips.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10_000)]
    count: u64,
    /// Message size in bytes, each way (suffixes K, M).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64")]
    size: u64,
    /// Print only one JSON object with the results.
    #[arg(long)]
    json: bool,
    /// Fail if no round trip completes for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One connection runs best on one thread, like iperf3: no cross-thread wakeups and no task
    // migration between cores. Parallel streams and the server need every core.
    let single = match &cli.command {
        Command::Client(a) => a.parallel == 1,
        Command::Rr(_) => true,
        Command::Server { .. } | Command::Demo(_) | Command::Recovery(_) => false,
    };
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wanmux-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors already include their cause in their message.
            eprintln!("wanmux-bench: error: {e}");
            let verify = e
                .downcast_ref::<BenchError>()
                .is_some_and(|e| e.is_verification_failure())
                || e.downcast_ref::<RecoveryError>()
                    .is_some_and(|e| e.is_verification_failure());
            ExitCode::from(if verify { 3 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server { listen } => server(&listen).await,
        Command::Client(args) => client(args).await,
        Command::Rr(args) => rr(args).await,
        Command::Demo(args) => demo(args).await,
        Command::Recovery(args) => recovery(args).await,
    }
}

async fn recovery(args: RecoveryArgs) -> anyhow::Result<()> {
    init_tracing("warn");
    let mut opts = wanmux_bench::RecoveryOptions::default();
    opts.links = args.links;
    opts.seconds = args.time;
    opts.warmup = args.warmup;
    opts.kill_every = args.kill_every;
    opts.streams = args.parallel;
    opts.rate_mbit = args.rate;
    opts.delay_ms = args.delay;
    opts.queue_ms = args.queue;
    opts.runs = args.runs;
    opts.directions = match args.direction {
        Directions::Both => vec![Direction::Upload, Direction::Download],
        Directions::Upload => vec![Direction::Upload],
        Directions::Download => vec![Direction::Download],
    };
    opts.validate()?;
    let json = args.json;
    let report = wanmux_bench::run_recovery(&opts, |line| {
        if !json {
            println!("{line}");
        }
    })
    .await?;
    // Compact: the report holds every 100 ms sample.
    print_report(&report, json, false)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // Everything runs on loopback here: the host checks, which judge a WAN path, say nothing useful.
    init_tracing("warn,wanmux::host=error");
    if !(args.time > 0.0 && args.time.is_finite()) {
        anyhow::bail!("--time must be a positive number of seconds");
    }
    if args.links == 0 || args.parallel == 0 {
        anyhow::bail!("--links and --parallel must be at least 1");
    }
    if !(1..=16).contains(&args.nodes) {
        anyhow::bail!("--nodes must be 1 to 16");
    }
    let opts = wanmux_bench::DemoOptions {
        seconds: args.time,
        links: args.links,
        nodes: args.nodes,
        streams: args.parallel,
        ..Default::default()
    };
    let json = args.json;
    let report = wanmux_bench::run_demo(&opts, |line| {
        if !json {
            println!("{line}");
        }
    })
    .await?;
    print_report(&report, json, true)
}

async fn server(listen: &str) -> anyhow::Result<()> {
    init_tracing("info");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    println!("listening on {}", listener.local_addr()?);
    wanmux_bench::serve(listener).await?;
    Ok(())
}

async fn client(args: ClientArgs) -> anyhow::Result<()> {
    let mut opts = BulkOptions::new(args.connect);
    opts.limit = match args.bytes {
        Some(n) => Limit::Bytes(n),
        None => Limit::Duration(seconds("--time", args.time, true)?),
    };
    opts.streams = args.parallel;
    opts.reverse = args.reverse;
    opts.record_size = usize::try_from(args.len).unwrap_or(usize::MAX);
    opts.interval = seconds("--interval", args.interval, false)?;
    opts.idle_timeout = seconds("--timeout", args.timeout, false)?;
    opts.validate()?;
    if args.bidir {
        return client_bidir(&opts, args.json).await;
    }
    if args.json {
        let report = wanmux_bench::run_bulk(&opts).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let what = match opts.limit {
            Limit::Bytes(n) => format!("{n} bytes"),
            Limit::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
        };
        println!(
            "{} {}, {} stream(s), {what}",
            if opts.reverse {
                "download from"
            } else {
                "upload to"
            },
            opts.connect,
            opts.streams,
        );
        let report = wanmux_bench::run_bulk_with_progress(&opts, |i| println!("{i}")).await?;
        println!("{report}");
    }
    Ok(())
}

/// `client --bidir`: progress lines marked `up` and `down`, then both reports.
async fn client_bidir(opts: &BulkOptions, json: bool) -> anyhow::Result<()> {
    if json {
        let report = wanmux_bench::run_bulk_bidir(opts, |_, _| {}).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "upload to and download from {}, {} stream(s) each way",
        opts.connect, opts.streams
    );
    let report = wanmux_bench::run_bulk_bidir(opts, |down, i| {
        println!("{} {i}", if down { "down" } else { "up  " })
    })
    .await?;
    println!("{report}");
    Ok(())
}

async fn rr(args: RrArgs) -> anyhow::Result<()> {
    let mut opts = RrOptions::new(args.connect);
    opts.count = args.count;
    opts.size = usize::try_from(args.size).unwrap_or(usize::MAX);
    opts.idle_timeout = seconds("--timeout", args.timeout, false)?;
    let report = wanmux_bench::run_rr(&opts).await?;
    print_report(&report, args.json, true)
}

/// Logs to stderr at `default` level unless `RUST_LOG` says otherwise.
fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Prints a report as text, or as one JSON object (`pretty` or on one line).
fn print_report<R>(report: &R, json: bool, pretty: bool) -> anyhow::Result<()>
where
    R: serde::Serialize + std::fmt::Display,
{
    if !json {
        println!("{report}");
    } else if pretty {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}

/// Checks a seconds option and turns it into a `Duration`.
fn seconds(name: &str, v: f64, zero_ok: bool) -> anyhow::Result<Duration> {
    if !v.is_finite() || v < 0.0 || (v == 0.0 && !zero_ok) || v > 1e9 {
        anyhow::bail!("{name} {v} is not a usable number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Parses `N`, `NK`, `NM`, `NG` (binary multiples).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}
