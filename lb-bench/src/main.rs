//! `lb-bench`: measures stickylb against HAProxy 2.6 and against no load balancer at all, in
//! network namespaces (client, lb, backends), and writes `BENCHMARKS.md`, `benchmarks.json` and
//! `benchmarks.svg` (to `docs/` unless `--output` says otherwise).
//!
//! `cargo xtask bench` builds stickylb (release) and then runs this binary as root; it also
//! runs inside the client namespace as the download workload's client (`lb-bench client`) and as
//! the TLS connection workloads' client (`lb-bench tls-client`). A
//! benchmark, not a test: nothing here asserts a speed. `cargo xtask test` runs `--quick` and
//! then `lb-bench verify` on what it wrote, which checks the report's shape.

mod args;
mod bpfstats;
mod bpftool;
mod check;
mod client;
mod cluster;
mod contender;
mod env;
mod flood;
mod h2load;
mod hosts;
mod load;
mod logtail;
mod machine;
mod metrics;
mod others;
mod plan;
mod procs;
mod profile;
mod progcost;
mod report;
mod run;
mod scale;
mod splice_rate;
mod stats;
mod tls;
mod tls_client;
mod workload;
mod workspace;
mod wrk;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lb-bench",
    about = "Benchmark stickylb against HAProxy 2.6 and no load balancer, in network \
             namespaces; run it through `cargo xtask bench`, which builds stickylb first",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: args::BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the shape of the report a run wrote into DIR (not its figures).
    Verify { dir: PathBuf },
    /// The download workload's client (run by the bench inside its client namespace).
    #[command(hide = true)]
    Client(client::ClientArgs),
    /// The TLS connection workloads' client (run by the bench inside its client namespace).
    #[command(hide = true)]
    TlsClient(tls_client::TlsClientArgs),
}

/// Prints the error chain on one line: these errors are messages for people, not bugs.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run::run(&cli.args),
        Some(Command::Verify { dir }) => check::verify(&dir),
        Some(Command::Client(args)) => client::run(&args),
        Some(Command::TlsClient(args)) => tls_client::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
