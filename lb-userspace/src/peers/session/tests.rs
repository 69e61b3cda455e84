use std::time::Instant;

use super::*;

fn setup() -> Setup {
    Setup {
        tables: vec![TableDefinition::sticky_string(
            1,
            "back-session",
            32,
            1_800_000,
        )],
        timed: true,
        resume: Vec::new(),
    }
}

#[test]
fn a_new_session_asks_for_a_full_resync_first() {
    let now = Instant::now();
    let mut session = Session::new(setup(), now).unwrap();
    assert_eq!(session.poll_transmit(now).unwrap(), Some(vec![0x00, 0x00]));
    assert_eq!(session.poll_transmit(now).unwrap(), None);
    assert_eq!(session.state(), &State::Learning);
}
