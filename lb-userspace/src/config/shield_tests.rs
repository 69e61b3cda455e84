//! `[shield]`: on by default where a frontend binds an address the network reaches,
//! `enabled`, `interfaces`, the SYN limit, the hook, and bad values.

use super::{
    tests::{parse, problems, BASE},
    Shield,
};

#[test]
fn the_shield_is_on_by_default_where_a_frontend_binds_an_address_the_network_reaches() {
    let on_by_default = Shield {
        enabled: true,
        by_default: true,
        ..Shield::default()
    };
    let explicit = Shield {
        enabled: true,
        ..Shield::default()
    };
    // BASE binds 0.0.0.0:8080.
    for (bind, default) in [
        ("192.0.2.10:8080", &on_by_default),
        ("[2001:db8::1]:8080", &on_by_default),
        // A wildcard reaches the network too; loopback needs no shield.
        ("0.0.0.0:8080", &on_by_default),
        ("[::]:8080", &on_by_default),
        ("127.0.0.1:8080", &Shield::default()),
        ("[::1]:8080", &Shield::default()),
    ] {
        let config = BASE.replace("0.0.0.0:8080", bind);
        assert_eq!(&parse(&config).unwrap().shield, default, "{bind}");
        let on = parse(&format!("{config}\n[shield]\nenabled = true\n")).unwrap();
        assert_eq!(on.shield, explicit, "{bind}");
        let off = parse(&format!("{config}\n[shield]\nenabled = false\n")).unwrap();
        assert_eq!(off.shield, Shield::default(), "{bind}");
    }
    // One frontend the network reaches is enough.
    let two = format!(
        "{BASE}\n[[frontend]]\nname = \"public\"\nbind = \"192.0.2.10:80\"\nbackend = \"web\"\n"
    );
    assert_eq!(parse(&two).unwrap().shield, on_by_default);
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
