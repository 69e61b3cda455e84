//! What the kit's own tests share.

/// Whether the test can run: root is needed for network namespaces. Without it the test skips,
/// except under `CI` or `STICKYLB_REQUIRE_PRIVILEGED`, where it fails.
pub(crate) fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let required = ["CI", "STICKYLB_REQUIRE_PRIVILEGED"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"));
    assert!(
        !required,
        "this test needs root (network namespaces) and CI requires it"
    );
    eprintln!("skipping: not root (set CI=true to make this a failure)");
    false
}
