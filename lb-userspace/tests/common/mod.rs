//! Harness for the privileged end-to-end tests: network namespaces joined by veth pairs, the
//! daemon and the test backends as real processes inside them, a small HTTP client that runs
//! inside a namespace. Everything is removed by guards, also when a test panics.
//!
//! Without root the tests skip with a message, except under `CI=true` or
//! `STICKYLB_REQUIRE_PRIVILEGED=1`, where they fail.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod fastpath;
pub mod haproxy;
pub mod http;
pub mod netns;
pub mod peers;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

pub use netns::Topology;

/// Returns false (after saying why) when privileged tests cannot run here; panics instead when
/// they are required.
pub fn privileged() -> bool {
    let root = netns_kit::is_root();
    // lb-userspace/build.rs sets this cfg when it found no eBPF object to embed.
    let has_object = !cfg!(stickylb_no_ebpf);
    if root && has_object {
        return true;
    }
    let required = ["CI", "STICKYLB_REQUIRE_PRIVILEGED"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"));
    let missing = if root {
        "the eBPF object (run `cargo xtask build-ebpf`)"
    } else {
        "root (network namespaces, bpffs, BPF maps)"
    };
    assert!(!required, "this test needs {missing} and CI requires it");
    eprintln!("skipping: this test needs {missing} (set CI=true to make this a failure)");
    false
}

pub fn stickylb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_stickylb")
}

pub fn backend_bin() -> &'static str {
    env!("CARGO_BIN_EXE_stickylb-backend")
}

/// A process whose output is collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub output: Arc<Mutex<String>>,
    name: String,
}

impl Proc {
    /// Starts `argv` inside network namespace `ns`, capturing stdout and stderr.
    ///
    /// It joins only the network namespace (netns-kit's `command_in`), so it sees the host's
    /// bpffs: pins it makes outlive it.
    pub fn spawn(name: &str, ns: &str, argv: &[&str]) -> Proc {
        let (program, args) = argv.split_first().expect("a command");
        let mut child = netns_kit::command_in(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        Proc {
            child,
            output,
            name: name.to_owned(),
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for_output(&self, needle: &str, limit: Duration) {
        let found = wait_until(limit, || self.output().contains(needle));
        assert!(
            found,
            "{} never printed {needle:?}; output:\n{}",
            self.name,
            self.output()
        );
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) takes plain integers; the pid is this process's own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits up to `limit` for the process to exit and asserts that it succeeded, showing its
    /// output otherwise (`what` names it: a command such as `reload --upgrade`).
    pub fn assert_exits_ok(&mut self, limit: Duration, what: &str) {
        let exited = wait_until(limit, || matches!(self.child.try_wait(), Ok(Some(_))));
        assert!(exited, "{what} did not finish:\n{}", self.output());
        assert!(
            self.child.try_wait().unwrap().unwrap().success(),
            "{}",
            self.output()
        );
    }

    /// Sends `signal` and waits for the process to exit; returns its output.
    pub fn stop_with(mut self, signal: i32) -> String {
        self.signal(signal);
        let exited = wait_until(Duration::from_secs(15), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        assert!(exited, "{} did not exit after signal {signal}", self.name);
        self.output()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A pin directory of the test's own under bpffs, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(test: &str) -> PinDir {
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/stickylb-test/{test}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        PinDir(path)
    }
}

impl PinDir {
    /// A control socket path as unique as the pin directory, so that tests running side by side
    /// never meet on the default `/run/stickylb/<instance>.sock`.
    pub fn control_socket(&self) -> PathBuf {
        let leaf = self.0.file_name().unwrap_or_default().to_string_lossy();
        PathBuf::from(format!("/run/stickylb-test/{leaf}.sock"))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(self.control_socket());
    }
}

/// The start every test configuration shares: `[instance]` named `instance` with the test's
/// own pin directory and control socket, and the frontend `www` on `<host>:80` in front of
/// `backend`.
pub fn config_head(
    instance: impl std::fmt::Display,
    pin: &PinDir,
    host: impl std::fmt::Display,
    backend: &str,
) -> String {
    format!(
        r#"[instance]
name = "{instance}"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{host}:80"
backend = "{backend}"
"#,
        pin = pin.0.display(),
        control = pin.control_socket().display(),
    )
}

const TEMP_PREFIX: &str = "stickylb-test-";

/// Removes the temp dirs of test processes that have ended: a test binary has no hook at its
/// end to remove its own, so the next one does (a dir whose process still runs is left alone:
/// test binaries run side by side).
fn remove_stale_temp_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Writes `text` to a fresh file in the system temp dir and returns its path.
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{TEMP_PREFIX}{}", std::process::id()));
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_stale_temp_dirs);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

/// The original demo's session cookie for session `n`: md5 of `_n` in hex.
pub fn demo_cookie(n: u32) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf _%s {n} | md5sum"))
        .output()
        .expect("md5sum");
    String::from_utf8_lossy(&out.stdout)[..32].to_owned()
}

/// Runs the daemon in `ns` with `config` and waits until it serves.
pub fn start_daemon(ns: &str, config: &Path) -> Proc {
    let config = config.to_str().unwrap();
    let proc = Proc::spawn(
        "stickylb",
        ns,
        &[stickylb_bin(), "--log", "info", "run", "--config", config],
    );
    proc.wait_for_output("stickylb started", Duration::from_secs(20));
    proc
}
