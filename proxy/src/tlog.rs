//! Transparency-log building blocks shared by the ledger (which writes checkpoints) and
//! `sluice witness` (which cosigns them): the RFC 6962 Merkle tree with its proofs, and
//! the C2SP signed-note, checkpoint and cosignature formats.

pub mod merkle;
pub mod note;
