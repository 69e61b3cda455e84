//! Plays the story: prints each step's header, the commands as a user types them and what they
//! print; under `--check`, compares every access with the original demo's output.

use std::ops::RangeInclusive;

use anyhow::{bail, Context as _};

use super::{
    files, lifecycle,
    nodes::{Nodes, SYNC_LIMIT},
    story::{self, diff, expected_output, last_session, Action, Outcome},
    Lb,
};
use crate::workspace;

pub(super) fn play(nodes: &mut Nodes, check: bool) -> anyhow::Result<Outcome> {
    println!(
        "\nThe original demo's story (access scripts run in vagrant/, other commands in the repository \
         root, as root)"
    );
    let mut outcome = Outcome::default();
    for (index, step) in story::story().iter().enumerate() {
        let number = index + 1;
        println!("\n==> {number}. {}", step.title);
        let mut matched = true;
        for &action in &step.actions {
            matched &= perform(nodes, action, check)?;
        }
        outcome.record(number, matched);
    }
    Ok(outcome)
}

/// Does `action`; returns whether it went as in the original demo (always true for what `--check` does
/// not compare). Fails only when the demo cannot go on.
fn perform(nodes: &mut Nodes, action: Action, check: bool) -> anyhow::Result<bool> {
    lifecycle::settle_if_interrupted();
    match action {
        Action::Access { lb, from, backends } => access(lb, from, backends, check),
        Action::AwaitTable { lb, from, to } => await_table(nodes, lb, from..=to),
        Action::Stop(lb) => nodes.stop(lb, false).map(|()| true),
        Action::Kill(lb) => nodes.stop(lb, true).map(|()| true),
        Action::Start(lb) => nodes.start(lb).map(|()| true),
        Action::Reload(lb) => nodes.reload(lb).map(|()| true),
        Action::AwaitResync(lb) => {
            match nodes.wait_for_log(lb, "full resync from peer done", SYNC_LIMIT) {
                Ok((_, line)) => {
                    println!("{}: {}", lb.name(), files::log_message(&line));
                    Ok(true)
                }
                Err(error) => {
                    println!("{}: no full resync from its peer: {error:#}", lb.name());
                    Ok(false)
                }
            }
        }
    }
}

/// Runs the original demo's access script for `lb` with bash, from vagrant/, and prints its output
/// (curl's errors included, in order).
fn access(lb: Lb, from: u32, backends: &[u32], check: bool) -> anyhow::Result<bool> {
    let script = lb.access_script();
    let to = last_session(from, backends);
    println!("$ ./{script} {from} {to}");
    let mut command = lifecycle::command("bash");
    command
        .arg("-c")
        .arg(format!(r#"exec ./{script} "$@" 2>&1"#))
        .args(["bash", &from.to_string(), &to.to_string()])
        .current_dir(workspace::root().join("vagrant"))
        // What the user would get on a plain machine: the scripts' default URLs, no proxy.
        .env_remove("LB1_URL")
        .env_remove("LB2_URL")
        .env("no_proxy", "localhost,127.0.0.1,::1")
        .env("NO_PROXY", "localhost,127.0.0.1,::1");
    let output = command
        .output()
        .with_context(|| format!("could not run vagrant/{script}"))?;
    // Interrupted meanwhile: what the script printed is the teardown's doing, not the demo's.
    lifecycle::settle_if_interrupted();
    let printed = String::from_utf8_lossy(&output.stdout);
    print!("{printed}");
    if !printed.is_empty() && !printed.ends_with('\n') {
        println!();
    }
    if !check {
        return Ok(true);
    }
    match diff(&expected_output(from, backends), &printed) {
        None => {
            println!("ok");
            Ok(true)
        }
        Some(lines) => {
            println!("DIFFERS (- expected, + printed):");
            lines.iter().for_each(|line| println!("{line}"));
            Ok(false)
        }
    }
}

fn await_table(nodes: &Nodes, lb: Lb, sessions: RangeInclusive<u32>) -> anyhow::Result<bool> {
    let cookies = sessions
        .clone()
        .map(session_cookie)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (first, last) = (sessions.start(), sessions.end());
    let synced = nodes.wait_for_table(lb, &cookies)?;
    lifecycle::settle_if_interrupted();
    match synced {
        Some(took) => {
            println!(
                "{}'s pinned table has sessions {first}..{last} from its peer ({} ms)",
                lb.name(),
                took.as_millis()
            );
            Ok(true)
        }
        None => {
            println!(
                "{}'s pinned table still lacks sessions {first}..{last} after {SYNC_LIMIT:?}",
                lb.name()
            );
            Ok(false)
        }
    }
}

/// The JSESSIONID the access scripts send for `session`: the MD5 of `_<session>` in hex,
/// computed as vagrant/access.sh does.
fn session_cookie(session: u32) -> anyhow::Result<String> {
    let output = lifecycle::command("sh")
        .args(["-c", r#"printf '_%s' "$1" | md5sum"#, "sh"])
        .arg(session.to_string())
        .output()
        .context("could not run md5sum")?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.split_whitespace().next() {
        Some(hex) if output.status.success() && hex.len() == 32 => Ok(hex.to_owned()),
        _ => bail!("md5sum printed no digest for session {session}"),
    }
}
