//! Redaction of a streamed response that arrives in arbitrary pieces; see
//! [`StreamRedactor`].

use std::sync::Arc;

use super::{redact, secrets, Category, Finding, Scanner};

/// Default bytes held back: the longest fixed-shape secret caught whole across stream
/// events, with margin (also the window the proxy gives each stream lane).
pub const DEFAULT_WINDOW: usize = 256;
/// The smallest window we accept: the longest fixed-shape token we promise to catch.
pub(super) const MIN_WINDOW: usize = 128;
/// Released text kept as left context (the AWS secret-keyword look-behind is 96 bytes).
const CONTEXT: usize = 128;

/// Incremental redaction of one streamed text that arrives in arbitrary pieces.
///
/// The redactor holds back the last `window` bytes it has received and releases the rest,
/// redacted. Every push rescans the held text (plus some released context), so a secret
/// is still in the held tail while any part of it could be unreleased:
///
/// * **Guarantee.** Any finding of at most `window` bytes is redacted exactly as
///   [`super::Scanner::scan`] over the whole text redacts it, however the text is split
///   (the tests check every split point and byte-by-byte delivery). The default window,
///   256 bytes, covers every fixed-shape token we detect (the longest, an Anthropic key,
///   is about 110 bytes; a fine-grained GitHub PAT 93), connection strings and
///   short JWTs.
/// * **Longer findings** (private-key blocks, long JWTs) are recognised from their start
///   (the `BEGIN` line; a JWT header and the first payload byte), long before `window`
///   bytes of them have arrived. When the release point reaches such a finding the
///   redactor emits its marker and then *swallows* the continuation (the rest of the
///   base64 body and the END line, the rest of the token) as it streams in.
/// * **Memory.** After each [`StreamRedactor::push`] at most `window` bytes are held
///   back. A further 128 bytes of already released text are kept as left context so that
///   detectors that look behind (word boundaries, the AWS keyword before a secret key)
///   see what they would see in one piece.
/// * **Cost.** Each push scans at most `window + 128` bytes plus the piece, so tiny pieces
///   cost proportionally more; proxies should push whole SSE events, not bytes.
/// * **Injection** phrases are scored per held window, not over the whole response; a
///   response-level verdict needs [`super::Scanner::injection_score`] on the full text.
#[derive(Debug)]
pub struct StreamRedactor {
    scanner: Arc<Scanner>,
    window: usize,
    /// Released text kept for context, at most `CONTEXT` bytes. It is the raw text, so
    /// it may hold a secret whose marker was released: drop the redactor with the response.
    context: String,
    /// Received, not yet released.
    held: String,
    /// A finding that ran to the end of the released text and may continue.
    open: Option<Category>,
    found: Vec<Category>,
}

impl StreamRedactor {
    /// A redactor holding back at most `window` bytes (clamped up to 1).
    pub fn new(scanner: Arc<Scanner>, window: usize) -> Self {
        StreamRedactor {
            scanner,
            window: window.max(1),
            context: String::new(),
            held: String::new(),
            open: None,
            found: Vec::new(),
        }
    }

    /// Feeds the next piece; returns text safe to release now, already redacted. After
    /// this call at most `window` bytes are held back.
    pub fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        self.swallow_open();
        if self.held.len() <= self.window {
            return String::new();
        }
        let mut cut = self.held.len() - self.window;
        while !self.held.is_char_boundary(cut) {
            cut += 1;
        }
        self.release(cut, false)
    }

    /// Ends the stream and releases everything still held, redacted.
    pub fn finish(&mut self) -> String {
        self.swallow_open();
        // Whatever the open secret still had in flight (a partial END line) is not secret.
        self.open = None;
        self.release(self.held.len(), true)
    }

    /// The category of every span redacted so far, in stream order.
    pub fn findings(&self) -> &[Category] {
        &self.found
    }

    /// Bytes received but not yet released.
    pub fn held_back(&self) -> usize {
        self.held.len()
    }

    /// Drops the continuation of an open finding from the front of `held`.
    fn swallow_open(&mut self) {
        let Some(category) = self.open else { return };
        let (n, still_open) = secrets::continuation(category, &self.held);
        self.held.drain(..n);
        if !still_open {
            self.open = None;
        }
    }

    /// Releases `held[..cut]` (extended to the end of any finding that straddles `cut`).
    fn release(&mut self, cut: usize, last: bool) -> String {
        if self.open.is_some() {
            return String::new(); // everything held is still the open secret
        }
        let ctx = self.context.len();
        let mut text = String::with_capacity(ctx + self.held.len());
        text.push_str(&self.context);
        text.push_str(&self.held);
        let cut = ctx + cut;
        let mut release_to = cut;
        let mut keep = Vec::new();
        for f in self.scanner.scan(&text) {
            if f.end <= ctx || f.start >= release_to {
                continue; // already released, or stays held for now
            }
            // Clip what starts in the released context: its start is out already.
            let start = f.start.max(ctx);
            release_to = release_to.max(f.end);
            if f.end == text.len() && !last {
                self.open = Some(f.category);
            }
            keep.push(Finding {
                category: f.category,
                start: start - ctx,
                end: f.end - ctx,
            });
        }
        let released = release_to - ctx;
        let out = redact(&self.held[..released], &keep);
        self.found.extend(keep.iter().map(|f| f.category));
        self.context.push_str(&self.held[..released]);
        let mut trim = self.context.len().saturating_sub(CONTEXT);
        while !self.context.is_char_boundary(trim) {
            trim += 1;
        }
        self.context.drain(..trim);
        self.held.drain(..released);
        out
    }
}
