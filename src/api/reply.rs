//! What every route answers with: an HTTP response whose body is either bytes in memory or a
//! stream of chunks (a file, a query's GeoJSON, an upstream's answer).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http::StatusCode;
use http::header::{self, HeaderValue};

use crate::encoding::Encoding;
use http_body::{Frame, SizeHint};

/// A response of this server.
pub type Response = http::Response<Body>;

pub use crate::gis::query::limits::Chunk;

/// A response body: whole bytes (with a known length) or a stream.
pub struct Body(Kind);

enum Kind {
    Full(Option<Bytes>),
    Stream(Pin<Box<dyn Stream<Item = Chunk> + Send>>),
}

impl Body {
    /// No bytes.
    #[must_use]
    pub fn empty() -> Self {
        Self(Kind::Full(None))
    }

    /// The chunks of `stream`, sent as they come.
    pub fn stream(stream: impl Stream<Item = Chunk> + Send + 'static) -> Self {
        Self(Kind::Stream(Box::pin(stream)))
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Full(bytes) => write!(f, "Body({} bytes)", bytes.as_ref().map_or(0, Bytes::len)),
            Kind::Stream(_) => f.write_str("Body(stream)"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Bytes::from(text).into()
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(stream) => stream
                .as_mut()
                .poll_next(cx)
                .map(|chunk| chunk.map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// A JSON document as a response of `content_type`.
#[must_use]
pub fn json(status: StatusCode, body: &serde_json::Value, content_type: &'static str) -> Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A streamed `application/geo+json` response, compressed with `encoding` when a compressor is
/// free.
pub fn geojson(
    stream: impl futures::Stream<Item = Chunk> + Send + Sync + 'static,
    encoding: Encoding,
) -> Response {
    let (stream, used) = crate::encoding::compressors().compress(stream, encoding);
    labelled(Response::new(Body::stream(stream)), used)
}

/// Marks a response as GeoJSON, with its content encoding.
pub fn labelled(mut response: Response, encoding: Encoding) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/geo+json"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if encoding != Encoding::Identity {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
    }
    response
}
