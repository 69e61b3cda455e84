//! `cargo xtask`: the one entry point for setting up, building, running and testing stickylb.
//!
//! The eBPF crate (`lb-ebpf`) sits outside the workspace and builds with its own nightly
//! toolchain and `bpf-linker`; these tasks drive it so that a plain `cargo build` never has to.

mod bench;
mod btf;
mod build;
mod demo;
mod ebpf;
mod prerequisites;
mod process;
mod run;
mod setup;
mod test_suite;
mod workspace;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, run and test stickylb")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (toolchain parts, Debian packages, bpf-linker,
    /// bpffs). Idempotent: only missing pieces are installed.
    Setup,
    /// Build the eBPF object into target/ebpf/stickylb.bpf.o. `--release` is accepted for
    /// symmetry and ignored: see `build-ebpf --help`.
    BuildEbpf(ProfileArgs),
    /// Build the eBPF object, then the `stickylb` daemon that embeds it.
    Build(ProfileArgs),
    /// Build, then run `stickylb` with the arguments after `--` (as root, through `sudo -E`
    /// when needed); exits with its exit code.
    Run(RunArgs),
    /// Run the whole check suite as CI does: fmt, clippy, shellcheck, tests, `demo --check`.
    Test(TestArgs),
    /// Benchmark stickylb against HAProxy 2.6 and no load balancer, in network namespaces;
    /// writes docs/BENCHMARKS.md, docs/benchmarks.json and docs/benchmarks.svg. As root.
    /// Builds stickylb (release), then runs the lb-bench crate with the arguments given
    /// (`cargo xtask bench --help` lists them).
    Bench(BenchArgs),
    /// Build, then play the original demo's peers demo in network namespaces: web (7 backends), lb-1
    /// and lb-2 on 192.168.33.0/24, localhost:8080/9080 to the lbs and :8404/:9404 to their
    /// monitors, as the original demo's Vagrant ports. As root (through `sudo -E` when needed).
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct ProfileArgs {
    /// Build the userspace side with the release profile. The eBPF object is always built with
    /// lb-ebpf's release profile: both of its profiles are optimized (the verifier needs it),
    /// so a debug eBPF build would only differ in name.
    #[arg(long)]
    release: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Arguments for `stickylb`, after `--`.
    #[arg(last = true)]
    stickylb_args: Vec<String>,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Arguments for `cargo test`, after `--`: a test name filter, and the test binaries' own
    /// after a second `--` (`cargo xtask test -- pinned -- --nocapture`).
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
struct BenchArgs {
    /// Arguments for lb-bench (`--quick`, `--output DIR`, `--runs N`, `--perf`,
    /// `--workload ID`, `--contender ID`, `--access-log`, `--help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    lb_bench_args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Compare every step with the original demo's output; exit non-zero on any difference.
    #[arg(long)]
    check: bool,
    /// Leave the demo running at the end (`cargo xtask demo --down` removes it).
    #[arg(long)]
    keep: bool,
    /// Remove a demo left running (or half built): processes, namespaces, pinned tables.
    #[arg(long, conflicts_with_all = ["check", "keep", "release"])]
    down: bool,
    /// Skip the build: the non-root run that re-runs itself through sudo has built already.
    #[arg(long, hide = true)]
    prebuilt: bool,
    /// Instead of the two-node demo: N nodes (3 to 7), full mesh, behind an ECMP router; plays
    /// the story, prints what it shows, and takes everything down.
    #[arg(long, value_name = "N", conflicts_with_all = ["check", "keep", "down"])]
    nodes: Option<usize>,
}

/// Prints the error chain on one line, without the backtrace anyhow's `Debug` adds under
/// `RUST_BACKTRACE=1`: xtask errors are messages for people, not bugs.
fn main() -> ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::BuildEbpf(_) => ebpf::build().map(drop),
        Task::Build(args) => build::build_all(args.release),
        Task::Run(args) => match run::run(args.profile.release, &args.stickylb_args)? {},
        Task::Test(args) => test_suite::run(&args.cargo_test_args),
        Task::Bench(args) => bench::run(&args.lb_bench_args),
        Task::Demo(args) => demo::run(demo::Options {
            release: args.profile.release,
            check: args.check,
            keep: args.keep,
            down: args.down,
            prebuilt: args.prebuilt,
            nodes: args.nodes,
        }),
    }
}
