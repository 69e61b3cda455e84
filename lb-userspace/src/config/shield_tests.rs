//! `[shield]`: off by default, `enabled`, `interfaces`, the SYN limit, and bad
//! values.

use super::{
    tests::{parse, problems, BASE},
    Shield,
};

#[test]
fn the_shield_is_off_unless_the_file_turns_it_on() {
    // BASE binds 0.0.0.0:8080: reachable from the network, still off by default.
    for bind in [
        "0.0.0.0:8080",
        "192.0.2.10:8080",
        "[2001:db8::1]:8080",
        "127.0.0.1:8080",
    ] {
        let config = BASE.replace("0.0.0.0:8080", bind);
        assert_eq!(parse(&config).unwrap().shield, Shield::default(), "{bind}");
        let on = parse(&format!("{config}\n[shield]\nenabled = true\n")).unwrap();
        let explicit = Shield {
            enabled: true,
            ..Shield::default()
        };
        assert_eq!(on.shield, explicit, "{bind}");
    }
    let off = parse(&format!("{BASE}\n[shield]\nenabled = false\n")).unwrap();
    assert_eq!(off.shield, Shield::default());
}

#[test]
fn shield_interfaces_are_names_given_once() {
    let config = parse(&format!(
        "{BASE}\n[shield]\nenabled = true\ninterfaces = [\"eth0\", \"eth1.10\"]\n"
    ))
    .unwrap();
    assert_eq!(config.shield.interfaces, ["eth0", "eth1.10"]);
    for (list, key) in [
        ("[]", "shield.interfaces"),
        ("[\"eth0\", \"eth0\"]", "shield.interfaces[1]"),
        ("[\"a/b\"]", "shield.interfaces[0]"),
    ] {
        let found = problems(&format!("{BASE}\n[shield]\ninterfaces = {list}\n"));
        assert!(found.iter().any(|p| p.key == key), "{list}: {found:?}");
    }
}

#[test]
fn the_syn_limit_defaults_to_200_per_second_and_400_at_once() {
    let config = parse(BASE).unwrap();
    assert_eq!(
        (config.shield.syn_rate, config.shield.syn_burst),
        (200, 400)
    );
    let config = parse(&format!("{BASE}\n[shield]\nsyn_rate = 10\nsyn_burst = 5\n")).unwrap();
    assert_eq!((config.shield.syn_rate, config.shield.syn_burst), (10, 5));
}

#[test]
fn syn_limits_out_of_range_are_refused_at_their_line() {
    let base_lines = BASE.lines().count();
    for (setting, key) in [
        ("syn_rate = 0", "shield.syn_rate"),
        ("syn_burst = 0", "shield.syn_burst"),
        ("syn_rate = -5", "shield.syn_rate"),
        ("syn_burst = 1000001", "shield.syn_burst"),
    ] {
        let found = problems(&format!("{BASE}\n[shield]\n{setting}\n"));
        let problem = found.iter().find(|p| p.key == key);
        let problem = problem.unwrap_or_else(|| panic!("{setting}: {found:?}"));
        assert!(
            problem.message.contains("out of range 1..=1000000"),
            "{problem:?}"
        );
        // BASE, the blank line, the section header, then the setting.
        assert_eq!(problem.line, Some(base_lines + 3), "{setting}: {problem:?}");
    }
}

#[test]
fn the_hook_defaults_to_auto_and_unknown_ones_are_refused() {
    use crate::config::ShieldHook;
    assert_eq!(parse(BASE).unwrap().shield.hook, ShieldHook::Auto);
    for (text, hook) in [
        ("auto", ShieldHook::Auto),
        ("xdp", ShieldHook::Xdp),
        ("tc", ShieldHook::Tc),
    ] {
        let config = parse(&format!("{BASE}\n[shield]\nhook = \"{text}\"\n")).unwrap();
        assert_eq!(config.shield.hook, hook);
        assert_eq!(hook.as_str(), text);
    }
    let found = problems(&format!("{BASE}\n[shield]\nhook = \"skb\"\n"));
    let problem = found.iter().find(|p| p.key == "shield.hook");
    let problem = problem.unwrap_or_else(|| panic!("{found:?}"));
    assert!(
        problem.message.contains("valid: auto, xdp, tc"),
        "{problem:?}"
    );
}
