//! AWS event-stream framing (`application/vnd.amazon.eventstream`): the binary
//! framing of Bedrock's `converse-stream` and `invoke-with-response-stream` answers.
//!
//! Every message is self-delimiting, all integers big-endian:
//!
//! ```text
//! u32 total_length | u32 headers_length | u32 prelude_crc      (the 12-byte prelude)
//! headers[headers_length] | payload[total_length - headers_length - 16]
//! u32 message_crc
//! ```
//!
//! `prelude_crc` is the CRC-32 (IEEE, as zlib's) of the first 8 bytes and `message_crc`
//! that of every byte before it. A header is `u8 name_len | name | u8 type | value`; the
//! value types are booleans (0, 1: no bytes), integers of 1, 2, 4 and 8 bytes (2-5), a
//! byte array or a string with a `u16` length (6, 7), a timestamp (8: 8 bytes) and a
//! UUID (9: 16 bytes).
//!
//! [`Decoder`] takes bytes exactly as they come off the wire, split anywhere, and hands
//! out whole [`Message`]s with their string headers (`:event-type`, `:message-type`,
//! `:exception-type`, `:content-type`, …) and payload. Memory is bounded by
//! [`MAX_MESSAGE`]. It never panics: a message whose CRC does not match is dropped and
//! noted, and a prelude that cannot be trusted (a bad CRC or an impossible length) stops
//! decoding, since the next message boundary is then unknown. [`encode`] builds one
//! message (Sluice's own in-stream error frame, test captures).
//!
//! What this module is not: it knows nothing of Bedrock's event names or JSON payloads
//! (that is `bedrock.rs`), and it neither signs nor verifies the optional
//! `:chunk-signature` headers some AWS services add.

use super::sse::Problems;

/// A message longer than this (prelude, headers, payload and CRC) is refused; botocore
/// allows a 24 MiB payload, Bedrock's events are a few KiB.
pub(crate) const MAX_MESSAGE: usize = 16 << 20;

/// The prelude (`total_length`, `headers_length`, `prelude_crc`).
const PRELUDE: usize = 12;
/// Prelude plus the trailing message CRC: the smallest message.
const OVERHEAD: usize = PRELUDE + 4;

/// Header value type of a string, the only one Bedrock sends.
const STRING: u8 = 7;

/// One decoded event-stream message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Message {
    /// The headers whose value is a string, in wire order (other types are skipped).
    pub headers: Vec<(String, String)>,
    /// The payload bytes (JSON for Bedrock).
    pub payload: Vec<u8>,
}

impl Message {
    /// The value of string header `name` (exact, case-sensitive as AWS sends them).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Incremental event-stream decoder; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Bytes of the message being gathered (never more than one message's worth
    /// beyond what `feed` is processing).
    buf: Vec<u8>,
    /// A prelude could not be trusted: everything after it is ignored.
    stopped: bool,
    /// Bytes ignored after decoding stopped.
    ignored: u64,
    /// Messages decoded (CRCs checked) so far.
    pub(crate) messages: u64,
    /// Framing problems, for the record.
    pub(crate) problems: Problems,
}

impl Decoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Decodes one chunk, calling `on_message` for every message it completes.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], on_message: &mut dyn FnMut(Message)) {
        while !chunk.is_empty() {
            if self.stopped {
                self.ignored += chunk.len() as u64;
                return;
            }
            // Gather the prelude, then the rest of the message, copying only what is needed.
            let want = self.total_length().unwrap_or(PRELUDE);
            let take = want.saturating_sub(self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() < want {
                continue;
            }
            if want == PRELUDE {
                if let Err(e) = check_prelude(&self.buf) {
                    self.problems.push(e);
                    self.stopped = true;
                    self.ignored += chunk.len() as u64;
                    self.buf.clear();
                    return;
                }
                // The prelude is sound: the whole message is gathered next.
                continue;
            }
            let frame = std::mem::take(&mut self.buf);
            match decode_frame(&frame) {
                Ok(message) => {
                    self.messages += 1;
                    on_message(message);
                }
                Err(e) => self.problems.push(e),
            }
        }
    }

    /// The stream ended; returns whether it ended mid-message (bytes were left over).
    pub(crate) fn finish(&mut self) -> bool {
        if self.stopped && self.ignored > 0 {
            self.problems.push(format!(
                "{} bytes after an unreadable event-stream prelude were ignored",
                self.ignored
            ));
        }
        let cut = !self.buf.is_empty();
        self.buf.clear();
        cut
    }

    /// The message length once a checked prelude is buffered.
    fn total_length(&self) -> Option<usize> {
        (self.buf.len() >= PRELUDE).then(|| be_u32(&self.buf[0..4]) as usize)
    }
}

/// Checks a 12-byte prelude: its CRC, then the lengths it announces.
fn check_prelude(prelude: &[u8]) -> Result<(), String> {
    let total = be_u32(&prelude[0..4]) as usize;
    let headers = be_u32(&prelude[4..8]) as usize;
    let crc = be_u32(&prelude[8..12]);
    let actual = crc32fast::hash(&prelude[..8]);
    if crc != actual {
        return Err(format!(
            "event-stream prelude CRC mismatch (sent {crc:#010x}, computed {actual:#010x}): \
             not an event stream, or corrupted; the rest was not decoded"
        ));
    }
    if !(OVERHEAD..=MAX_MESSAGE).contains(&total) {
        return Err(format!(
            "event-stream message length {total} outside {OVERHEAD}..={MAX_MESSAGE}; \
             the rest was not decoded"
        ));
    }
    if headers > total - OVERHEAD {
        return Err(format!(
            "event-stream headers length {headers} exceeds the message ({total} bytes); \
             the rest was not decoded"
        ));
    }
    Ok(())
}

/// Decodes one whole message whose prelude was checked.
fn decode_frame(frame: &[u8]) -> Result<Message, String> {
    let total = frame.len();
    let crc = be_u32(&frame[total - 4..]);
    let actual = crc32fast::hash(&frame[..total - 4]);
    if crc != actual {
        return Err(format!(
            "event-stream message CRC mismatch (sent {crc:#010x}, computed {actual:#010x}); \
             the message was dropped"
        ));
    }
    let headers_len = be_u32(&frame[4..8]) as usize;
    let headers = parse_headers(&frame[PRELUDE..PRELUDE + headers_len])?;
    Ok(Message {
        headers,
        payload: frame[PRELUDE + headers_len..total - 4].to_vec(),
    })
}

/// Parses the header block, keeping string-valued headers.
fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let bad = |what: &str| format!("event-stream header block malformed: {what}");
    let mut out = Vec::new();
    while !b.is_empty() {
        let name_len = b[0] as usize;
        let name = b
            .get(1..1 + name_len)
            .ok_or_else(|| bad("a name runs past the block"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        b = &b[1 + name_len..];
        let (&kind, rest) = b.split_first().ok_or_else(|| bad("a header has no type"))?;
        b = rest;
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            other => return Err(bad(&format!("unknown value type {other}"))),
        };
        let len = match fixed {
            Some(n) => n,
            None => {
                let l = b.get(..2).ok_or_else(|| bad("a value length is cut"))?;
                b = &b[2..];
                usize::from(u16::from_be_bytes([l[0], l[1]]))
            }
        };
        let value = b
            .get(..len)
            .ok_or_else(|| bad("a value runs past the block"))?;
        if kind == STRING {
            if out.iter().any(|(n, _)| *n == name) {
                return Err(bad(&format!("header {name:?} appears twice")));
            }
            out.push((name, String::from_utf8_lossy(value).into_owned()));
        }
        b = &b[len..];
    }
    Ok(out)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// One message with string headers (names and values are cut to the format's 255-byte
/// and 64 KiB limits, which Sluice's own headers never reach).
pub(crate) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        let value = &value.as_bytes()[..value.len().min(usize::from(u16::MAX))];
        block.push(name.len() as u8);
        block.extend_from_slice(name);
        block.push(STRING);
        block.extend_from_slice(&(value.len() as u16).to_be_bytes());
        block.extend_from_slice(value);
    }
    let total = OVERHEAD + block.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `invoke-with-response-stream` frame (267 bytes), as captured in ai21-python's
    /// Bedrock stream tests and parsed by botocore.
    const REAL: &[u8] = b"\x00\x00\x01\x0b\x00\x00\x00K8\xa0\xa5\xc5\x0b:event-type\x07\x00\x05chunk\r:content-type\x07\x00\x10application/json\r:message-type\x07\x00\x05event{\"bytes\":\"eyJjaG9pY2VzIjpbeyJpbmRleCI6MCwibWVzc2FnZSI6eyJyb2xlIjoiYXNzaXN0YW50IiwiY29udGVudCI6IkkifSwic3RvcF9yZWFzb24iOm51bGx9XX0=\",\"p\":\"abcdefghijklmnopqrstuvwxyzABCDEFGHIJK\"}\x11\x061?";

    fn decode_all(chunks: &[&[u8]]) -> (Vec<Message>, Decoder) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |m| out.push(m));
        }
        (out, d)
    }

    #[test]
    fn real_frame_decodes_whole_and_byte_by_byte() {
        assert_eq!(REAL.len(), 267);
        let (whole, mut d) = decode_all(&[REAL]);
        assert!(!d.finish());
        assert_eq!(d.problems.render(), None);
        assert_eq!(whole.len(), 1);
        let m = &whole[0];
        assert_eq!(m.header(":event-type"), Some("chunk"));
        assert_eq!(m.header(":content-type"), Some("application/json"));
        assert_eq!(m.header(":message-type"), Some("event"));
        assert_eq!(m.header(":exception-type"), None);
        assert!(m.payload.starts_with(b"{\"bytes\":\"eyJjaG9p"));
        assert!(m
            .payload
            .ends_with(b"\"p\":\"abcdefghijklmnopqrstuvwxyzABCDEFGHIJK\"}"));

        let twice = [REAL, REAL].concat();
        let bytes: Vec<&[u8]> = twice.chunks(1).collect();
        let (split, mut d) = decode_all(&bytes);
        assert!(!d.finish());
        assert_eq!(split, vec![m.clone(), m.clone()]);
        assert_eq!(d.messages, 2);
    }

    #[test]
    fn encoder_matches_the_real_frame() {
        let payload = &REAL[12 + 75..REAL.len() - 4];
        let built = encode(
            &[
                (":event-type", "chunk"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload,
        );
        assert_eq!(built, REAL);
    }

    #[test]
    fn corrupt_message_crc_drops_one_message_and_goes_on() {
        let mut bad = REAL.to_vec();
        bad[100] ^= 0x01; // inside the payload
        let stream = [&bad[..], REAL].concat();
        let (ms, mut d) = decode_all(&[&stream]);
        assert!(!d.finish());
        assert_eq!(ms.len(), 1);
        let e = d.problems.render().unwrap();
        assert!(e.contains("message CRC mismatch"), "{e}");
    }

    #[test]
    fn corrupt_prelude_stops_decoding() {
        let mut bad = REAL.to_vec();
        bad[2] ^= 0x01; // the length
        let stream = [&bad[..], REAL].concat();
        let (ms, mut d) = decode_all(&[&stream[..50], &stream[50..]]);
        assert!(ms.is_empty());
        d.finish();
        let e = d.problems.render().unwrap();
        assert!(e.contains("prelude CRC mismatch"), "{e}");
        assert!(e.contains("ignored"), "{e}");
    }

    #[test]
    fn truncated_frame_is_reported_as_cut() {
        let (ms, mut d) = decode_all(&[&REAL[..200]]);
        assert!(ms.is_empty());
        assert!(d.finish());
        let (ms, mut d) = decode_all(&[&REAL[..5]]);
        assert!(ms.is_empty());
        assert!(d.finish());
    }

    #[test]
    fn impossible_lengths_are_refused_before_buffering() {
        for (total, headers) in [(8u32, 0u32), (MAX_MESSAGE as u32 + 1, 0), (100, 90)] {
            let mut prelude = Vec::new();
            prelude.extend_from_slice(&total.to_be_bytes());
            prelude.extend_from_slice(&headers.to_be_bytes());
            let crc = crc32fast::hash(&prelude);
            prelude.extend_from_slice(&crc.to_be_bytes());
            prelude.extend_from_slice(&[0; 64]);
            let (ms, mut d) = decode_all(&[&prelude]);
            assert!(ms.is_empty());
            d.finish();
            assert!(d.problems.render().is_some(), "{total} {headers}");
            assert!(d.buf.capacity() <= 64, "nothing big was buffered");
        }
    }

    #[test]
    fn header_types_are_skipped_or_kept() {
        // A hand-built block: bool, int32, byte array, uuid, string.
        let mut block = Vec::new();
        for (name, kind, value) in [
            ("t", 0u8, &b""[..]),
            ("i", 4, &[0, 0, 0, 7][..]),
            ("b", 6, &[0, 2, 0xff, 0xfe][..]),
            ("u", 9, &[1; 16][..]),
            (":event-type", 7, &[0, 2, b'h', b'i'][..]),
        ] {
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(kind);
            block.extend_from_slice(value);
        }
        assert_eq!(
            parse_headers(&block).unwrap(),
            vec![(":event-type".to_owned(), "hi".to_owned())]
        );
        assert!(parse_headers(&[3, b'a']).is_err());
        assert!(parse_headers(&[1, b'a', 42]).is_err());
        assert!(parse_headers(&[1, b'a', 7, 0, 9, b'x']).is_err());
        let last = &block[block.len() - 17..];
        let dup = [last, last].concat();
        assert!(parse_headers(&dup).unwrap_err().contains("twice"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 9u64;
        for round in 0..200 {
            let mut data = REAL.repeat(2);
            for _ in 0..round % 7 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                let i = (state >> 33) as usize % data.len();
                data[i] = (state >> 17) as u8;
            }
            let cut = (state >> 40) as usize % (data.len() + 1);
            let (_, mut d) = decode_all(&[&data[..cut / 2], &data[cut / 2..cut]]);
            d.finish();
        }
    }
}
