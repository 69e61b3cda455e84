//! `--perf`: where the load balancers' CPU time goes, per workload. One extra run per load
//! balancer and workload (not part of the measured results: perf slows what it watches),
//! sampled with `perf record -e cpu-clock --call-graph dwarf` (a software clock: it works in
//! VMs without hardware counters), then summarised from `perf script`: by binary, by Rust crate,
//! by syscall, and the hottest functions. Folded stacks for flamegraph tools are written beside
//! the perf data in `target/bench/profiles/` (`flamegraph.pl x.folded > x.svg`, or
//! `inferno-flamegraph`).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::{
    contender::{Contender, LbProcess},
    env::{self, Env},
    procs,
    workload::{self, Workload},
};

/// Sampling rate: ~200 samples per busy CPU per second, enough for shares of a few percent
/// over a measurement and light enough for DWARF stacks.
const FREQUENCY: &str = "199";
const TOP: usize = 12;

/// The workloads profiled: where the proxy's own work differs (the others repeat these).
const PROFILED: [Workload; 5] = [
    Workload::NewConnUnique,
    Workload::NewConnRepeat,
    Workload::KeepAlive,
    Workload::Download,
    Workload::Churn,
];

#[derive(Clone, Debug, Serialize)]
pub(super) struct Profile {
    pub(super) workload: Workload,
    pub(super) contender: Contender,
    pub(super) samples: u64,
    /// Share of samples by the binary their innermost frame is in (kernel, stickylb, libc...).
    pub(super) by_binary: Vec<Share>,
    /// Share of samples by the Rust crate of the innermost frame in stickylb's binary.
    pub(super) by_crate: Vec<Share>,
    /// Kernel samples by the system call they are under, or softirq.
    pub(super) kernel_by_entry: Vec<Share>,
    /// The hottest functions (innermost frame).
    pub(super) top_functions: Vec<Share>,
    pub(super) folded_stacks: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub(super) struct Share {
    pub(super) name: String,
    pub(super) percent: f64,
}

/// Profiles every load balancer on every workload.
pub(super) fn run(env: &Env) -> anyhow::Result<Vec<Profile>> {
    // The latest profiles only: each is tens of megabytes.
    let dir = env::work_root().join("profiles");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut profiles = Vec::new();
    for workload in PROFILED {
        for contender in [Contender::Haproxy, Contender::Stickylb] {
            let profile = profile_cell(env, workload, contender, &dir)
                .with_context(|| format!("profiling {} on {}", contender.label(), workload.id()))?;
            println!(
                "bench: profiled {} on {}: {} samples, {}",
                contender.label(),
                workload.id(),
                profile.samples,
                profile
                    .by_binary
                    .iter()
                    .map(|share| format!("{} {:.0}%", share.name, share.percent))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            profiles.push(profile);
        }
    }
    Ok(profiles)
}

fn profile_cell(
    env: &Env,
    workload: Workload,
    contender: Contender,
    dir: &Path,
) -> anyhow::Result<Profile> {
    let name = format!("{}-{}", workload.id(), contender_file_name(contender));
    let data = dir.join(format!("{name}.perf.data"));
    env.reset_table()?;
    let (mut lb, _) = env.start(contender, workload.layout())?;
    let recorded = record(env, workload, &mut lb, &data);
    lb.stop()?;
    env.reset_table()?;
    recorded?;
    let script = perf_script(&data)?;
    let folded_stacks = dir.join(format!("{name}.folded"));
    let summary = summarise(&script, workload, contender, folded_stacks.clone());
    fs::write(&folded_stacks, fold(&script))
        .with_context(|| format!("could not write {}", folded_stacks.display()))?;
    Ok(summary)
}

/// Warms up, then records `lb` for the measurement's duration under load: a wrk run that
/// outlasts the recording, or downloads one after another until the recording ends.
fn record(env: &Env, workload: Workload, lb: &mut LbProcess, data: &Path) -> anyhow::Result<()> {
    let base = lb
        .contender
        .base_url(&env.topology(workload.layout()).addrs);
    let (warmup_prefix, prefix) = workload::cookie_prefixes(workload, u32::MAX);
    workload::warm_up(env, workload, &base, &warmup_prefix)?;
    let mut perf = procs::spawn(
        Command::new("perf")
            .args(["record", "--quiet", "-e", "cpu-clock", "-F", FREQUENCY])
            .args(["--call-graph", "dwarf,16384", "-p", &lb.pid().to_string()])
            .arg("-o")
            .arg(data)
            .args(["--", "sleep"])
            .arg(env.plan.measure.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let loaded = if workload == Workload::Download {
        loop {
            if perf.try_wait().context("waitpid")?.is_some() {
                break Ok(());
            }
            if let Err(error) = workload::load(env, workload, &base, &prefix, Duration::ZERO) {
                break Err(error);
            }
        }
    } else {
        let outlast = env.plan.measure + Duration::from_secs(1);
        workload::load(env, workload, &base, &prefix, outlast).map(drop)
    };
    let status = procs::wait(
        &mut perf,
        env.plan.measure + Duration::from_secs(60),
        "perf",
    );
    loaded?;
    lb.check_running()?;
    if !status?.success() {
        bail!("perf record failed: is perf installed (linux-perf) and allowed here?");
    }
    Ok(())
}

fn contender_file_name(contender: Contender) -> &'static str {
    match contender {
        Contender::Direct => "direct",
        Contender::Haproxy => "haproxy",
        Contender::Stickylb => "stickylb",
        Contender::StickylbFastPath => "stickylb-fastpath",
        Contender::StickylbFastPathXdp => "stickylb-fastpath-xdp",
        Contender::StickylbShield => "stickylb-shield",
    }
}

fn perf_script(data: &Path) -> anyhow::Result<String> {
    let output = Command::new("perf")
        .args(["script", "--no-inline", "-i"])
        .arg(data)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("could not run perf script")?;
    if !output.status.success() {
        bail!("perf script -i {} failed", data.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One sample of `perf script`: its frames, innermost first, as (function, binary).
struct Sample<'a> {
    frames: Vec<(&'a str, &'a str)>,
}

/// Splits `perf script` output into samples: a header line, then one indented line per frame
/// (`addr symbol+0xoff (path)`), then a blank line.
fn samples(script: &str) -> Vec<Sample<'_>> {
    let mut samples = Vec::new();
    let mut current: Option<Sample<'_>> = None;
    for line in script.lines() {
        if line.trim().is_empty() {
            samples.extend(current.take());
        } else if line.starts_with(char::is_whitespace) {
            if let Some(sample) = current.as_mut() {
                sample.frames.push(parse_frame(line.trim()));
            }
        } else {
            samples.extend(current.take());
            current = Some(Sample { frames: Vec::new() });
        }
    }
    samples.extend(current);
    samples.retain(|sample| !sample.frames.is_empty());
    samples
}

/// `30f254 hyper::x::poll_flush+0x234 (/path/stickylb)` -> (`hyper::x::poll_flush`, `stickylb`).
fn parse_frame(line: &str) -> (&str, &str) {
    let without_addr = line.split_once(' ').map_or(line, |(_, rest)| rest);
    let (symbol, binary) = match without_addr.rsplit_once(" (") {
        Some((symbol, path)) => (symbol, path.trim_end_matches(')')),
        None => (without_addr, "?"),
    };
    let symbol = match symbol.rfind("+0x") {
        Some(at) => &symbol[..at],
        None => symbol,
    };
    let binary = binary.rsplit('/').next().unwrap_or(binary);
    (symbol, binary)
}

fn summarise(script: &str, workload: Workload, contender: Contender, folded: PathBuf) -> Profile {
    let samples = samples(script);
    let total = samples.len() as f64;
    let (mut by_binary, mut by_crate, mut kernel_by_entry, mut top) = (
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
    );
    for sample in &samples {
        let Some(&(symbol, binary)) = sample.frames.first() else {
            continue;
        };
        *by_binary.entry(binary_name(binary)).or_insert(0u64) += 1;
        *top.entry(format!("{symbol} ({})", binary_name(binary)))
            .or_insert(0u64) += 1;
        if binary == "[kernel.kallsyms]" {
            *kernel_by_entry
                .entry(kernel_entry(&sample.frames))
                .or_insert(0u64) += 1;
        } else if contender.is_stickylb() && !binary.starts_with("lib") && !binary.starts_with('[')
        {
            *by_crate
                .entry(rust_crate(symbol).to_owned())
                .or_insert(0u64) += 1;
        }
    }
    let shares = |counts: HashMap<String, u64>, limit: usize| -> Vec<Share> {
        let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sorted
            .into_iter()
            .take(limit)
            .map(|(name, count)| Share {
                name,
                percent: 100.0 * count as f64 / total.max(1.0),
            })
            .collect()
    };
    Profile {
        workload,
        contender,
        samples: samples.len() as u64,
        by_binary: shares(by_binary, 6),
        by_crate: shares(by_crate, 8),
        kernel_by_entry: shares(kernel_by_entry, 8),
        top_functions: shares(top, TOP),
        folded_stacks: folded,
    }
}

fn binary_name(binary: &str) -> String {
    match binary {
        "[kernel.kallsyms]" => "kernel".into(),
        other => other.split(".so").next().unwrap_or(other).to_owned(),
    }
}

/// What a kernel sample is doing: the system call it is under (the callee of `do_syscall_64`:
/// `do_writev` -> `writev`, `__x64_sys_sendto` -> `sendto`), softirq packet processing, an
/// interrupt or page fault, or the return to user space (rescheduling).
fn kernel_entry(frames: &[(&str, &str)]) -> String {
    let symbols: Vec<&str> = frames.iter().map(|(symbol, _)| *symbol).collect();
    if let Some(at) = symbols.iter().position(|symbol| *symbol == "do_syscall_64") {
        // Frames are innermost first: the callee is the one before; skip the dispatcher.
        let callee = symbols[..at]
            .iter()
            .rev()
            .find(|symbol| !matches!(**symbol, "x64_sys_call" | "__x64_sys_call"));
        return match callee {
            None => "syscall (entry)".into(),
            Some(name)
                if name.starts_with("exit_to_user_mode") || name.starts_with("syscall_exit") =>
            {
                "syscall exit (rescheduling, signals)".into()
            }
            Some(name) => format!("syscall {}", syscall_name(name)),
        };
    }
    let under = |names: &[&str]| symbols.iter().any(|symbol| names.contains(symbol));
    if under(&["net_rx_action", "handle_softirqs", "__do_softirq"]) {
        "softirq (network)".into()
    } else if under(&["asm_exc_page_fault"]) {
        "page faults".into()
    } else if symbols.iter().any(|symbol| {
        symbol.starts_with("asm_sysvec") || symbol.starts_with("asm_common_interrupt")
    }) {
        "interrupts".into()
    } else {
        "other".into()
    }
}

/// `__x64_sys_sendto`, `__sys_sendto`, `do_writev`, `ksys_read` -> `sendto`, `writev`, `read`.
fn syscall_name(function: &str) -> &str {
    [
        "__x64_sys_",
        "__do_sys_",
        "__se_sys_",
        "__sys_",
        "ksys_",
        "do_",
    ]
    .iter()
    .find_map(|prefix| function.strip_prefix(prefix))
    .unwrap_or(function)
}

/// The crate of a Rust symbol: `<hyper::proto::X as Y>::f` -> `hyper`, `tokio::x::y` -> `tokio`.
fn rust_crate(symbol: &str) -> &str {
    let symbol = symbol.trim_start_matches('<').trim_start_matches('&');
    match symbol.find("::") {
        Some(end) => &symbol[..end],
        None => "(no crate: C or unresolved)",
    }
}

/// Folded stacks (`outer;...;inner count`), the input of flamegraph tools.
fn fold(script: &str) -> String {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for sample in samples(script) {
        let stack: Vec<&str> = sample
            .frames
            .iter()
            .rev()
            .map(|(symbol, _)| *symbol)
            .collect();
        *counts.entry(stack.join(";")).or_insert(0) += 1;
    }
    let mut lines: Vec<String> = counts
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::{fold, kernel_entry, parse_frame, rust_crate, samples};

    const SCRIPT: &str = "tokio-rt-worker 19468  4419.904487:    2004008 cpu-clock: \n\
        \t          30f254 hyper::proto::h1::io::Buffered<T,B>::poll_flush+0x234 (/work/target/release/stickylb)\n\
        \t          44c5a3 tokio::runtime::worker::run_task+0x1e3 (/work/target/release/stickylb)\n\
        \n\
        tokio-rt-worker 19467  4419.907057:    2004008 cpu-clock: \n\
        \tffffffff8123 tcp_sendmsg+0x10 ([kernel.kallsyms])\n\
        \tffffffff8124 __x64_sys_sendto+0x20 ([kernel.kallsyms])\n\
        \tffffffff8125 x64_sys_call+0x20 ([kernel.kallsyms])\n\
        \tffffffff8126 do_syscall_64+0x20 ([kernel.kallsyms])\n\
        \t          891f4 __libc_send+0x4 (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\
        \n";

    #[test]
    fn splits_samples_and_frames() {
        let samples = samples(SCRIPT);
        assert_eq!(samples.len(), 2);
        assert_eq!(
            samples[0].frames[0],
            (
                "hyper::proto::h1::io::Buffered<T,B>::poll_flush",
                "stickylb"
            )
        );
        assert_eq!(samples[1].frames[4], ("__libc_send", "libc.so.6"));
        assert_eq!(kernel_entry(&samples[1].frames), "syscall sendto");
        let writev = [
            ("vfs_writev", "k"),
            ("do_writev", "k"),
            ("do_syscall_64", "k"),
        ];
        assert_eq!(kernel_entry(&writev), "syscall writev");
        let preempted = [
            ("schedule", "k"),
            ("exit_to_user_mode_loop", "k"),
            ("do_syscall_64", "k"),
        ];
        assert_eq!(
            kernel_entry(&preempted),
            "syscall exit (rescheduling, signals)"
        );
        let softirq = [
            ("tcp_v4_rcv", "k"),
            ("net_rx_action", "k"),
            ("irq_exit_rcu", "k"),
        ];
        assert_eq!(kernel_entry(&softirq), "softirq (network)");
    }

    #[test]
    fn names_crates_and_frames() {
        assert_eq!(
            rust_crate("<hyper::proto::h1::role::Server as X>::encode"),
            "hyper"
        );
        assert_eq!(rust_crate("tokio::runtime::x"), "tokio");
        assert_eq!(
            parse_frame("ffff [unknown] ([unknown])"),
            ("[unknown]", "[unknown]")
        );
    }

    #[test]
    fn folds_outer_frames_first() {
        let folded = fold(SCRIPT);
        assert!(folded.contains(
            "tokio::runtime::worker::run_task;hyper::proto::h1::io::Buffered<T,B>::poll_flush 1\n"
        ));
        assert!(folded
            .contains("__libc_send;do_syscall_64;x64_sys_call;__x64_sys_sendto;tcp_sendmsg 1\n"));
    }
}
