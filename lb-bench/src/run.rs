//! One bench run: every workload against every contender, the table-scale, splice-rate,
//! program-cost and SYN flood measurements, the profiles, then the report (each flood's in its
//! own file).
//!
//! Every cell (workload x contender) starts its load balancer afresh with an empty table,
//! warms up, then measures; repetitions alternate the contenders, each starting with the next.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::{
    args::{BenchArgs, PROGRAM_COST, SPLICE_RATE, TABLE_SCALE},
    bpfstats, cluster,
    contender::Contender,
    env::{remove_stale, Env, HAPROXY},
    flood, machine, others,
    plan::Plan,
    procs::{self, SignalGuard},
    profile, progcost,
    report::{self, Cell, Report},
    scale, splice_rate,
    workload::{self, Workload},
    workspace,
};

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !netns_kit::is_root() {
        bail!(
            "the bench needs root (network namespaces, BPF maps): run `cargo xtask bench` as \
             root or with `sudo -E env PATH=$PATH cargo xtask bench`"
        );
    }
    check_tools()?;
    check_binaries()?;
    let load_before = machine::load_average();
    let machine = machine::describe(load_before);
    let plan = Plan {
        access_log: args.access_log,
        ..Plan::new(args.quick, args.runs)
    };
    let output = args.output.clone().unwrap_or_else(|| {
        if args.partial() {
            workspace::root().join("target/bench/partial")
        } else {
            workspace::root().join("docs")
        }
    });
    let started = Instant::now();
    let _signals = SignalGuard::install();
    remove_stale();
    // The fast path's program runs outside the daemon's process: its time is counted apart.
    let bpf_stats = bpfstats::RunTimeStats::enable()
        .inspect_err(|error| println!("bench: no BPF run-time statistics ({error:#}): the fast path's program time is not counted"))
        .ok();
    let env = Env::create(plan)?;
    let cells = run_matrix(&env, args)?;
    let mut scale = Vec::new();
    for contender in [Contender::Haproxy, Contender::Stickylb] {
        if args.wants_workload(TABLE_SCALE) && args.wants_contender(contender) {
            scale.push(scale::measure(&env, contender)?);
        }
    }
    let splice_rate = if args.wants_workload(SPLICE_RATE)
        && args.wants_contender(Contender::StickylbFastPath)
        && Contender::StickylbFastPath.unavailable().is_none()
    {
        Some(splice_rate::measure(&env)?)
    } else {
        None
    };
    let program_costs = if args.wants_workload(PROGRAM_COST)
        && args.wants_contender(Contender::StickylbFastPath)
        && Contender::StickylbFastPath.unavailable().is_none()
    {
        progcost::measure(&env)?
    } else {
        Vec::new()
    };
    let cluster = cluster::measure(&env, args)?;
    let mut floods = Vec::new();
    for sources in [flood::Sources::One, flood::Sources::Spoofed] {
        let id = sources.workload();
        if !(args.wants_workload(id)
            && args.wants_contender(Contender::Stickylb)
            && args.wants_contender(Contender::Haproxy))
        {
            continue;
        }
        if flood::available() {
            floods.push(flood::measure(&env, sources)?);
        } else {
            println!("bench: no hping3 (`cargo xtask setup` installs it): {id} not measured");
        }
    }
    let profiles = if args.perf {
        profile::run(&env)?
    } else {
        Vec::new()
    };
    let mut report = Report::new(
        machine,
        env.plan.clone(),
        cells,
        (scale, splice_rate),
        profiles,
        started.elapsed(),
    );
    report.fastpath_program_time_counted = bpf_stats.is_some();
    report.cluster = cluster;
    report.program_costs = program_costs;
    drop((env, bpf_stats));
    report::write(&report, &output)?;
    for flood in &floods {
        flood::write(flood, &output)?;
    }
    println!(
        "bench: done in {:.0} s; wrote {} and {}",
        started.elapsed().as_secs_f64(),
        output.join(report::MARKDOWN_FILE).display(),
        output.join(report::JSON_FILE).display()
    );
    Ok(())
}

/// Every workload against every contender that can run, `runs` times, contenders alternating.
fn run_matrix(env: &Env, args: &BenchArgs) -> anyhow::Result<Vec<Cell>> {
    let contenders: Vec<Contender> = Contender::available_with_extra()
        .into_iter()
        .filter(|&contender| args.wants_contender(contender))
        .collect();
    let mut cells: Vec<Cell> = Vec::new();
    for workload in Workload::ALL
        .into_iter()
        .filter(|workload| args.wants_workload(workload.id()))
    {
        let mut row: Vec<Cell> = contenders
            .iter()
            .filter(|&&contender| workload.runs_against(contender))
            .map(|&contender| Cell::new(workload, contender))
            .collect();
        for run in 0..env.plan.runs {
            // Each repetition starts with the next contender: a run's place in its repetition
            // (what the machine did just before it: the previous run's TIME_WAIT sockets, a
            // wait for quiet) is then the same for every contender over the runs, and cannot
            // pass for a difference between them.
            let first = run as usize % row.len().max(1);
            let (before, after) = row.split_at_mut(first);
            for cell in after.iter_mut().chain(before.iter_mut()) {
                let sample = run_cell(env, workload, cell.contender, run).with_context(|| {
                    format!("{} against {}", workload.id(), cell.contender.label())
                })?;
                println!(
                    "bench: {} run {}/{} {}: {}",
                    workload.id(),
                    run + 1,
                    env.plan.runs,
                    cell.contender.label(),
                    progress(workload, &sample)
                );
                cell.samples.push(sample);
            }
        }
        cells.append(&mut row);
    }
    Ok(cells)
}

/// One line of figures for the progress output.
fn progress(workload: Workload, sample: &workload::Sample) -> String {
    let cpu = sample
        .lb_cpu_s
        .map_or(String::new(), |s| format!(", LB CPU {s:.2} s"));
    let spliced = sample.fastpath.as_ref().map_or(String::new(), |f| {
        format!(
            ", {} connections spliced in {} attempts",
            f.outcome("spliced"),
            f.attempts
        )
    });
    let errors = match sample.errors {
        0 => String::new(),
        n => format!(", {n} errors"),
    };
    let negotiated = sample
        .negotiated
        .as_ref()
        .map_or(String::new(), |tls| format!(", negotiated {tls}"));
    if workload.per_gigabyte() {
        format!("{:.0} MB/s{cpu}{spliced}{errors}", sample.megabytes_per_s())
    } else {
        format!(
            "{:.0} req/s, p99 {:.2} ms{cpu}{spliced}{errors}{negotiated}",
            sample.requests_per_s(),
            sample.p99_ms.unwrap_or(0.0)
        )
    }
}

/// One run of a cell. Waits for other processes to quiet down first, and repeats a run they
/// disturbed anyway, within the plan's attempts and the run's budget for such waits.
fn run_cell(
    env: &Env,
    workload: Workload,
    contender: Contender,
    run: u32,
) -> anyhow::Result<workload::Sample> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let mut attempt = 1;
    loop {
        let waited = others::wait_until_quiet(others::LIMIT_PERCENT, env.patience_left())?;
        env.spend_patience(waited);
        let (others_before, started) = (others::cpu_seconds(), Instant::now());
        let mut sample = run_cell_once(env, workload, contender, run)?;
        let elapsed = started.elapsed();
        let percent =
            100.0 * (others::cpu_seconds() - others_before) / (elapsed.as_secs_f64() * cpus);
        sample.others_cpu_percent = Some(percent);
        sample.attempts = attempt;
        if percent <= others::LIMIT_PERCENT
            || attempt >= env.plan.attempts
            || env.patience_left().is_zero()
        {
            return Ok(sample);
        }
        println!(
            "bench: {} {}: other processes used {percent:.0}% of the CPUs meanwhile: again",
            workload.id(),
            contender.label()
        );
        env.spend_patience(elapsed);
        attempt += 1;
    }
}

fn run_cell_once(
    env: &Env,
    workload: Workload,
    contender: Contender,
    run: u32,
) -> anyhow::Result<workload::Sample> {
    procs::check_interrupted()?;
    // Redirected frames need GRO on the far ends of the load balancer's veths; the other
    // contenders run with the veths' default (off), as they always have.
    env.topology(workload.layout())
        .set_far_end_gro(contender == Contender::StickylbFastPathXdp)?;
    if contender == Contender::Direct {
        return workload::measure(env, workload, contender, None, run);
    }
    env.reset_table()?;
    let (mut lb, _) = env.start_serving(contender, workload.layout(), workload.frontend())?;
    let mut sample = workload::measure(env, workload, contender, Some(&mut lb), run);
    if let (Ok(sample), true) = (&mut sample, contender.is_fast_path()) {
        sample.fastpath = env.fastpath_counters(workload.layout()).ok();
    }
    lb.stop()?;
    // Unpins the table and the fast path's links, which detaches its program.
    env.reset_table()?;
    sample
}

/// What the bench needs from the system, named with the command that installs it.
fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        "ip", "nsenter", "wrk", "h2load", "curl", "bpftool", "sysctl",
    ]
    .into_iter()
    .filter(|tool| find_in_path(tool).is_none())
    .chain((!Path::new(HAPROXY).exists()).then_some(HAPROXY))
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: run `cargo xtask setup` (Debian packages)",
            missing.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The binaries `cargo xtask bench` builds (release) before it runs this one.
fn check_binaries() -> anyhow::Result<()> {
    let stickylb = workspace::stickylb_binary(true);
    let missing: Vec<PathBuf> = ["stickylb", "stickylb-backend", "stickylb-load"]
        .into_iter()
        .map(|name| stickylb.with_file_name(name))
        .filter(|path| !path.is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: run the bench with `cargo xtask bench`, which builds them first",
            missing
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
