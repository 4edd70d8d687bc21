//! banter-bench: a load generator for Socket.IO chat servers that speak the classic chat contract
//! (`add user`, `login`, `new message`, `user joined`, `user left`), so that it drives Banter and
//! the Node reference alike.
//!
//! Each scenario prints a progress line on stderr once a second, a summary for humans on stderr,
//! and exactly one JSON line on stdout. The exit status is 1 when the run failed its correctness
//! condition (a client failed, a message was lost or refused).

mod client;
mod fleet;
mod floor;
mod proto;
mod scenarios;
mod stamped;
mod stats;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::Transport;
use crate::scenarios::FanoutParams;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Flags every scenario takes.
#[derive(Args, Clone)]
pub struct Common {
    /// Server base URL(s), comma-separated (clients are spread round-robin): http://127.0.0.1:3000
    #[arg(long, value_delimiter = ',', required = true)]
    url: Vec<String>,
    /// Server process id(s), comma-separated: RSS and CPU are read from /proc.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    #[arg(long, value_enum, default_value = "websocket")]
    transport: Transport,
    /// Copied into the JSON result (e.g. which server this was).
    #[arg(long, default_value = "")]
    label: String,
    /// How many clients may be connecting and joining at the same time.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Give up connecting/joining after this many seconds.
    #[arg(long, default_value_t = 55)]
    timeout: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// N clients connect and `add user`, then stay idle: connect+join time and server RSS per
    /// connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Connect to the namespace only, without `add user` (each join costs a `user joined`
        /// to everyone: N joins are N² packets).
        #[arg(long)]
        no_join: bool,
    },
    /// Receivers and senders join; senders send timestamped messages at a fixed total rate;
    /// delivery rate, latency, losses and server CPU.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Messages per second, all senders together (each reaches every other socket).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds to wait after sending for the last deliveries.
        #[arg(long, default_value_t = 10.0)]
        drain: f64,
    },
    /// N clients connect and `add user` at once (as after a restart): time until all are logged
    /// in and until a probe message sent then has reached everyone.
    Storm {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 2000)]
        clients: usize,
    },
    /// No server: the CPU a delivery costs at the least on this machine, one write() of a
    /// message-sized WebSocket frame to each of N loopback sockets at the offered rate, read by
    /// another process.
    Floor {
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
        /// Deliveries per second, all sockets together.
        #[arg(long, default_value_t = 25_000.0)]
        rate: f64,
        /// Seconds of writing.
        #[arg(long, default_value_t = 8.0)]
        duration: f64,
        /// Frames per write (1: one write per delivery).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Bytes of each frame's payload (a fan-out message frame is about 108).
        #[arg(long, default_value_t = 108)]
        frame_bytes: usize,
        /// Copied into the JSON result.
        #[arg(long, default_value = "floor")]
        label: String,
        /// Run the reader on these CPUs (a `taskset -c` list, e.g. `1`), so that writer and
        /// reader each have a core, as a server and its remote clients do.
        #[arg(long)]
        reader_cpus: Option<String>,
    },
    /// The reading side of `floor` (started by it).
    #[command(hide = true)]
    FloorReader {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        sockets: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Pinned to one CPU (`taskset -c 1`, as `bench/compare --pin` runs it), a second worker
    // thread could not run anyway, and tokio's multi-threaded scheduler costs more per wake-up
    // (atomics, waking idle workers) than its current-thread one: the bench would read each
    // delivery more slowly than it must, and that shows in the latency it measures.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let runtime = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: no tokio runtime: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
    let outcome = match &cli.scenario {
        Scenario::Idle {
            common,
            clients,
            no_join,
        } => scenarios::idle(common, *clients, !no_join).await,
        Scenario::Fanout {
            common,
            receivers,
            senders,
            rate,
            duration,
            drain,
        } => {
            let params = FanoutParams {
                receivers: *receivers,
                senders: *senders,
                rate: *rate,
                duration: Duration::from_secs_f64(*duration),
                drain: Duration::from_secs_f64(*drain),
            };
            scenarios::fanout(common, &params).await
        }
        Scenario::Storm { common, clients } => scenarios::storm(common, *clients).await,
        Scenario::Floor {
            sockets,
            rate,
            duration,
            batch,
            frame_bytes,
            label: _,
            reader_cpus,
        } => {
            let params = floor::FloorParams {
                sockets: *sockets,
                rate: *rate,
                duration: Duration::from_secs_f64(*duration),
                batch: *batch,
                frame_bytes: *frame_bytes,
                reader_cpus: reader_cpus.clone(),
            };
            // The floor's writer is synchronous: it may hold the runtime's only thread, and on
            // a multi-threaded one it tells tokio so.
            match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(|| floor::floor(&params))
                }
                _ => floor::floor(&params),
            }
        }
        Scenario::FloorReader { addr, sockets } => {
            let (addr, sockets) = (addr.clone(), *sockets);
            return match tokio::task::spawn_blocking(move || floor::read_side(&addr, sockets)).await
            {
                Ok(Ok(())) => std::process::ExitCode::SUCCESS,
                _ => std::process::ExitCode::FAILURE,
            };
        }
    };
    match outcome {
        Ok(outcome) => {
            println!("{}", outcome.json);
            if outcome.ok {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("FAILED: see the summary above");
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            println!(
                "{}",
                serde_json::json!({"error": format!("{e:#}"), "ok": false})
            );
            std::process::ExitCode::from(2)
        }
    }
}
