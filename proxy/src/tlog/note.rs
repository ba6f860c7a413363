//! Checkpoints as the transparency-log ecosystem writes them, so tools and witnesses that
//! already exist can check Sluice's ledger:
//!
//! - C2SP `signed-note`: a UTF-8 text, a blank line, then signature lines
//!   `— <key name> base64(key id ‖ signature)`; an Ed25519 key id is
//!   `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)[:4]`, and keys are exchanged as *vkeys*
//!   `<name>+<hex key id>+base64(0x01 ‖ public key)`.
//! - C2SP `tlog-checkpoint`: the note text is three lines, the origin (this ledger's
//!   name), the tree size and the base64 RFC 6962 root hash ([`super::merkle`]).
//! - C2SP `tlog-cosignature` v1: a witness signs `cosignature/v1\ntime <t>\n` followed by
//!   the checkpoint text, with key id `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[:4]` and
//!   the signature field `u64 timestamp (big-endian) ‖ Ed25519 signature`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The signature-line prefix: U+2014 EM DASH and a space.
const DASH: &str = "\u{2014} ";
/// Signature type of an Ed25519 note signature.
const ALG_ED25519: u8 = 0x01;
/// Signature type of an Ed25519 `cosignature/v1`.
const ALG_COSIGNATURE_V1: u8 = 0x04;

/// Why a note, a checkpoint or a key does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoteError(String);

fn bad(why: impl Into<String>) -> NoteError {
    NoteError(why.into())
}

/// A key name must be non-empty and hold no space, `+` or newline.
fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '+') {
        return Err(bad(format!(
            "key name `{name}` must be non-empty and hold no whitespace or `+`"
        )));
    }
    Ok(())
}

fn key_id(name: &str, alg: u8, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(public.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// `<name>+<hex key id>+<base64(alg ‖ key)>`.
fn vkey_text(name: &str, alg: u8, key: &VerifyingKey) -> String {
    let mut material = vec![alg];
    material.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, alg, key)),
        B64.encode(material)
    )
}

/// A named Ed25519 public key, as a verifier holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    /// The key name (for a ledger: its origin; for a witness: its name).
    pub name: String,
    /// The public key.
    pub key: VerifyingKey,
}

impl NoteVerifier {
    /// The signer's vkey: `<name>+<hex key id>+<base64(0x01 ‖ key)>`.
    pub fn vkey(&self) -> String {
        vkey_text(&self.name, ALG_ED25519, &self.key)
    }

    /// Parse a vkey (checking its key id), as `sluice witness --log` and
    /// `audit verify --witness-key` take them.
    ///
    /// # Errors
    /// What is wrong with the text.
    pub fn parse_vkey(text: &str) -> Result<NoteVerifier, NoteError> {
        let text = text.trim();
        // Names hold no `+`; base64 may.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(format!(
                "`{text}` is not a vkey `<name>+<hex key id>+<base64 key>`"
            )));
        };
        check_name(name)?;
        let material = B64
            .decode(material)
            .map_err(|e| bad(format!("vkey `{text}`: key is not base64: {e}")))?;
        let (alg, key) = material
            .split_first()
            .ok_or_else(|| bad(format!("vkey `{text}`: empty key")))?;
        // A witness's key is shared as a cosignature (0x04) or plain Ed25519 (0x01) vkey.
        if *alg != ALG_ED25519 && *alg != ALG_COSIGNATURE_V1 {
            return Err(bad(format!(
                "vkey `{text}`: signature type {alg:#04x} is not Ed25519 (0x01) or cosignature/v1 (0x04)"
            )));
        }
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| bad(format!("vkey `{text}`: an Ed25519 key is 32 bytes")))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|e| bad(format!("vkey `{text}`: not an Ed25519 point: {e}")))?;
        if hex::encode(key_id(name, *alg, &key)) != id {
            return Err(bad(format!(
                "vkey `{text}`: key id {id} does not match the name and key"
            )));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            key,
        })
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLine {
    pub name: String,
    pub key_id: [u8; 4],
    pub signature: Vec<u8>,
}

impl SignatureLine {
    /// The line, newline-terminated.
    pub fn render(&self) -> String {
        let mut b = self.key_id.to_vec();
        b.extend_from_slice(&self.signature);
        format!("{DASH}{} {}\n", self.name, B64.encode(b))
    }

    fn parse(line: &str) -> Result<SignatureLine, NoteError> {
        let rest = line
            .strip_prefix(DASH)
            .ok_or_else(|| bad(format!("signature line `{line}` does not start with `— `")))?;
        let (name, sig) = rest
            .split_once(' ')
            .ok_or_else(|| bad(format!("signature line `{line}` has no signature")))?;
        check_name(name)?;
        let b = B64
            .decode(sig)
            .map_err(|e| bad(format!("signature line `{line}`: not base64: {e}")))?;
        if b.len() < 5 {
            return Err(bad(format!("signature line `{line}` is too short")));
        }
        Ok(SignatureLine {
            name: name.to_owned(),
            key_id: [b[0], b[1], b[2], b[3]],
            signature: b[4..].to_vec(),
        })
    }
}

/// A signed note: its text (ending in a newline) and signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<SignatureLine>,
}

impl Note {
    /// Parse `text\n\n— sig…\n`.
    ///
    /// # Errors
    /// What is malformed.
    pub fn parse(note: &str) -> Result<Note, NoteError> {
        if note.contains(|c: char| c.is_control() && c != '\n') {
            return Err(bad("a note holds no control characters other than newline"));
        }
        let at = note
            .rfind("\n\n")
            .ok_or_else(|| bad("a note is its text, a blank line and signature lines"))?;
        let text = &note[..=at];
        let sigs = &note[at + 2..];
        if !sigs.ends_with('\n') || sigs.len() < 2 {
            return Err(bad("a note's signature lines end in a newline"));
        }
        let signatures = sigs
            .lines()
            .map(SignatureLine::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    pub fn render(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.render());
        }
        s
    }

    /// Whether a signature by `v` (plain Ed25519 note signature) verifies.
    pub fn signed_by(&self, v: &NoteVerifier) -> bool {
        let id = key_id(&v.name, ALG_ED25519, &v.key);
        self.signatures.iter().any(|s| {
            s.name == v.name
                && s.key_id == id
                && <[u8; 64]>::try_from(s.signature.as_slice()).is_ok_and(|sig| {
                    v.key
                        .verify(
                            self.text.as_bytes(),
                            &ed25519_dalek::Signature::from_bytes(&sig),
                        )
                        .is_ok()
                })
        })
    }

    /// The time of a valid `cosignature/v1` by `v`, if the note carries one.
    pub fn cosigned_by(&self, v: &NoteVerifier) -> Option<u64> {
        let id = key_id(&v.name, ALG_COSIGNATURE_V1, &v.key);
        self.signatures.iter().find_map(|s| {
            if s.name != v.name || s.key_id != id || s.signature.len() != 72 {
                return None;
            }
            let time = u64::from_be_bytes(s.signature[..8].try_into().ok()?);
            let sig: [u8; 64] = s.signature[8..].try_into().ok()?;
            v.key
                .verify(
                    cosigned_message(&self.text, time).as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&sig),
                )
                .is_ok()
                .then_some(time)
        })
    }
}

fn cosigned_message(text: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// A named Ed25519 signer.
pub struct NoteSigner {
    pub name: String,
    pub key: SigningKey,
}

impl NoteSigner {
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// A plain note signature over `text`.
    pub fn sign(&self, text: &str) -> SignatureLine {
        SignatureLine {
            name: self.name.clone(),
            key_id: key_id(&self.name, ALG_ED25519, &self.key.verifying_key()),
            signature: self.key.sign(text.as_bytes()).to_bytes().to_vec(),
        }
    }

    /// A `cosignature/v1` over `text` at `time` (seconds since the epoch).
    pub fn cosign(&self, text: &str, time: u64) -> SignatureLine {
        let sig = self.key.sign(cosigned_message(text, time).as_bytes());
        let mut signature = time.to_be_bytes().to_vec();
        signature.extend_from_slice(&sig.to_bytes());
        SignatureLine {
            name: self.name.clone(),
            key_id: key_id(&self.name, ALG_COSIGNATURE_V1, &self.key.verifying_key()),
            signature,
        }
    }

    /// The vkey a witness publishes for its cosignatures.
    pub fn cosigner_vkey(&self) -> String {
        vkey_text(&self.name, ALG_COSIGNATURE_V1, &self.key.verifying_key())
    }
}

/// A checkpoint's text: origin, tree size, root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointText {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl CheckpointText {
    pub fn render(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parse a checkpoint's note text (extension lines after the third are allowed and
    /// ignored, as the C2SP text says).
    ///
    /// # Errors
    /// What is malformed.
    pub fn parse(text: &str) -> Result<CheckpointText, NoteError> {
        let mut lines = text.split_terminator('\n');
        let origin = lines.next().unwrap_or("");
        if origin.is_empty() {
            return Err(bad("checkpoint: the first line (origin) is empty"));
        }
        let size = lines.next().unwrap_or("");
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad(format!(
                "checkpoint: size `{size}` is not a decimal without leading zeros"
            )));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| bad(format!("checkpoint: size `{size}` is out of range")))?;
        let root_text = lines.next().unwrap_or("");
        let root: Hash = B64
            .decode(root_text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                bad(format!(
                    "checkpoint: root `{root_text}` is not a base64 32-byte hash"
                ))
            })?;
        if lines.any(str::is_empty) {
            return Err(bad("checkpoint: extension lines cannot be empty"));
        }
        Ok(CheckpointText {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// Why an origin (`ledger.origin`) is not acceptable.
///
/// # Errors
/// The reason, for the configuration error.
pub fn check_origin(origin: &str) -> Result<(), NoteError> {
    check_name(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str, seed: u8) -> NoteSigner {
        NoteSigner {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&[seed; 32]),
        }
    }

    #[test]
    fn a_signed_checkpoint_reads_back_field_by_field() {
        let log = signer("sluice.example/node-a", 7);
        let cp = CheckpointText {
            origin: log.name.clone(),
            size: 20852163,
            root: [9; 32],
        };
        let text = cp.render();
        let note = Note {
            signatures: vec![log.sign(&text)],
            text: text.clone(),
        };
        let rendered = note.render();
        let lines: Vec<&str> = rendered.split('\n').collect();
        assert_eq!(lines[0], "sluice.example/node-a");
        assert_eq!(lines[1], "20852163");
        assert_eq!(
            B64.decode(lines[2]).unwrap(),
            [9u8; 32],
            "root is standard base64 of 32 bytes"
        );
        assert_eq!(lines[3], "", "a blank line before the signatures");
        assert!(lines[4].starts_with("\u{2014} sluice.example/node-a "));
        let sig = B64.decode(lines[4].rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(sig.len(), 4 + 64, "key id then the Ed25519 signature");
        let mut h = Sha256::new();
        h.update(b"sluice.example/node-a\n\x01");
        h.update(log.key.verifying_key().as_bytes());
        assert_eq!(sig[..4], h.finalize()[..4]);
        assert_eq!(lines[5], "");

        let back = Note::parse(&rendered).unwrap();
        assert_eq!(back, note);
        assert_eq!(CheckpointText::parse(&back.text).unwrap(), cp);
        assert!(back.signed_by(&log.verifier()));
        assert!(!back.signed_by(&signer("sluice.example/node-a", 8).verifier()));
        let mut edited = back.clone();
        edited.text = edited.text.replace("20852163", "20852162");
        assert!(!edited.signed_by(&log.verifier()));
    }

    #[test]
    fn a_cosignature_follows_tlog_cosignature_v1() {
        let log = signer("log.example", 1);
        let w = signer("witness.example/w1", 2);
        let text = CheckpointText {
            origin: "log.example".into(),
            size: 5,
            root: [3; 32],
        }
        .render();
        let line = w.cosign(&text, 1_679_315_147);
        let rendered = line.render();
        let b = B64
            .decode(rendered.trim_end().rsplit(' ').next().unwrap())
            .unwrap();
        assert_eq!(b.len(), 4 + 8 + 64);
        assert_eq!(
            u64::from_be_bytes(b[4..12].try_into().unwrap()),
            1_679_315_147
        );
        let msg = format!("cosignature/v1\ntime 1679315147\n{text}");
        let sig = ed25519_dalek::Signature::from_bytes(&b[12..].try_into().unwrap());
        assert!(w.key.verifying_key().verify(msg.as_bytes(), &sig).is_ok());

        let note = Note {
            text: text.clone(),
            signatures: vec![log.sign(&text), line],
        };
        let back = Note::parse(&note.render()).unwrap();
        let wv = NoteVerifier::parse_vkey(&w.cosigner_vkey()).unwrap();
        assert_eq!(back.cosigned_by(&wv), Some(1_679_315_147));
        assert_eq!(back.cosigned_by(&log.verifier()), None);
        assert!(!back.signed_by(&wv), "a cosignature is not a log signature");
    }

    #[test]
    fn vkeys_round_trip_and_bad_ones_are_refused_with_a_reason() {
        for seed in 0..64 {
            // Some of these keys' base64 holds `+`.
            let v = signer("sluice.example/node-a", seed).verifier();
            assert_eq!(NoteVerifier::parse_vkey(&v.vkey()).unwrap(), v);
        }
        let log = signer("sluice.example/node-a", 7);
        let v = log.verifier();
        let vk = v.vkey();
        let (head, _) = vk.rsplit_once('+').unwrap();
        for (text, why) in [
            ("nonsense".to_owned(), "is not a vkey"),
            (format!("{head}+!!!"), "not base64"),
            (
                vk.replacen("sluice.example/node-a", "other", 1),
                "does not match",
            ),
            (format!("{head}+{}", B64.encode([1u8; 5])), "32 bytes"),
        ] {
            let e = NoteVerifier::parse_vkey(&text).unwrap_err();
            assert!(e.0.contains(why), "{text}: {e}");
        }
        for bad_cp in [
            "o\n012\nAAAA\n",
            "\n1\nAAAA\n",
            "o\n1\nAAAA\n",
            "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n",
        ] {
            assert!(CheckpointText::parse(bad_cp).is_err(), "{bad_cp:?}");
        }
        assert!(Note::parse("text\n— x AAAA\n").is_err());
        assert!(Note::parse("text\n\n— x \x07AAAAAAA=\n").is_err());
    }
}
