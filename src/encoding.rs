//! Content encodings: which one a client accepts, and compressing a stream of bytes on its way
//! out. Used by static files and by the APIs' streamed answers.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http::header;
use tokio::sync::Semaphore;
use tokio_util::io::{ReaderStream, StreamReader};

/// A content encoding the server can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Encoding {
    /// As stored.
    Identity,
    /// `gzip`.
    Gzip,
    /// `br`.
    Brotli,
}

impl Encoding {
    /// The `Content-Encoding` token.
    #[must_use]
    pub fn token(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Brotli => "br",
        }
    }

    /// The file-name suffix of a precompressed sibling.
    #[must_use]
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Identity => "",
            Self::Gzip => ".gz",
            Self::Brotli => ".br",
        }
    }
}

/// The best encoding `Accept-Encoding` allows: the highest weight, brotli over gzip at equal
/// weight, identity when neither is accepted (`q=0` refuses one).
#[must_use]
pub fn accepted(headers: &HeaderMap) -> Encoding {
    let Some(accept) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return Encoding::Identity;
    };
    let mut best = (Encoding::Identity, 0.0f32);
    for item in accept.split(',') {
        let mut parts = item.trim().split(';');
        let token = parts.next().unwrap_or_default().trim();
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        let encoding = if token.eq_ignore_ascii_case("br") {
            Encoding::Brotli
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Encoding::Gzip
        } else {
            continue;
        };
        let better = q > best.1 || (q == best.1 && q > 0.0 && encoding == Encoding::Brotli);
        if q > 0.0 && better {
            best = (encoding, q);
        }
    }
    best.0
}

/// Whether `Accept-Encoding` allows gzip (named with a weight above zero).
#[must_use]
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|item| {
                let mut parts = item.trim().split(';');
                let token = parts.next().unwrap_or_default().trim();
                let q = parts
                    .find_map(|p| {
                        p.trim()
                            .strip_prefix("q=")
                            .and_then(|q| q.parse::<f32>().ok())
                    })
                    .unwrap_or(1.0);
                (token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip"))
                    && q > 0.0
            })
        })
}

/// Brotli quality for answers made on the fly: fast, and still smaller than gzip's default.
const BROTLI_QUALITY: i32 = 3;
/// Brotli window for answers made on the fly (2^18 = 256 KiB; the default 4 MiB would be held
/// by every compressing stream).
const BROTLI_WINDOW: i32 = 18;
/// Gzip level for answers made on the fly (level 1 leaves GeoJSON at half its size; 4 takes
/// it to about a third for a little more CPU).
const GZIP_LEVEL: i32 = 4;
/// Output pieces of a compressed stream.
const PIECE: usize = 64 * 1024;

/// Compressors running at once, each holding a few hundred KiB: past the bound, answers go out
/// uncompressed rather than waiting or growing memory.
#[derive(Debug)]
pub struct Compressors {
    slots: Arc<Semaphore>,
}

/// At most this many streams are compressed at once by default.
pub const DEFAULT_COMPRESSORS: usize = 64;

impl Default for Compressors {
    fn default() -> Self {
        Self::new(DEFAULT_COMPRESSORS)
    }
}

/// The process's compressors for answers made on the fly.
pub fn compressors() -> &'static Compressors {
    static COMPRESSORS: std::sync::LazyLock<Compressors> =
        std::sync::LazyLock::new(Compressors::default);
    &COMPRESSORS
}

/// A stream of answer bytes, boxed.
pub type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync>>;

impl Compressors {
    /// Up to `count` compressing at once.
    #[must_use]
    pub fn new(count: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(count)),
        }
    }

    /// `stream` compressed with `encoding`, and the encoding used: identity when asked for, or
    /// when every compressor is busy.
    pub fn compress<S>(&self, stream: S, encoding: Encoding) -> (ByteStream, Encoding)
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        use futures::StreamExt;
        if encoding == Encoding::Identity {
            return (Box::pin(stream), Encoding::Identity);
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return (Box::pin(stream), Encoding::Identity);
        };
        let reader = StreamReader::new(stream);
        let compressed: ByteStream = match encoding {
            Encoding::Brotli => {
                let params = async_compression::brotli::EncoderParams::default()
                    .quality(async_compression::Level::Precise(BROTLI_QUALITY))
                    .window_size(BROTLI_WINDOW)
                    .text_mode();
                Box::pin(ReaderStream::with_capacity(
                    async_compression::tokio::bufread::BrotliEncoder::with_params(reader, params),
                    PIECE,
                ))
            }
            _ => Box::pin(ReaderStream::with_capacity(
                async_compression::tokio::bufread::GzipEncoder::with_quality(
                    reader,
                    async_compression::Level::Precise(GZIP_LEVEL),
                ),
                PIECE,
            )),
        };
        // The slot is held until the stream is dropped.
        let held = compressed.map(move |piece| {
            let _held = &permit;
            piece
        });
        (Box::pin(held), encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::{Encoding, accepted};
    use http::{HeaderMap, HeaderValue, header};

    fn with(accept: &str) -> Encoding {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap_or(HeaderValue::from_static("")),
        );
        accepted(&headers)
    }

    #[test]
    fn weights_and_refusals() {
        assert_eq!(with("gzip, deflate, br"), Encoding::Brotli);
        assert_eq!(with("gzip"), Encoding::Gzip);
        assert_eq!(with("br;q=0, gzip"), Encoding::Gzip);
        assert_eq!(with("br;q=0.5, gzip;q=0.8"), Encoding::Gzip);
        assert_eq!(with("identity"), Encoding::Identity);
        assert_eq!(with("GZIP"), Encoding::Gzip);
        assert_eq!(accepted(&HeaderMap::new()), Encoding::Identity);
    }

    #[test]
    fn gzip_refused_with_q_zero_is_not_accepted() {
        let with_header = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(accept).unwrap_or(HeaderValue::from_static("")),
            );
            super::accepts_gzip(&headers)
        };
        assert!(with_header("br, gzip"));
        assert!(!with_header("br, gzip;q=0"));
        assert!(!with_header("br"));
        assert!(with_header("x-gzip;q=0.5"));
    }
}
