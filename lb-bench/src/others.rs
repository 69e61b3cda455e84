//! Other work on the machine: the CPU time of processes outside this run's own process tree,
//! so that a run disturbed by, say, a build next door can be noticed and repeated instead of
//! silently skewing a median.
//!
//! Counted from `/proc/*/stat`: user and system time of every process, plus what each has
//! collected from its reaped children (so short-lived processes count through their parent).
//! Kernel threads are left out: softirq threads and workers also do this run's network work.

use std::{
    collections::{HashMap, HashSet},
    fs,
    time::{Duration, Instant},
};

use super::procs;

/// A run disturbed by other processes (more than this share of the CPUs) is repeated.
pub(crate) const LIMIT_PERCENT: f64 = 5.0;

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

struct Process {
    ppid: u32,
    kernel_thread: bool,
    /// utime + stime + cutime + cstime.
    ticks: u64,
}

/// CPU seconds used so far by user processes outside our tree (this process and descendants).
pub(super) fn cpu_seconds() -> f64 {
    let processes = scan();
    let ours = descendants(&processes, std::process::id());
    let ticks: u64 = processes
        .iter()
        .filter(|(pid, process)| !process.kernel_thread && !ours.contains(*pid))
        .map(|(_, process)| process.ticks)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

/// Waits, at most `patience`, until other processes have used no more than `limit_percent` of
/// the CPUs over a second; returns how long it waited.
pub(super) fn wait_until_quiet(limit_percent: f64, patience: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    while started.elapsed() < patience {
        let before = cpu_seconds();
        procs::sleep(Duration::from_secs(1))?;
        if 100.0 * (cpu_seconds() - before) / cpus <= limit_percent {
            break;
        }
    }
    Ok(started.elapsed())
}

fn scan() -> HashMap<u32, Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parse(&stat)?))
        })
        .collect()
}

/// Fields after the command name (which may hold spaces and parentheses): state (3), ppid (4),
/// ..., flags (9), ..., utime (14), stime (15), cutime (16), cstime (17).
fn parse(stat: &str) -> Option<Process> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Process {
        ppid: u32::try_from(field(4)?).ok()?,
        kernel_thread: field(9)? & PF_KTHREAD != 0,
        ticks: field(14)? + field(15)? + field(16)? + field(17)?,
    })
}

/// `root` and every process below it.
fn descendants(processes: &HashMap<u32, Process>, root: u32) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, process) in processes {
        children.entry(process.ppid).or_default().push(*pid);
    }
    let mut found = HashSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if found.insert(pid) {
            stack.extend(children.get(&pid).into_iter().flatten());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{descendants, parse, Process};

    #[test]
    fn parses_ticks_parent_and_kernel_threads() {
        let user = parse("42 (a) b) S 7 42 42 0 -1 4194560 1 0 0 0 10 5 3 2 20 0 1 0").unwrap();
        assert_eq!((user.ppid, user.kernel_thread, user.ticks), (7, false, 20));
        let kthread = parse("9 (ksoftirqd/0) S 2 0 0 0 -1 69238848 0 0 0 0 4 6 0 0 20 0 1 0");
        assert!(kthread.unwrap().kernel_thread);
    }

    #[test]
    fn finds_the_whole_tree_below_a_process() {
        let process = |ppid| Process {
            ppid,
            kernel_thread: false,
            ticks: 0,
        };
        let processes: HashMap<u32, Process> = [
            (1, process(0)),
            (10, process(1)),
            (11, process(10)),
            (12, process(11)),
            (20, process(1)),
        ]
        .into_iter()
        .collect();
        let mut tree: Vec<u32> = descendants(&processes, 10).into_iter().collect();
        tree.sort_unstable();
        assert_eq!(tree, [10, 11, 12]);
    }
}
