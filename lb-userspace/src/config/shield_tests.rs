//! `[shield]`: off by default, `enabled` and `interfaces`, and bad interface lists.

use super::{
    tests::{parse, problems, BASE},
    Shield,
};

#[test]
fn the_shield_is_off_unless_enabled() {
    assert_eq!(parse(BASE).unwrap().shield, Shield::default());
    let config = parse(&format!("{BASE}\n[shield]\nenabled = true\n")).unwrap();
    assert_eq!(
        config.shield,
        Shield {
            enabled: true,
            interfaces: Vec::new()
        }
    );
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
