//! HTTP plumbing shared by the protocols: bounded body reading, decompression with a limit
//! on the inflated size, and error responses.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::GatewayError;

/// Reads a request body, refusing more than `limit` bytes (before reading, when the client
/// declared its length).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, GatewayError> {
    if content_length(headers).is_some_and(|length| length > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|error| {
            let text = error.to_string();
            if text.contains("length limit") {
                GatewayError::BodyTooLarge { limit }
            } else {
                GatewayError::BadRequest(format!("cannot read the request body: {text}"))
            }
        })
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Undoes `Content-Encoding` (none, `gzip`, or `snappy` block format), refusing bodies that
/// inflate beyond `limit` without inflating them first.
pub fn decode_content(
    body: Bytes,
    encoding: Option<&str>,
    limit: u64,
) -> Result<Bytes, GatewayError> {
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() as u64 > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            Ok(body)
        }
        Some("gzip") | Some("x-gzip") => gzip_decompress(&body, limit).map(Bytes::from),
        Some("snappy") => snappy_decompress(&body, limit).map(Bytes::from),
        Some(other) => Err(GatewayError::UnsupportedMediaType(format!(
            "Content-Encoding {other}: use gzip, snappy or none"
        ))),
    }
}

/// Snappy block format, as remote-write uses it.
pub fn snappy_decompress(body: &[u8], limit: u64) -> Result<Vec<u8>, GatewayError> {
    let length = snap::raw::decompress_len(body).map_err(|e| {
        GatewayError::BadRequest(format!("body is not valid snappy-compressed data: {e}"))
    })?;
    if length as u64 > limit {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    snap::raw::Decoder::new().decompress_vec(body).map_err(|e| {
        GatewayError::BadRequest(format!("body is not valid snappy-compressed data: {e}"))
    })
}

pub fn gzip_decompress(body: &[u8], limit: u64) -> Result<Vec<u8>, GatewayError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| GatewayError::BadRequest(format!("body is not valid gzip data: {e}")))?;
    if out.len() as u64 > limit {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    Ok(out)
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), format!("{self}\n")).into_response();
        if let Some(seconds) = self.retry_after_seconds() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_bombs_are_stopped_at_the_limit() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 10 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 100_000);
        assert!(matches!(
            decode_content(Bytes::from(bomb), Some("gzip"), 1 << 20),
            Err(GatewayError::BodyTooLarge { .. })
        ));
        let err = decode_content(Bytes::from_static(b"plain"), Some("gzip"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("gzip"), "{err}");
        let err = decode_content(Bytes::from_static(b"x"), Some("br"), 1 << 20).unwrap_err();
        assert!(matches!(err, GatewayError::UnsupportedMediaType(_)));
    }
}
