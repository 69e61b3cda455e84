use super::*;

fn lines(text: &[&str]) -> Vec<String> {
    text.iter().map(|line| (*line).to_owned()).collect()
}

#[test]
fn expected_output_is_the_original_demos() {
    assert_eq!(
        expected_output(21, NEXT_FIVE),
        lines(&[
            "00021 - Backend 6",
            "00022 - Backend 7",
            "00023 - Backend 1",
            "00024 - Backend 2",
            "00025 - Backend 3",
        ])
    );
    assert_eq!(expected_output(101, &[1])[0], "00101 - Backend 1");
    assert_eq!(last_session(101, FIRST_FIVE), 105);
    assert_eq!(last_session(7, &[]), 7);
}

#[test]
fn identical_output_has_no_diff() {
    let expected = expected_output(1, FIRST_FIVE);
    let actual = "00001 - Backend 1\n00002 - Backend 2\n00003 - Backend 3\n\
                  00004 - Backend 4\n00005 - Backend 5\n";
    assert_eq!(diff(&expected, actual), None);
}

#[test]
fn a_different_line_shows_both() {
    let expected = expected_output(1, &[1, 2]);
    let diff = diff(&expected, "00001 - Backend 1\n00002 - Backend 5\n");
    assert_eq!(
        diff,
        Some(lines(&[
            "  00001 - Backend 1",
            "- 00002 - Backend 2",
            "+ 00002 - Backend 5",
        ]))
    );
}

#[test]
fn missing_and_extra_lines_differ() {
    let expected = expected_output(1, &[1, 2]);
    assert_eq!(
        diff(&expected, "00001 - Backend 1\n"),
        Some(lines(&["  00001 - Backend 1", "- 00002 - Backend 2"]))
    );
    assert_eq!(
        diff(
            &expected,
            "00001 - Backend 1\n00002 - Backend 2\ncurl: (52) Empty reply from server\n"
        ),
        Some(lines(&[
            "  00001 - Backend 1",
            "  00002 - Backend 2",
            "+ curl: (52) Empty reply from server",
        ]))
    );
    // A request that failed mid-line: curl's error after the session number.
    assert!(diff(&expected, "00001 - Backend 1\n00002 - curl: (7) Failed\n").is_some());
}

#[test]
fn the_story_follows_the_seed() {
    let story = story();
    assert_eq!(story.len(), 6);
    let accesses: Vec<(Lb, u32, &[u32])> = story
        .iter()
        .flat_map(|step| &step.actions)
        .filter_map(|action| match *action {
            Action::Access { lb, from, backends } => Some((lb, from, backends)),
            _ => None,
        })
        .collect();
    assert_eq!(
        accesses[..6],
        [
            (Lb::One, 1, FIRST_FIVE),
            (Lb::One, 1, FIRST_FIVE),
            (Lb::Two, 101, FIRST_FIVE),
            (Lb::One, 101, FIRST_FIVE),
            (Lb::One, 21, NEXT_FIVE),
            (Lb::Two, 21, NEXT_FIVE),
        ]
    );
    // From step 5 on, every access asks for sessions 21..25, whatever happened to the lbs.
    assert!(accesses[6..]
        .iter()
        .all(|&(_, from, backends)| from == 21 && backends == NEXT_FIVE));
    // Every lb that is stopped or killed is started again before the story ends.
    for lb in Lb::ALL {
        let last = story
            .iter()
            .flat_map(|step| &step.actions)
            .rev()
            .find(|action| {
                matches!(action, Action::Stop(l) | Action::Kill(l) | Action::Start(l) if *l == lb)
            });
        assert!(
            matches!(last, None | Some(Action::Start(_))),
            "{lb:?} ends stopped"
        );
    }
}

#[test]
fn outcome_summarizes_differing_steps() {
    let mut outcome = Outcome::default();
    outcome.record(1, true);
    outcome.record(2, true);
    assert_eq!(outcome.summary(), "all 2 steps as expected");
    assert!(Outcome::default().into_result(true).is_ok());

    let mut outcome = Outcome::default();
    outcome.record(1, true);
    outcome.record(2, false);
    outcome.record(3, false);
    assert_eq!(
        outcome.summary(),
        "2 of 3 steps differ from the expected output: 2, 3"
    );
    // Without --check nothing is compared, so nothing fails.
    let mut shown_only = Outcome::default();
    shown_only.record(1, false);
    assert!(shown_only.into_result(false).is_ok());
    assert!(outcome.into_result(true).is_err());
}
