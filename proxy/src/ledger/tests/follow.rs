//! `follow::Follower`: one kept connection follows the ledger as it grows.

use super::*;
use crate::ledger::follow::{self, Follower};

#[test]
fn a_kept_follower_sees_what_is_appended_after_it_opened_and_recovers_from_a_missing_index() {
    let tmp = TempDir::new("follower");
    let dir = tmp.ledger();
    let mut f = Follower::new(&dir);
    // No ledger yet: an error naming it, and the follower is not stuck on it.
    assert!(matches!(f.head_seq(), Err(LedgerError::NotFound { .. })));

    let l = Ledger::open(&cfg(&dir)).unwrap();
    for i in 0..3 {
        l.append(&interaction(i)).unwrap();
    }
    l.flush();
    let head = f.head_seq().unwrap();
    assert!(head >= 3, "the records and the ledger's own: {head}");
    let first = f.metadata_after(0, 1000).unwrap();
    assert_eq!(first.len() as i64, head);
    assert!(first.iter().all(|r| r.content.is_none()));

    // Appended after the follower's connection opened: the same connection reads them,
    // exactly as a fresh reader does, content and all.
    for i in 3..8 {
        l.append(&interaction(i)).unwrap();
    }
    l.flush();
    let after = f.stored_after(head, 1000).unwrap();
    let fresh = follow::stored_after(&dir, head, 1000).unwrap();
    assert_eq!(after.len(), 5);
    assert_eq!(
        after
            .iter()
            .map(|r| (r.seq, &r.meta, &r.content, &r.hash))
            .collect::<Vec<_>>(),
        fresh
            .iter()
            .map(|r| (r.seq, &r.meta, &r.content, &r.hash))
            .collect::<Vec<_>>()
    );
    assert!(after.iter().all(|r| r.content.is_some()));
    assert_eq!(f.head_seq().unwrap(), after.last().unwrap().seq);
    // A batch limit and a cursor past the head.
    assert_eq!(f.metadata_after(0, 2).unwrap().len(), 2);
    assert!(f.metadata_after(i64::MAX - 1, 10).unwrap().is_empty());
    l.close().unwrap();
}
