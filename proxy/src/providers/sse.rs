//! Incremental decoders for the two framings that streamed LLM responses use:
//! Server-Sent Events ([`SseDecoder`]) and a chunked top-level JSON array
//! ([`JsonArrayDecoder`], Gemini's `streamGenerateContent` without `alt=sse`).
//!
//! Both take bytes exactly as they come off the wire, split anywhere (mid-line,
//! mid-UTF-8 sequence, mid-event), and hand complete units to a callback. Memory is
//! bounded: a line or element over its limit is dropped and noted as an error, never
//! buffered without end. Neither decoder panics on any input.
//!
//! This module knows nothing about providers or JSON payload shapes; it is framing
//! only. The SSE decoder follows the WHATWG `text/event-stream` parsing rules (line
//! terminators `\n`, `\r\n` and `\r`; `:` comments; `event:`/`data:` fields; one
//! optional space after the colon) except that an event still pending when the stream
//! ends is delivered rather than discarded, because a recorder wants what was seen.

/// A single SSE line longer than this is dropped (with an error noted).
pub(crate) const MAX_LINE: usize = 1 << 20;
/// The `data` of one SSE event, or one JSON array element, is capped at this size.
pub(crate) const MAX_EVENT: usize = 4 << 20;

/// Counts framing problems, keeping the first few messages for the record.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    notes: Vec<String>,
    more: u64,
}

impl Problems {
    const KEEP: usize = 3;

    /// Notes one problem; only the first few distinct messages are kept.
    pub(crate) fn push(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        if self.notes.len() < Self::KEEP && !self.notes.contains(&msg) {
            self.notes.push(msg);
        } else {
            self.more += 1;
        }
    }

    /// All problems as one line, or `None` when there were none.
    pub(crate) fn render(&self) -> Option<String> {
        if self.notes.is_empty() {
            return None;
        }
        let mut s = self.notes.join("; ");
        if self.more > 0 {
            s.push_str(&format!(" (and {} more)", self.more));
        }
        Some(s)
    }
}

/// Incremental `text/event-stream` decoder.
///
/// Feed it raw chunks; it calls `on_event(event_name, data)` once per dispatched
/// event (`event_name` is `"message"` when the event had no `event:` field).
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
    /// The previous chunk ended in `\r`: a leading `\n` in the next one is its pair.
    after_cr: bool,
    /// Whether the first line was seen (a UTF-8 BOM is stripped from it).
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    /// True while skipping the rest of an over-long event.
    data_overflow: bool,
    pub(crate) problems: Problems,
}

impl SseDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Decodes one chunk, calling `on_event` for every event it completes.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(&str, &str)) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    let (head, tail) = (&chunk[..i], &chunk[i..]);
                    // Consume the terminator: `\r\n` is one, a lone `\r` or `\n` is one.
                    chunk = if tail[0] == b'\r' {
                        match tail.get(1) {
                            Some(b'\n') => &tail[2..],
                            Some(_) => &tail[1..],
                            None => {
                                self.after_cr = true;
                                &tail[1..]
                            }
                        }
                    } else {
                        &tail[1..]
                    };
                    if self.discarding {
                        self.discarding = false;
                        self.line.clear();
                        continue;
                    }
                    if self.line.is_empty() {
                        if head.len() > MAX_LINE {
                            self.note_long_line();
                            continue;
                        }
                        self.process_line(head, on_event);
                    } else {
                        if self.line.len() + head.len() > MAX_LINE {
                            self.line.clear();
                            self.note_long_line();
                            continue;
                        }
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(head);
                        self.process_line(&line, on_event);
                        line.clear();
                        self.line = line; // keep the allocation
                    }
                }
                None => {
                    if !self.discarding {
                        if self.line.len() + chunk.len() > MAX_LINE {
                            self.line.clear();
                            self.discarding = true;
                            self.note_long_line();
                        } else {
                            self.line.extend_from_slice(chunk);
                        }
                    }
                    chunk = &[];
                }
            }
        }
    }

    /// Ends the stream: a pending unterminated line is processed and a pending event
    /// is dispatched. Returns whether anything was left mid-event (a cut stream).
    pub(crate) fn finish(&mut self, on_event: &mut dyn FnMut(&str, &str)) -> bool {
        let mut cut = false;
        if !self.line.is_empty() && !self.discarding {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, on_event);
            cut = true;
        }
        self.line.clear();
        self.discarding = false;
        if self.has_data {
            cut = true;
            self.dispatch(on_event);
        }
        cut
    }

    fn note_long_line(&mut self) {
        self.problems
            .push(format!("an SSE line over {MAX_LINE} bytes was dropped"));
    }

    fn process_line(&mut self, mut line: &[u8], on_event: &mut dyn FnMut(&str, &str)) {
        if !self.started {
            self.started = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data_overflow {
                    return;
                }
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    self.data.clear();
                    self.data_overflow = true;
                    self.has_data = true;
                    self.problems
                        .push(format!("an SSE event over {MAX_EVENT} bytes was dropped"));
                    return;
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            // `id`, `retry` and unknown fields carry nothing a recorder needs.
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(&str, &str)) {
        if self.has_data && !self.data_overflow {
            if self.data.ends_with('\n') {
                self.data.pop();
            }
            let name = if self.event.is_empty() {
                "message"
            } else {
                self.event.as_str()
            };
            on_event(name, &self.data);
        }
        self.data.clear();
        self.event.clear();
        self.has_data = false;
        self.data_overflow = false;
    }
}

/// Incremental splitter for a stream that is one top-level JSON array of objects,
/// sent in arbitrary chunks (`[{...}\n,\r\n{...}\n]`).
///
/// It tracks only string/escape state and bracket depth, so it never parses more
/// than one element at a time; each complete element's bytes go to `on_element`.
#[derive(Debug, Default)]
pub(crate) struct JsonArrayDecoder {
    opened: bool,
    closed: bool,
    depth: u32,
    in_string: bool,
    escape: bool,
    buf: Vec<u8>,
    /// True while skipping the rest of an over-long element.
    overflow: bool,
    pub(crate) problems: Problems,
}

impl JsonArrayDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Decodes one chunk, calling `on_element` for every element it completes.
    pub(crate) fn feed(&mut self, chunk: &[u8], on_element: &mut dyn FnMut(&[u8])) {
        let mut i = 0;
        while i < chunk.len() {
            if self.depth == 0 {
                let b = chunk[i];
                i += 1;
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'[' if !self.opened => self.opened = true,
                    b',' if self.opened && !self.closed => {}
                    b']' if self.opened && !self.closed => self.closed = true,
                    b'{' | b'[' if self.opened && !self.closed => {
                        self.depth = 1;
                        self.in_string = false;
                        self.escape = false;
                        self.overflow = false;
                        self.buf.clear();
                        self.buf.push(b);
                    }
                    0xEF | 0xBB | 0xBF if !self.opened => {} // UTF-8 BOM
                    _ => self.problems.push(if self.closed {
                        "bytes after the end of the JSON array stream"
                    } else {
                        "unexpected bytes between JSON array stream elements"
                    }),
                }
                continue;
            }
            // Inside an element: scan to its end or the chunk's end, then copy once.
            let start = i;
            let mut done = false;
            while i < chunk.len() {
                let b = chunk[i];
                i += 1;
                if self.in_string {
                    if self.escape {
                        self.escape = false;
                    } else if b == b'\\' {
                        self.escape = true;
                    } else if b == b'"' {
                        self.in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            done = true;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let piece = &chunk[start..i];
            if !self.overflow {
                if self.buf.len() + piece.len() > MAX_EVENT {
                    self.buf = Vec::new();
                    self.overflow = true;
                    self.problems.push(format!(
                        "a JSON array stream element over {MAX_EVENT} bytes was dropped"
                    ));
                } else {
                    self.buf.extend_from_slice(piece);
                }
            }
            if done {
                if !self.overflow {
                    on_element(&self.buf);
                }
                self.buf.clear();
                self.overflow = false;
            }
        }
    }

    /// Ends the stream. Returns whether it was cut: inside an element, or with the
    /// array never closed.
    pub(crate) fn finish(&mut self) -> bool {
        let cut = self.depth > 0 || (self.opened && !self.closed);
        self.depth = 0;
        self.buf = Vec::new();
        cut
    }
}
