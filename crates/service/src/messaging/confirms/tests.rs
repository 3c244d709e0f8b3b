//! When an outcome is certain: the rules of `Driver::settle`, without a broker.

use super::*;

/// A publish whose confirm was found in sweep `found`, saying `heard`; its outcome.
fn heard(driver: &mut Driver, id: &str, heard: Heard, found: u64) -> Pending {
    let (reply, outcome) = oneshot::channel();
    driver.entries.push(Entry {
        id: Some(id.into()),
        reply: Some(reply),
        confirm: None,
        deadline: None,
        began: 0,
        last_pending: None,
        heard: Some((heard, found)),
    });
    Pending(outcome)
}

fn given(pending: &mut Pending) -> Option<Published> {
    pending.0.try_recv().ok().map(|r| r.expect("an outcome"))
}

fn ack(brought_none: bool) -> Heard {
    Heard::Ack { brought_none }
}

#[test]
fn a_confirm_that_brought_no_return_is_routed_after_a_full_sweep_with_nothing_older_open() {
    let mut d = Driver::default();
    let mut p = heard(&mut d, "a", ack(true), 3);
    d.settle(3, None, false);
    assert_eq!(given(&mut p), None, "not in the sweep that found it");
    d.settle(4, Some(2), false);
    assert_eq!(
        given(&mut p),
        None,
        "a publish begun before it is still open"
    );
    d.settle(5, Some(4), false);
    assert_eq!(given(&mut p), Some(Published::Routed));
}

#[test]
fn a_return_goes_to_the_publish_whose_id_it_carries_whichever_confirm_brought_it() {
    let mut d = Driver::default();
    // b's confirm brought a's return; a's own brought none.
    let mut a = heard(&mut d, "a", ack(true), 1);
    let mut b = heard(&mut d, "b", ack(false), 1);
    d.returned
        .entry("a".into())
        .or_default()
        .push_back("NO_ROUTE".into());
    d.settle(1, None, false);
    assert_eq!(
        given(&mut a),
        Some(Published::Unroutable("NO_ROUTE".into()))
    );
    assert_eq!(given(&mut b), None, "b's own return may still be waiting");
    d.settle(2, None, false);
    assert_eq!(given(&mut b), None, "no witness yet");
    // A confirm that brought none, found in sweep 3 and unresolved in sweep 2: every
    // return of a publish found in sweep 1 was taken before it.
    d.witnesses.push((3, 1));
    d.settle(3, None, false);
    assert_eq!(given(&mut b), None, "usable after the sweep that found it");
    d.settle(4, None, false);
    assert_eq!(given(&mut b), Some(Published::Routed));
}

#[test]
fn a_witness_covers_only_what_was_found_before_it_and_quiet_the_rest_unless_broken() {
    for broken in [false, true] {
        let mut d = Driver {
            broken,
            ..Driver::default()
        };
        let mut late = heard(&mut d, "late", ack(false), 5);
        d.witnesses.push((6, 4));
        d.settle(7, None, false);
        assert_eq!(
            given(&mut late),
            None,
            "found after the witness was unresolved"
        );
        // Quiet: nothing is waiting, every return was seen — unless the channel broke and
        // lapin resolved the rest without taking the returns waiting.
        d.settle(8, None, true);
        let outcome = late.0.try_recv().expect("given").ok();
        assert_eq!(
            outcome,
            (!broken).then_some(Published::Routed),
            "broken: {broken}"
        );
    }
}

#[test]
fn nacks_timeouts_and_failures_are_given_at_once() {
    let mut d = Driver::default();
    let mut n = heard(&mut d, "n", Heard::Nack, 1);
    let mut t = heard(&mut d, "t", Heard::TimedOut, 1);
    let mut f = heard(&mut d, "f", Heard::Failed(closed()), 1);
    d.settle(1, Some(0), false);
    assert_eq!(given(&mut n), Some(Published::Nacked));
    assert_eq!(given(&mut t), Some(Published::TimedOut));
    assert!(f.0.try_recv().expect("given").is_err());
}
