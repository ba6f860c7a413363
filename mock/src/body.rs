//! Response bodies: whole ones, and paced streams whose every event is its own frame.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use serde_json::Value;
use tokio::time::Sleep;

/// The body of every mock response.
///
/// A streamed body is a queue of frames handed to hyper one per poll, with a timer
/// between them when a delay is asked for: each event leaves as its own HTTP/1.1 chunk or
/// HTTP/2 DATA frame, flushed before the pause. This plays the part of a channel-backed
/// body without a producer task per stream, and a client that goes away simply drops it.
#[derive(Debug)]
pub(crate) enum MockBody {
    /// A whole body, sent with its `content-length`.
    Full(Option<Bytes>),
    /// A stream of frames with no `content-length`.
    Paced(Paced),
}

/// A queue of frames released with a pause between consecutive ones.
#[derive(Debug)]
pub(crate) struct Paced {
    frames: VecDeque<Bytes>,
    delay: Duration,
    pause: Option<Pin<Box<Sleep>>>,
}

impl MockBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }

    pub(crate) fn paced(frames: Vec<Bytes>, delay: Duration) -> Self {
        Self::Paced(Paced {
            frames: frames.into(),
            delay,
            pause: None,
        })
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Paced(paced) => {
                if let Some(pause) = paced.pause.as_mut() {
                    ready!(pause.as_mut().poll(cx));
                    paced.pause = None;
                }
                let Some(frame) = paced.frames.pop_front() else {
                    return Poll::Ready(None);
                };
                if !paced.delay.is_zero() && !paced.frames.is_empty() {
                    paced.pause = Some(Box::pin(tokio::time::sleep(paced.delay)));
                }
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Paced(paced) => paced.frames.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Paced(_) => SizeHint::default(),
        }
    }
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response<MockBody> {
    // Serialising a `Value` cannot fail: its keys are strings and it holds no NaN.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    json_bytes(status, Bytes::from(bytes))
}

/// An already serialised JSON answer.
pub(crate) fn json_bytes(status: StatusCode, bytes: Bytes) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An answer with no body.
pub(crate) fn empty(status: StatusCode) -> Response<MockBody> {
    let mut response = Response::new(MockBody::Full(None));
    *response.status_mut() = status;
    response
}

/// A streamed answer of `frames` with `content_type`.
pub(crate) fn stream(
    content_type: &'static str,
    frames: Vec<Bytes>,
    delay: Duration,
) -> Response<MockBody> {
    let mut response = Response::new(MockBody::paced(frames, delay));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One SSE event with only a `data:` field.
pub(crate) fn sse_data(value: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    // See `json` on why this cannot fail.
    serde_json::to_writer(&mut out, value).unwrap_or_default();
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// One SSE event with an `event:` name and a `data:` field.
pub(crate) fn sse_event(name: &str, value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut out, value).unwrap_or_default();
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Set a header on a response; `value` must be a valid header value (ids and constants).
pub(crate) fn with_header(
    mut response: Response<MockBody>,
    name: &'static str,
    value: &str,
) -> Response<MockBody> {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            response.headers_mut().insert(name, value);
        }
        Err(_) => tracing::debug!(name, value, "mock skipped an invalid header value"),
    }
    response
}
