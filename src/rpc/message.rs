//! What travels inside the frames. Handshake: `Hello` each way, then the
//! client's `Proof`. After it, every client frame is a request and every
//! server frame a response: a postcard header followed by the raw body
//! (no copy through serde, and the body's format is the method's business).

use serde::{Deserialize, Serialize};

use super::seal::Challenge;

/// The first frame of each side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster: String,
    pub min_version: u16,
    pub max_version: u16,
    /// Fresh for this connection; the peer must echo it.
    pub challenge: Challenge,
    /// The server's hello echoes the client's challenge; the client's has
    /// nothing to echo yet.
    pub echo: Option<Challenge>,
}

/// The client's second frame: the server's challenge, echoed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub echo: Challenge,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    /// Unique among the connection's requests in flight; the response
    /// carries it back (responses come in any order).
    pub request_id: u64,
    /// How long the caller still waits, from when the request was sent;
    /// relative, since the nodes' clocks need not agree.
    pub deadline_ms: u32,
    /// A string, not an enum: a method this node does not know is the
    /// error `unknown_method`, not an undecodable frame.
    pub method: String,
}

#[derive(Serialize)]
struct RequestHeaderRef<'a> {
    request_id: u64,
    deadline_ms: u32,
    method: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    pub request_id: u64,
    /// `Ok`: the body follows the header. `Err`: nothing follows.
    pub result: Result<(), RpcError>,
}

/// Well-known error codes; handlers may use their own (`locked`, …).
pub mod codes {
    pub const UNKNOWN_METHOD: &str = "unknown_method";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    pub const INTERNAL: &str = "internal";
}

/// An error the remote handler answered with. The code is for programs
/// (a string, so new codes need no new protocol version), the message for
/// people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: String,
    pub message: String,
}

impl RpcError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> RpcError {
        RpcError {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn unknown_method(method: &str) -> RpcError {
        RpcError::new(codes::UNKNOWN_METHOD, format!("no method {method:?}"))
    }

    pub fn bad_request(why: impl std::fmt::Display) -> RpcError {
        RpcError::new(codes::BAD_REQUEST, why.to_string())
    }

    pub fn internal(why: impl std::fmt::Display) -> RpcError {
        RpcError::new(codes::INTERNAL, why.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct DecodeError(pub String);

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our own types into a Vec: postcard cannot fail on them.
    postcard::to_allocvec(value).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
}

fn with_body<H: Serialize>(header: &H, body: &[u8]) -> Vec<u8> {
    let out = Vec::with_capacity(16 + body.len());
    let mut out = postcard::to_extend(header, out).unwrap_or_default();
    out.extend_from_slice(body);
    out
}

fn split_body<'a, H: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(H, &'a [u8]), DecodeError> {
    postcard::take_from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
}

pub fn encode_request(request_id: u64, deadline_ms: u32, method: &str, body: &[u8]) -> Vec<u8> {
    let header = RequestHeaderRef {
        request_id,
        deadline_ms,
        method,
    };
    with_body(&header, body)
}

pub fn decode_request(bytes: &[u8]) -> Result<(RequestHeader, Vec<u8>), DecodeError> {
    let (header, body) = split_body(bytes)?;
    Ok((header, body.to_vec()))
}

pub fn encode_response(request_id: u64, result: &Result<Vec<u8>, RpcError>) -> Vec<u8> {
    match result {
        Ok(body) => with_body(
            &ResponseHeader {
                request_id,
                result: Ok(()),
            },
            body,
        ),
        Err(e) => with_body(
            &ResponseHeader {
                request_id,
                result: Err(e.clone()),
            },
            &[],
        ),
    }
}

pub fn decode_response(bytes: &[u8]) -> Result<(u64, Result<Vec<u8>, RpcError>), DecodeError> {
    let (header, body): (ResponseHeader, _) = split_body(bytes)?;
    match header.result {
        Ok(()) => Ok((header.request_id, Ok(body.to_vec()))),
        Err(_) if !body.is_empty() => Err(DecodeError("an error response with a body".into())),
        Err(e) => Ok((header.request_id, Err(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let bytes = encode_request(7, 1500, "twophase.prepare", b"body");
        let (header, body) = decode_request(&bytes).unwrap();
        assert_eq!(
            header,
            RequestHeader {
                request_id: 7,
                deadline_ms: 1500,
                method: "twophase.prepare".into()
            }
        );
        assert_eq!(body, b"body");

        let ok = encode_response(7, &Ok(b"yes".to_vec()));
        assert_eq!(decode_response(&ok).unwrap(), (7, Ok(b"yes".to_vec())));
        let err = RpcError::new("locked", "locked by txn T from node N");
        let bytes = encode_response(8, &Err(err.clone()));
        assert_eq!(decode_response(&bytes).unwrap(), (8, Err(err)));
        assert!(decode_request(&[]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            let _ = decode::<Hello>(&bytes);
            let _ = decode::<Proof>(&bytes);
        }
    }
}
