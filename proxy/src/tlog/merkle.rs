//! The RFC 6962 Merkle tree over the ledger's records (section 2.1; the verification
//! algorithms of RFC 9162 section 2.1.3 and 2.1.4).
//!
//! Leaf `i` (0-based) is record `seq = i + 1`, and its leaf input is that record's
//! 32-byte chain hash, so a tree of size `n` covers records `1..=n`:
//!
//! ```text
//! leaf  = SHA-256(0x00 ‖ record hash)
//! node  = SHA-256(0x01 ‖ left ‖ right)
//! empty = SHA-256("")
//! ```
//!
//! What it proves, beside the chain: a checkpoint (tree head) commits to every record
//! before it, an **inclusion proof** shows one record is under a head without the rest of
//! the ledger, and a **consistency proof** shows a later head only appended to an earlier
//! one, which is what a witness checks before it cosigns.
//!
//! Retention deletes a prefix of the records. What survives of the pruned part is its
//! [`Frontier`] (the roots of the perfect subtrees that tile it, at most 64 hashes),
//! kept in the hashed retention record; [`Tree`] computes every subtree hash a proof
//! can need from that frontier plus the leaves after it, for any old size at or past the
//! prune point.

use sha2::{Digest, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// The root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// The leaf hash of a record's 32-byte chain hash.
pub fn leaf_hash(record_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(record_hash);
    h.finalize().into()
}

/// An interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The perfect subtrees that tile `[0, size)`, left to right (largest first): what an
/// append-only writer keeps to compute the root in O(log n) per leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// One root per set bit of `size`, from the highest bit down.
    roots: Vec<Hash>,
}

impl Frontier {
    /// Rebuild from a stored size and roots; `None` when their number does not match the
    /// size's set bits.
    pub fn from_parts(size: u64, roots: Vec<Hash>) -> Option<Frontier> {
        (roots.len() == size.count_ones() as usize).then_some(Frontier { size, roots })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn roots(&self) -> &[Hash] {
        &self.roots
    }

    /// Append one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        // Each trailing one bit of the old size is a perfect subtree the new leaf
        // completes a larger one with.
        let mut s = self.size;
        while s & 1 == 1 {
            let left = self.roots.pop().unwrap_or_default();
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.roots.push(h);
        self.size += 1;
    }

    /// The tree head: the subtree roots folded right to left.
    pub fn root(&self) -> Hash {
        let mut it = self.roots.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// The subtree ranges `[start, end)` the roots stand for, in order.
    fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut start = 0;
        (0..64).rev().filter_map(move |bit| {
            let width = 1u64 << bit;
            (self.size & width != 0).then(|| {
                let r = (start, start + width);
                start += width;
                r
            })
        })
    }
}

/// Why a proof cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("tree size {size} is beyond the {have} leaves known")]
    TooLarge { size: u64, have: u64 },
    #[error("leaf or old size {at} lies in the part pruned by retention (before {pruned})")]
    Pruned { at: u64, pruned: u64 },
    #[error("index {index} is not below tree size {size}")]
    OutOfRange { index: u64, size: u64 },
}

/// A tree whose first `base.size()` leaves may be gone (retention), the rest held as
/// leaf hashes.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    base: Frontier,
    leaves: Vec<Hash>,
    /// Optional cache of perfect subtree hashes by level: `(first index, hashes)`, level
    /// 0 the leaf hashes; see [`Tree::cache`].
    levels: Vec<(u64, Vec<Hash>)>,
}

impl Tree {
    /// A tree starting at `base` (the empty frontier for a ledger never pruned).
    pub fn new(base: Frontier) -> Tree {
        Tree {
            base,
            leaves: Vec::new(),
            levels: Vec::new(),
        }
    }

    /// Hash every perfect subtree past the pruned part once (about twice the leaves'
    /// memory), so each proof afterwards costs O(log n) instead of O(n): for making many
    /// proofs over one tree, as an export with proofs does. Leaves pushed afterwards
    /// drop the cache.
    pub fn cache(&mut self) {
        self.levels.clear();
        let mut off = self.base.size;
        let mut cur: Vec<Hash> = self.leaves.iter().map(leaf_hash).collect();
        while !cur.is_empty() {
            // Nodes of the next level whose both children are here (and aligned).
            let next_off = off.div_ceil(2);
            let end = (off + cur.len() as u64) / 2;
            let next: Vec<Hash> = (next_off..end)
                .map(|j| {
                    let l = (2 * j - off) as usize;
                    node_hash(&cur[l], &cur[l + 1])
                })
                .collect();
            self.levels.push((off, std::mem::replace(&mut cur, next)));
            off = next_off;
        }
    }

    fn cached(&self, s: u64, n: u64) -> Option<Hash> {
        if !n.is_power_of_two() || s % n != 0 {
            return None;
        }
        let (off, v) = self.levels.get(n.trailing_zeros() as usize)?;
        v.get(usize::try_from((s / n).checked_sub(*off)?).ok()?)
            .copied()
    }

    /// Leaves known (pruned ones included).
    pub fn size(&self) -> u64 {
        self.base.size + self.leaves.len() as u64
    }

    /// The first leaf still held.
    pub fn pruned(&self) -> u64 {
        self.base.size
    }

    pub fn push(&mut self, leaf: Hash) {
        self.leaves.push(leaf);
        self.levels.clear();
    }

    /// The hash of leaves `[s, e)`, when it can be computed.
    fn mth(&self, s: u64, e: u64) -> Option<Hash> {
        let p = self.base.size;
        let n = e - s;
        if n == 0 {
            return Some(empty_root());
        }
        if let Some(h) = self.cached(s, n) {
            return Some(h);
        }
        if s >= p {
            let i = usize::try_from(s - p).ok()?;
            if n == 1 {
                return Some(leaf_hash(self.leaves.get(i)?));
            }
        } else if e <= p {
            if let Some(i) = self.base.ranges().position(|r| r == (s, e)) {
                return self.base.roots.get(i).copied();
            }
            if n.is_power_of_two() {
                return None; // inside a pruned subtree
            }
        }
        let k = split(n);
        Some(node_hash(&self.mth(s, s + k)?, &self.mth(s + k, e)?))
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::TooLarge {
                size,
                have: self.size(),
            });
        }
        Ok(())
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        self.mth(0, size).ok_or(ProofError::Pruned {
            at: size,
            pruned: self.pruned(),
        })
    }

    /// RFC 6962 `PATH(index, D[size])`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::OutOfRange { index, size });
        }
        if index < self.pruned() {
            return Err(ProofError::Pruned {
                at: index,
                pruned: self.pruned(),
            });
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out)
            .ok_or(ProofError::Pruned {
                at: index,
                pruned: self.pruned(),
            })?;
        Ok(out)
    }

    fn path(&self, m: u64, s: u64, e: u64, out: &mut Vec<Hash>) -> Option<()> {
        let n = e - s;
        if n <= 1 {
            return Some(());
        }
        let k = split(n);
        if m < k {
            self.path(m, s, s + k, out)?;
            out.push(self.mth(s + k, e)?);
        } else {
            self.path(m - k, s + k, e, out)?;
            out.push(self.mth(s, s + k)?);
        }
        Some(())
    }

    /// RFC 6962 `PROOF(old, D[size])`.
    pub fn consistency_proof(&self, old: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if old > size {
            return Err(ProofError::OutOfRange { index: old, size });
        }
        let mut out = Vec::new();
        if old == 0 || old == size {
            return Ok(out);
        }
        if old < self.pruned() {
            return Err(ProofError::Pruned {
                at: old,
                pruned: self.pruned(),
            });
        }
        self.subproof(old, 0, size, true, &mut out)
            .ok_or(ProofError::Pruned {
                at: old,
                pruned: self.pruned(),
            })?;
        Ok(out)
    }

    fn subproof(&self, m: u64, s: u64, e: u64, whole: bool, out: &mut Vec<Hash>) -> Option<()> {
        let n = e - s;
        if m == n {
            if !whole {
                out.push(self.mth(s, e)?);
            }
            return Some(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, s, s + k, whole, out)?;
            out.push(self.mth(s + k, e)?);
        } else {
            self.subproof(m - k, s + k, e, false, out)?;
            out.push(self.mth(s, s + k)?);
        }
        Some(())
    }
}

/// RFC 9162 2.1.3.2: does `proof` show `leaf` at `index` under `root` of a tree of `size`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 2.1.4.2: does `proof` show the tree of `size2` (root `root2`) extends the
/// tree of `size1` (root `root1`)?
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> bool {
    if size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if size1 == 0 {
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (size1 - 1, size2 - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *root1 && sr == *root2 && sn == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference definition, straight from RFC 6962 2.1, over raw leaf inputs.
    fn reference(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference(&leaves[..k]), &reference(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect()
    }

    fn tree(base: u64, all: &[Hash]) -> Tree {
        let mut f = Frontier::default();
        for l in &all[..base as usize] {
            f.push(leaf_hash(l));
        }
        let mut t = Tree::new(f);
        for l in &all[base as usize..] {
            t.push(*l);
        }
        t
    }

    #[test]
    fn known_roots() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 leaf of the empty input: SHA-256(0x00).
        let mut f = Frontier::default();
        f.push(Sha256::digest([0u8]).into());
        assert_eq!(
            hex::encode(f.root()),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn frontier_and_tree_roots_match_the_definition() {
        let all = leaves(70);
        let mut f = Frontier::default();
        for n in 0..=70u64 {
            let want = reference(&all[..n as usize]);
            assert_eq!(f.root(), want, "frontier at {n}");
            assert_eq!(tree(0, &all).root(n).unwrap(), want, "tree at {n}");
            if (n as usize) < all.len() {
                f.push(leaf_hash(&all[n as usize]));
            }
        }
        let again = Frontier::from_parts(f.size(), f.roots().to_vec()).unwrap();
        assert_eq!(again.root(), f.root());
        assert!(Frontier::from_parts(3, vec![[0; 32]]).is_none());
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_a_changed_one_does_not() {
        let all = leaves(33);
        let t = tree(0, &all);
        for size in 1..=33u64 {
            let root = t.root(size).unwrap();
            for i in 0..size {
                let p = t.inclusion_proof(i, size).unwrap();
                let leaf = leaf_hash(&all[i as usize]);
                assert!(verify_inclusion(&leaf, i, size, &p, &root), "{i}/{size}");
                let other = leaf_hash(&all[(i as usize + 1) % 33]);
                assert!(!verify_inclusion(&other, i, size, &p, &root));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(&leaf, i, size, &bad, &root));
                }
            }
            for old in 0..=size {
                let p = t.consistency_proof(old, size).unwrap();
                let r1 = t.root(old).unwrap();
                assert!(
                    verify_consistency(old, size, &p, &r1, &root),
                    "{old}->{size}"
                );
                if old > 0 && old < size {
                    assert!(!verify_consistency(old, size, &p, &root, &root));
                    let mut wrong = all[..size as usize].to_vec();
                    wrong[old as usize - 1][0] ^= 1;
                    let forked = reference(&wrong);
                    assert!(!verify_consistency(old, size, &p, &r1, &forked));
                }
            }
        }
    }

    #[test]
    fn a_pruned_tree_proves_what_its_frontier_allows() {
        let all = leaves(50);
        let full = tree(0, &all);
        for base in [1u64, 6, 16, 21, 37] {
            let t = tree(base, &all);
            for size in base..=50 {
                assert_eq!(t.root(size).unwrap(), full.root(size).unwrap());
                for old in base..=size {
                    assert_eq!(
                        t.consistency_proof(old, size).unwrap(),
                        full.consistency_proof(old, size).unwrap()
                    );
                }
                for i in base..size {
                    assert_eq!(
                        t.inclusion_proof(i, size).unwrap(),
                        full.inclusion_proof(i, size).unwrap()
                    );
                }
            }
            if base > 1 {
                assert!(matches!(
                    t.inclusion_proof(0, 50),
                    Err(ProofError::Pruned { .. })
                ));
            }
        }
        assert!(matches!(
            full.root(51),
            Err(ProofError::TooLarge { size: 51, have: 50 })
        ));
        // The subtree cache changes nothing but the cost.
        for base in [0u64, 1, 6, 21] {
            let plain = tree(base, &all);
            let mut cached = plain.clone();
            cached.cache();
            assert!(!cached.levels.is_empty());
            for size in base.max(1)..=50 {
                assert_eq!(cached.root(size), plain.root(size));
                for i in base..size {
                    assert_eq!(
                        cached.inclusion_proof(i, size),
                        plain.inclusion_proof(i, size)
                    );
                }
                for old in base..=size {
                    assert_eq!(
                        cached.consistency_proof(old, size),
                        plain.consistency_proof(old, size)
                    );
                }
            }
        }
    }
}
