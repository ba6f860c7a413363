//! The witness protocol, request by request, on a real store in a temporary directory.

use super::*;
use crate::tlog::merkle::{Frontier, Tree};

struct Log {
    signer: NoteSigner,
    tree: Tree,
}

impl Log {
    fn new(origin: &str, seed: u8) -> Log {
        Log {
            signer: NoteSigner {
                name: origin.into(),
                key: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
            },
            tree: Tree::new(Frontier::default()),
        }
    }
    fn grow(&mut self, n: u64) {
        for _ in 0..n {
            let i = self.tree.size();
            self.tree.push(Sha256::digest(i.to_be_bytes()).into());
        }
    }
    fn checkpoint(&self, size: u64) -> String {
        let text = CheckpointText {
            origin: self.signer.name.clone(),
            size,
            root: self.tree.root(size).unwrap(),
        }
        .render();
        Note {
            signatures: vec![self.signer.sign(&text)],
            text,
        }
        .render()
    }
    fn body(&self, old: u64, size: u64) -> String {
        let proof = self.tree.consistency_proof(old, size).unwrap();
        add_checkpoint_body(old, &proof, &self.checkpoint(size))
    }
}

fn store(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-witness-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn lines(text: &str) -> usize {
    text.lines().count()
}

#[test]
fn the_witness_cosigns_only_append_only_growth_and_keeps_refusals_as_evidence() {
    let dir = store("protocol");
    let mut log = Log::new("sluice/node-a", 1);
    let w = Witness::open(&dir, "witness.test/w1", vec![log.signer.verifier()]).unwrap();
    let wv = NoteVerifier::parse_vkey(&w.vkey()).unwrap();
    let id = log_id("sluice/node-a");
    log.grow(10);

    // First contact: old 0, no proof.
    let r = w.add_checkpoint(&log.body(0, 10));
    assert_eq!(r.status, 200, "{r:?}");
    let mut cosigned = Note::parse(&log.checkpoint(10)).unwrap();
    cosigned
        .signatures
        .extend(Note::parse(&format!("x\n\n{}", r.body)).unwrap().signatures);
    assert!(cosigned.cosigned_by(&wv).is_some(), "{}", r.body);

    // Growth with a valid consistency proof.
    log.grow(7);
    assert_eq!(w.add_checkpoint(&log.body(10, 17)).status, 200);
    // The same head again is cosigned again (a retry after a lost answer).
    assert_eq!(w.add_checkpoint(&log.body(17, 17)).status, 200);

    // A stale old size: 409 with the size held, nothing kept as evidence.
    let r = w.add_checkpoint(&log.body(10, 17));
    assert_eq!(
        (r.status, r.content_type, r.body.as_str()),
        (409, "text/x.tlog.size", "17\n")
    );
    assert_eq!(lines(&w.read(&id, "evidence").body), 0);

    // A rewound or rewritten ledger: same origin and key, another tree.
    let mut forked = Log::new("sluice/node-a", 1);
    forked.tree.push([9; 32]);
    forked.grow(19);
    let r = w.add_checkpoint(&forked.body(0, 17));
    assert_eq!(r.status, 409, "a different root at a size held: {r:?}");
    let proof = forked.tree.consistency_proof(17, 20).unwrap();
    let r = w.add_checkpoint(&add_checkpoint_body(17, &proof, &forked.checkpoint(20)));
    assert_eq!(r.status, 422, "a proof from another tree: {r:?}");
    // Another key under the node's origin.
    let mut stranger = Log::new("sluice/node-a", 2);
    stranger.grow(20);
    assert_eq!(w.add_checkpoint(&stranger.body(17, 20)).status, 403);
    let evidence = w.read(&id, "evidence").body;
    assert_eq!(lines(&evidence), 3, "{evidence}");
    assert!(evidence.contains("fork") && evidence.contains("consistency proof"));

    // Not this witness's business, or not a request at all.
    let other = Log::new("sluice/node-b", 3);
    assert_eq!(w.add_checkpoint(&other.body(0, 0)).status, 404);
    for bad in ["", "old 1\n\n", "old 01\n\nx", "old 0\n!!\n\nx"] {
        assert_eq!(w.add_checkpoint(bad).status, 400, "{bad:?}");
    }

    // The history holds each cosigned head, and survives a restart.
    let history = w.read(&id, "history").body;
    assert_eq!(lines(&history), 3, "{history}");
    drop(w);
    let w = Witness::open(&dir, "witness.test/w1", vec![log.signer.verifier()]).unwrap();
    assert_eq!(
        NoteVerifier::parse_vkey(&w.vkey()).unwrap(),
        wv,
        "the key is kept"
    );
    log.grow(3);
    let r = w.add_checkpoint(&log.body(0, 20));
    assert_eq!((r.status, r.body.as_str()), (409, "17\n"));
    assert_eq!(w.add_checkpoint(&log.body(17, 20)).status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
