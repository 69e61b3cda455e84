//! bpftool's JSON output, for what the bench reads of pinned maps and attached programs.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// `bpftool ARGS LAST --json`, parsed.
pub(super) fn bpftool(args: &[&str], last: &Path) -> anyhow::Result<serde_json::Value> {
    let output = Command::new("bpftool")
        .args(args)
        .arg(last)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .context("could not run bpftool")?;
    if !output.status.success() {
        bail!(
            "bpftool {} {} failed: {}",
            args.join(" "),
            last.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("bpftool's JSON")
}

/// The unsigned number `key` of a bpftool object.
pub(super) fn number(value: &serde_json::Value, key: &str) -> anyhow::Result<u64> {
    value
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no {key} in {value}"))
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn reads_numbers_from_bpftool_json() {
        let program: serde_json::Value =
            serde_json::from_str(r#"{"id":7,"type":"sched_cls","run_time_ns":1500,"run_cnt":3}"#)
                .unwrap();
        assert_eq!(number(&program, "run_time_ns").unwrap(), 1500);
        assert!(number(&program, "prog_id").is_err());
        let map: serde_json::Value = serde_json::from_str(
            r#"{"id":12,"type":"lru_hash","bytes_key":48,"bytes_memlock":171966464}"#,
        )
        .unwrap();
        assert_eq!(number(&map, "bytes_memlock").unwrap(), 171_966_464);
    }
}
