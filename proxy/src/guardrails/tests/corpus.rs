//! The quality gate: precision and recall per group and category over the labelled
//! corpus in `tests/fixtures/guardrails/`, failing below `thresholds.yaml`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::super::{Category, Group, Scanner};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/guardrails");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    text: String,
    expect: Vec<Category>,
    #[serde(default)]
    #[expect(dead_code, reason = "documentation for humans reading the corpus")]
    note: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Minimum {
    precision: f64,
    recall: f64,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    tp: u32,
    fp: u32,
    fn_: u32,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }
    /// No predictions is perfect precision; no positives is perfect recall.
    fn precision(self) -> f64 {
        if self.tp + self.fp == 0 {
            1.0
        } else {
            f64::from(self.tp) / f64::from(self.tp + self.fp)
        }
    }
    fn recall(self) -> f64 {
        if self.tp + self.fn_ == 0 {
            1.0
        } else {
            f64::from(self.tp) / f64::from(self.tp + self.fn_)
        }
    }
}

fn read(name: &str) -> String {
    let path = format!("{DIR}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn corpus_meets_thresholds() {
    let corpus: Corpus = serde_yaml_ng::from_str(&read("corpus.yaml")).expect("corpus.yaml parses");
    let minimums: BTreeMap<Group, Minimum> =
        serde_yaml_ng::from_str(&read("thresholds.yaml")).expect("thresholds.yaml parses");
    assert!(
        corpus.cases.len() >= 150,
        "corpus has only {} cases",
        corpus.cases.len()
    );

    let scanner = Scanner::all();
    let mut per_cat: BTreeMap<Category, Counts> = BTreeMap::new();
    let mut misses = Vec::new();
    for case in &corpus.cases {
        let want: BTreeSet<Category> = case.expect.iter().copied().collect();
        let got: BTreeSet<Category> = scanner
            .scan(&case.text)
            .iter()
            .map(|f| f.category)
            .collect();
        for c in want.union(&got) {
            let e = per_cat.entry(*c).or_default();
            match (want.contains(c), got.contains(c)) {
                (true, true) => e.tp += 1,
                (false, true) => e.fp += 1,
                (true, false) => e.fn_ += 1,
                (false, false) => {}
            }
        }
        if want != got {
            misses.push(format!("  want {want:?} got {got:?}: {:?}", case.text));
        }
    }

    for c in Category::ALL {
        let positives = per_cat.get(&c).map_or(0, |n| n.tp + n.fn_);
        assert!(
            positives >= 2,
            "corpus needs at least two {c} cases, has {positives}"
        );
    }

    let mut per_group: BTreeMap<Group, Counts> = BTreeMap::new();
    println!(
        "{:<20} {:>4} {:>4} {:>4} {:>9} {:>7}",
        "category", "tp", "fp", "fn", "precision", "recall"
    );
    for (c, n) in &per_cat {
        per_group.entry(c.group()).or_default().add(*n);
        println!(
            "{:<20} {:>4} {:>4} {:>4} {:>9.3} {:>7.3}",
            c.as_str(),
            n.tp,
            n.fp,
            n.fn_,
            n.precision(),
            n.recall()
        );
    }
    println!("{}", "-".repeat(52));
    let mut failures = Vec::new();
    for (g, n) in &per_group {
        println!(
            "{:<20} {:>4} {:>4} {:>4} {:>9.3} {:>7.3}",
            g.as_str(),
            n.tp,
            n.fp,
            n.fn_,
            n.precision(),
            n.recall()
        );
        let min = minimums
            .get(g)
            .unwrap_or_else(|| panic!("thresholds.yaml lacks {}", g.as_str()));
        if n.precision() < min.precision || n.recall() < min.recall {
            failures.push(format!(
                "{}: precision {:.3} (min {}), recall {:.3} (min {})",
                g.as_str(),
                n.precision(),
                min.precision,
                n.recall(),
                min.recall
            ));
        }
    }
    println!(
        "{} cases, {} mismatched:\n{}",
        corpus.cases.len(),
        misses.len(),
        misses.join("\n")
    );
    assert!(
        failures.is_empty(),
        "below thresholds:\n{}",
        failures.join("\n")
    );
}
