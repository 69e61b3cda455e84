//! The `stickylb` command: run the daemon, check a configuration, print the pinned table.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use stickylb::{
    config::{backend_id, Config},
    control::{
        self,
        command::{word, Operation, TableOperation},
    },
    daemon::RunOptions,
    dataplane, logging,
    table::{field_text, now_ms, pinned::DurableTable},
};
use tracing_subscriber::EnvFilter;

/// Lives beside the library modules but belongs to this binary only.
mod upgrade_cli;

#[derive(Parser)]
#[command(
    name = "stickylb",
    version,
    about = "Sticky-session HTTP load balancer with a table that survives restarts"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it. `access=off` silences the
    /// per-request lines.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer (as root: it loads eBPF maps and pins them in bpffs).
    Run {
        #[command(flatten)]
        target: Target,
        /// Take the listening sockets of the running instance (zero-downtime upgrade), which
        /// then drains and exits. Without a running instance, start normally.
        #[arg(long)]
        upgrade: bool,
    },
    /// Reload the running instance: apply the configuration file in place (servers, health
    /// checks, balance, timeouts), or with --upgrade start a new process that takes over.
    Reload {
        #[command(flatten)]
        target: Target,
        /// Replace the process (new binary or any configuration change) without dropping a
        /// connection.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration and print every problem with its line.
    Check {
        #[command(flatten)]
        target: Target,
    },
    /// Print the stick table from the pinned map (works while the daemon runs or is stopped),
    /// or change it in the running instance (`del`, `set`, `clear`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Table {
        #[command(flatten)]
        target: Option<Target>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        change: Option<TableChange>,
    },
    /// Change a server of the running instance: `ready`, `drain` (its sessions stay, no new
    /// ones), `maint` (no traffic; its sessions go elsewhere) or `weight N` (0..=256). Kept
    /// across reloads, upgrades and restarts.
    Server {
        #[command(flatten)]
        target: Target,
        /// BACKEND/SERVER.
        server: String,
        /// ready | drain | maint | weight N
        #[arg(num_args = 1..=2, required = true)]
        action: Vec<String>,
    },
    /// Change or print the shield's deny list, pinned beside the table (works while the daemon
    /// runs or is stopped; kept across restarts and upgrades). Packets from a denied source
    /// are dropped at XDP on the interfaces the shield is attached to ([shield] enabled).
    Deny {
        #[command(subcommand)]
        change: DenyChange,
    },
    /// Take out of the kernel the programs a stopped instance left attached (the shield at XDP
    /// and TC, its refund, the fast path's programs): the interfaces then carry traffic as
    /// without stickylb. The stick table, the deny list and the other pinned maps stay; a start
    /// attaches again. Refused while the instance runs, and while spliced connections are open
    /// unless --force (they break).
    Detach {
        #[command(flatten)]
        target: Target,
        /// Detach even while spliced connections are open.
        #[arg(long)]
        force: bool,
    },
    /// Print the connections the kernel fast path splices, from the pinned flow map (works
    /// while the daemon runs or is stopped).
    Fastpath {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// A change to the running instance's stick table. Answers name the backend and server, never
/// the cookie. A delete is local: peers keep their entries (`docs/PEERS.md`).
#[derive(Subcommand)]
enum TableChange {
    /// Forget one session: its next request is balanced anew.
    Del {
        backend: String,
        /// The session cookie's value.
        cookie: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stick one session to a server of the backend (peers are told).
    Set {
        backend: String,
        /// The session cookie's value.
        cookie: String,
        server: String,
        #[command(flatten)]
        target: Target,
    },
    /// Forget every session of the backend, or only those stuck to one server.
    Clear {
        backend: String,
        /// Only the sessions stuck to this server.
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// A change to, or a listing of, the shield's deny list.
#[derive(Subcommand)]
enum DenyChange {
    /// Deny a source block (`192.0.2.0/24`, `2001:db8::/32`, or one address).
    Add {
        cidr: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove exactly this block from the list (blocks inside it stay).
    Del {
        cidr: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the list.
    List {
        #[command(flatten)]
        target: Target,
    },
}

impl TableChange {
    /// The request to send, and the instance to send it to; why not, for a word that cannot be
    /// sent.
    fn into_request(self) -> Result<(Target, Operation), String> {
        let (target, operation) = match self {
            Self::Del {
                backend,
                cookie,
                target,
            } => (
                target,
                TableOperation::Del {
                    backend: word(&backend)?,
                    cookie: word(&cookie)?,
                },
            ),
            Self::Set {
                backend,
                cookie,
                server,
                target,
            } => (
                target,
                TableOperation::Set {
                    backend: word(&backend)?,
                    cookie: word(&cookie)?,
                    server: word(&server)?,
                },
            ),
            Self::Clear {
                backend,
                server,
                target,
            } => (
                target,
                TableOperation::Clear {
                    backend: word(&backend)?,
                    server: server.as_deref().map(word).transpose()?,
                },
            ),
        };
        Ok((target, Operation::Table(operation)))
    }
}

/// Which instance: its configuration file, and optionally its name.
#[derive(clap::Args, Clone)]
struct Target {
    #[arg(long, short)]
    config: PathBuf,
    /// Instance name, in place of the file's `[instance] name` or the host name (several
    /// instances can share one file, each finding itself in `[peers]` by name).
    #[arg(long)]
    name: Option<String>,
}

impl Target {
    fn load(&self) -> anyhow::Result<Config> {
        Config::load_as(&self.config, self.name.as_deref())
            .with_context(|| format!("configuration {}", self.config.display()))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = init_tracing(&cli.log);
    let result = dispatch(cli.command, &cli.log);
    // The log's last lines go out before the error that ends the process.
    drop(log);
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("stickylb: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command, log: &str) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { target, upgrade } => {
            let config = target.load()?;
            let options = RunOptions {
                config_path: target.config,
                name: target.name,
                upgrade,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(stickylb::daemon::run(config, options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { target, upgrade } => {
            let config = target.load()?;
            if upgrade {
                upgrade_cli::start_successor(&target.config, target.name.as_deref(), &config, log)
            } else {
                reload_in_place(&config)
            }
        }
        Command::Check { target } => {
            match Config::load_as(&target.config, target.name.as_deref()) {
                Ok(config) => {
                    println!(
                        "{}: OK ({} frontends, {} backends, {} servers)",
                        target.config.display(),
                        config.frontends.len(),
                        config.backends.len(),
                        config
                            .backends
                            .iter()
                            .map(|b| b.servers.len())
                            .sum::<usize>()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!(
                        "{}: invalid configuration\n{error}",
                        target.config.display()
                    );
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Table {
            target,
            json,
            change,
        } => match (change, target) {
            (Some(change), _) => match change.into_request() {
                Ok((target, operation)) => operate(&target.load()?, &operation),
                Err(why) => {
                    eprintln!("stickylb: {why}");
                    Ok(ExitCode::from(2))
                }
            },
            (None, Some(target)) => {
                print_table(&target.load()?, json)?;
                Ok(ExitCode::SUCCESS)
            }
            (None, None) => anyhow::bail!("stickylb table needs --config FILE"),
        },
        Command::Server {
            target,
            server,
            action,
        } => {
            let config = target.load()?;
            let line = format!("server {server} {}", action.join(" "));
            let parsed = Operation::parse(&line)
                .and_then(|operation| operation.ok_or_else(|| format!("{line:?} is no request")));
            let operation = match parsed {
                Ok(operation) => operation,
                Err(why) => {
                    eprintln!("stickylb: {why}");
                    return Ok(ExitCode::from(2));
                }
            };
            operate(&config, &operation)
        }
        Command::Fastpath { target, json } => {
            print_fastpath(&target.load()?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deny { change } => deny(change),
        Command::Detach { target, force } => detach(&target.load()?, force),
    }
}

/// `stickylb detach`: says what it took out, or why it would not.
fn detach(config: &Config, force: bool) -> anyhow::Result<ExitCode> {
    use stickylb::detach::{self, DetachError};
    match detach::detach(config, force) {
        Ok(done) => {
            for link in &done.links {
                println!("detached {}", link.display());
            }
            if done.links.is_empty() {
                println!("nothing attached under {}", done.root.display());
            }
            if done.broken_flows > 0 {
                println!(
                    "{} spliced connection(s) no longer pass (--force)",
                    done.broken_flows
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(refused @ (DetachError::Running { .. } | DetachError::SplicedFlows { .. })) => {
            eprintln!("stickylb: {refused}");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error.into()),
    }
}

/// `stickylb deny add|del|list`: writes or reads the pinned deny list directly.
fn deny(change: DenyChange) -> anyhow::Result<ExitCode> {
    use stickylb::{config::Cidr, shield};
    let parse = |text: &str| match text.parse::<Cidr>() {
        Ok(cidr) => Ok(cidr),
        Err(why) => {
            eprintln!("stickylb: {why}");
            Err(ExitCode::from(2))
        }
    };
    let root_of =
        |config: &Config| dataplane::pin_root(&config.instance.pin_dir, &config.instance.name);
    match change {
        DenyChange::Add { cidr, target } => {
            let cidr = match parse(&cidr) {
                Ok(cidr) => cidr,
                Err(code) => return Ok(code),
            };
            let mut list = shield::program::open_or_create_deny_list(&root_of(&target.load()?))?;
            list.add(&cidr)?;
            println!("denied {cidr}");
        }
        DenyChange::Del { cidr, target } => {
            let cidr = match parse(&cidr) {
                Ok(cidr) => cidr,
                Err(code) => return Ok(code),
            };
            let mut list = shield::DenyList::open_pinned(&root_of(&target.load()?))?;
            if list.remove(&cidr)? {
                println!("removed {cidr}");
            } else {
                eprintln!("stickylb: {cidr} is not on the deny list");
                return Ok(ExitCode::FAILURE);
            }
        }
        DenyChange::List { target } => {
            let list = shield::DenyList::open_pinned(&root_of(&target.load()?))?;
            for cidr in list.list()? {
                println!("{cidr}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the running instance to apply its configuration file in place.
fn reload_in_place(config: &Config) -> anyhow::Result<ExitCode> {
    let path = &config.instance.control_socket;
    let reply = control::request(path, "reload").with_context(|| {
        format!(
            "no running instance {} answers on {}",
            config.instance.name,
            path.display()
        )
    })?;
    match reply.strip_prefix("ok ") {
        Some(summary) => {
            println!("reloaded: {summary}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "stickylb: reload rejected: {}",
                reply.trim_start_matches("error ")
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Sends `operation` to the running instance and prints its answer.
fn operate(config: &Config, operation: &Operation) -> anyhow::Result<ExitCode> {
    let path = &config.instance.control_socket;
    let reply = control::send_operation(path, operation).with_context(|| {
        format!(
            "no running instance {} answers on {}",
            config.instance.name,
            path.display()
        )
    })?;
    match reply {
        Ok(done) => {
            println!("{done}");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("stickylb: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_fastpath(config: &Config, json: bool) -> anyhow::Result<()> {
    use stickylb::fastpath::{program, report};
    let root = dataplane::pin_root(&config.instance.pin_dir, &config.instance.name);
    let flows = program::open_pinned_flows(&root)
        .with_context(|| format!("no usable splice flow map under {}", root.display()))?;
    let entries = flows
        .entries()
        .with_context(|| format!("reading the splice flow map under {}", root.display()))?;
    let summary = report::summary(&entries);
    let list = report::flows(&entries, &config.fastpath.source_ports.range());
    let stats = program::read_pinned_stats(&root).ok();
    if json {
        let out = serde_json::json!({ "summary": summary, "program": stats, "flows": list });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "# {} ({} spliced, {} observed, {} armed, {} closed entries; {} packets, {} bytes)",
        root.display(),
        summary.spliced,
        summary.observe_entries,
        summary.armed_entries,
        summary.closed_entries,
        summary.packets,
        summary.bytes
    );
    println!(
        "{:<21} {:<21} {:<21} {:<21} {:<7} {:>12} {:>12} {:<9}",
        "CLIENT", "FRONTEND", "PROXY SOURCE", "SERVER", "STATE", "BYTES UP", "BYTES DOWN", "SEEN"
    );
    for f in &list {
        println!(
            "{:<21} {:<21} {:<21} {:<21} {:<7} {:>12} {:>12} {:<9}",
            f.client,
            f.frontend,
            f.proxy_source,
            f.server,
            f.state,
            f.bytes_to_server,
            f.bytes_to_client,
            f.seen
        );
    }
    Ok(())
}

fn print_table(config: &Config, json: bool) -> anyhow::Result<()> {
    let path = dataplane::stick_table_path(&config.instance.pin_dir, &config.instance.name);
    let table = DurableTable::open_existing(&path)
        .with_context(|| format!("no usable stick table at {}", path.display()))?;
    let now = now_ms();
    let mut entries = table.entries()?;
    entries.reverse();
    let rows: Vec<_> = entries
        .iter()
        .map(|(key, entry)| {
            let backend = config.backends.iter().find(|b| backend_id(&b.name) == key.backend_id);
            let expire_ms = backend.map_or(0, |b| u64::try_from(b.expire.as_millis()).unwrap_or(u64::MAX));
            let idle_ms = now.saturating_sub(entry.last_seen_ms);
            serde_json::json!({
                "backend": backend.map_or_else(|| format!("#{:08x}", key.backend_id), |b| b.name.clone()),
                "cookie": field_text(&key.cookie),
                "server": field_text(&entry.server),
                "last_seen_ms": entry.last_seen_ms,
                "idle_ms": idle_ms,
                "expires_in_ms": expire_ms.saturating_sub(idle_ms),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("# {} ({} entries)", path.display(), rows.len());
    println!(
        "{:<12} {:<45} {:<16} {:>10} {:>12}",
        "BACKEND", "COOKIE", "SERVER", "IDLE", "EXPIRES IN"
    );
    for row in &rows {
        println!(
            "{:<12} {:<45} {:<16} {:>9}s {:>11}s",
            row["backend"].as_str().unwrap_or("?"),
            row["cookie"].as_str().unwrap_or("?"),
            row["server"].as_str().unwrap_or("?"),
            row["idle_ms"].as_u64().unwrap_or(0) / 1000,
            row["expires_in_ms"].as_u64().unwrap_or(0) / 1000,
        );
    }
    Ok(())
}

/// Installs the subscriber: lines go through [`logging::Output`], which the process keeps
/// until its end (dropping it writes the last lines). Without a thread for it, lines are
/// written where they are made, as a last resort.
fn init_tracing(default: &str) -> Option<logging::Output> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(logging::Lines::new());
    match logging::Output::to_stderr() {
        Ok(output) => {
            builder.with_writer(output.sink()).init();
            Some(output)
        }
        Err(error) => {
            builder.with_writer(std::io::stderr).init();
            tracing::warn!(%error, "no thread for the log: lines are written where they are made");
            None
        }
    }
}
