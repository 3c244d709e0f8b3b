//! Long-lived event streams served beside hyper (docs/architecture.md §4, §12).
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for every HTTP/1.1 connection
//! for as long as it is open; ten thousand open event streams would pay 160 MiB of address
//! space and about half their memory for buffers that carry one request head each. So a
//! connection whose first request is a `GET` of the role's stream prefix is read here: its
//! head is parsed into a request for the same router (the same middleware, metrics, traces
//! and handlers as any other request), and the response is written to the socket directly —
//! a stream's frames as HTTP/1.1 chunks, each written as it comes, with nothing held between
//! them but the socket and the body. Every other connection is hyper's.
//!
//! A stream connection carries that one request: the response says `connection: close`, and
//! anything the client sends after its head ends the connection. A client that does not
//! take a frame within the write timeout is dropped, so a reader that stopped cannot hold
//! its connection.

use std::io::Write as _;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use futures_util::StreamExt;
use hyper::service::Service as _;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use crate::telemetry::short;

/// The largest request head read (hyper's own limit is larger, but a stream request is a
/// path, a cookie and a few headers).
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// The largest non-stream answer (an error) collected before it is written.
const MAX_ANSWER: usize = 64 * 1024;

/// Which paths are streams, and how long a client may take to read a frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Streams {
    /// A `GET` whose target starts with this is a stream request.
    pub(crate) prefix: &'static str,
    /// A client that takes longer than this to accept a frame is dropped.
    pub(crate) write_timeout: Duration,
}

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum First {
    /// A stream request: serve it here.
    Stream,
    /// Anything else: hyper's.
    Other,
    /// The client closed, failed, or sent no request line in time: drop it.
    Gone,
}

/// Look at the start of the connection's first request without taking it off the socket.
pub(crate) async fn first_request(stream: &TcpStream, prefix: &str, deadline: Instant) -> First {
    let method = b"GET ";
    let wanted = method.len() + prefix.len();
    let mut seen = [0u8; 64];
    if wanted > seen.len() {
        return First::Other;
    }
    loop {
        let n = match timeout_at(deadline, stream.peek(&mut seen)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return First::Gone,
            Ok(Ok(n)) => n,
        };
        let agrees = seen[..n]
            .iter()
            .zip(method.iter().chain(prefix.as_bytes()))
            .all(|(a, b)| a == b);
        if !agrees {
            return First::Other;
        }
        if n >= wanted {
            return First::Stream;
        }
        // Part of a request line so far: peeking again at once would see the same bytes.
        if Instant::now() + Duration::from_millis(10) > deadline {
            return First::Gone;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serve a stream connection: its request by `app`, its response written here.
pub(crate) async fn serve(
    mut stream: TcpStream,
    app: Router,
    streams: Streams,
    header_deadline: Instant,
) {
    let request = match timeout_at(header_deadline, read_request(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(Refused(status, why))) => {
            let _ = timeout(streams.write_timeout, refuse(&mut stream, status, &why)).await;
            return;
        }
        // The client went away or took too long to send its head: nothing to answer.
        Err(_) => return,
    };
    let chunked = request.version() == axum::http::Version::HTTP_11;
    let response = match TowerToHyperService::new(app).call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let _ = write_response(stream, response, chunked, streams.write_timeout).await;
}

/// A request this module does not pass on, with the status and reason to answer.
struct Refused(StatusCode, String);

impl From<std::io::Error> for Refused {
    fn from(e: std::io::Error) -> Self {
        Refused(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// Read and parse the request head; a stream request has no body.
async fn read_request(stream: &mut TcpStream) -> Result<Request<Body>, Refused> {
    let mut head = Vec::with_capacity(1024);
    let end = loop {
        let searched_from = head.len().saturating_sub(3);
        if stream.read_buf(&mut head).await? == 0 {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "the connection closed inside the request head".into(),
            ));
        }
        if let Some(at) = head[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            break searched_from + at + 4;
        }
        if head.len() > MAX_HEAD {
            return Err(Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request head is larger than {MAX_HEAD} bytes"),
            ));
        }
    };
    if head.len() > end {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "a stream request carries no body and is the connection's only request".into(),
        ));
    }
    parse(&head[..end])
}

fn parse(head: &[u8]) -> Result<Request<Body>, Refused> {
    let bad = |why: String| Refused(StatusCode::BAD_REQUEST, why);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("an incomplete request head".into())),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Err(bad(format!("a malformed request head: {e}"))),
    }
    if parsed.method != Some("GET") {
        return Err(bad("a stream is opened with GET".into()));
    }
    // HTTP/1.0 (a proxy's default, nginx's among them) gets the stream without chunks,
    // ended by the connection's close.
    let version = match parsed.version {
        Some(0) => axum::http::Version::HTTP_10,
        _ => axum::http::Version::HTTP_11,
    };
    let target = parsed.path.unwrap_or("/");
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(version)
        .body(Body::empty())
        .map_err(|_| bad(format!("\"{}\" is not a request target", short(target))))?;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad(format!("\"{}\" is not a header name", short(h.name))))?;
        if name == header::CONTENT_LENGTH && h.value != b"0" || name == header::TRANSFER_ENCODING {
            return Err(bad("a stream request carries no body".into()));
        }
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| bad(format!("the {name} header's value is not valid")))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

/// Answer a request that never reached the router: the JSON error every API gives.
async fn refuse(stream: &mut TcpStream, status: StatusCode, why: &str) -> std::io::Result<()> {
    let code = if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        "headers_too_large"
    } else {
        "bad_request"
    };
    let body = serde_json::json!({ "error": code, "message": why }).to_string();
    let mut head = status_line(status);
    push_header(&mut head, "content-type", b"application/json");
    push_header(
        &mut head,
        "content-length",
        body.len().to_string().as_bytes(),
    );
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head.extend_from_slice(body.as_bytes());
    stream.write_all(&head).await?;
    stream.shutdown().await
}

fn status_line(status: StatusCode) -> Vec<u8> {
    let mut line = Vec::with_capacity(256);
    let _ = write!(
        line,
        "HTTP/1.1 {} {}\r\ndate: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    line
}

fn push_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Write the router's response: a body of known length at once, a stream frame by frame.
async fn write_response(
    mut stream: TcpStream,
    response: Response<Body>,
    chunked: bool,
    write_timeout: Duration,
) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let mut head = status_line(parts.status);
    for (name, value) in &parts.headers {
        if name != header::CONNECTION && name != header::TRANSFER_ENCODING {
            push_header(&mut head, name.as_str(), value.as_bytes());
        }
    }
    if let Some(length) = body.size_hint().exact() {
        // An error or another answer of known size: the whole of it, then close.
        let bytes = timeout(write_timeout, axum::body::to_bytes(body, MAX_ANSWER))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
            .map_err(std::io::Error::other)?;
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            push_header(&mut head, "content-length", length.to_string().as_bytes());
        }
        head.extend_from_slice(b"connection: close\r\n\r\n");
        head.extend_from_slice(&bytes);
        write_within(&mut stream, &head, write_timeout).await?;
        return stream.shutdown().await;
    }
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    let (mut input, mut output) = stream.split();
    write_within(&mut output, &head, write_timeout).await?;
    drop(head);
    let mut frames = body.into_data_stream();
    let mut probe = [0u8; 16];
    loop {
        let frame: Bytes = tokio::select! {
            frame = frames.next() => match frame {
                Some(Ok(frame)) => frame,
                // The body ended (the stream was closed for the client) or failed.
                Some(Err(_)) | None => break,
            },
            // The client closed its side, or sent something a stream does not expect.
            _ = input.read(&mut probe) => return Ok(()),
        };
        if frame.is_empty() {
            continue;
        }
        if chunked {
            let mut chunk = Vec::with_capacity(frame.len() + 12);
            let _ = write!(chunk, "{:x}\r\n", frame.len());
            chunk.extend_from_slice(&frame);
            chunk.extend_from_slice(b"\r\n");
            drop(frame);
            write_within(&mut output, &chunk, write_timeout).await?;
        } else {
            write_within(&mut output, &frame, write_timeout).await?;
        }
    }
    if chunked {
        write_within(&mut output, b"0\r\n\r\n", write_timeout).await?;
    }
    output.shutdown().await
}

/// Write all of `bytes`, or fail with `TimedOut` when the client takes longer than `within`.
async fn write_within(
    to: &mut (impl AsyncWriteExt + Unpin),
    bytes: &[u8],
    within: Duration,
) -> std::io::Result<()> {
    timeout(within, to.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_request_head_becomes_a_request() {
        let head = b"GET /live/meetings/m1?last_event_id=3-0 HTTP/1.1\r\nHost: x\r\nCookie: live_session=t\r\nLast-Event-ID: 5-0\r\n\r\n";
        let request = parse(head).map_err(|Refused(_, why)| why).unwrap();
        assert_eq!(request.uri().path(), "/live/meetings/m1");
        assert_eq!(request.uri().query(), Some("last_event_id=3-0"));
        assert_eq!(request.headers()["last-event-id"], "5-0");
        assert_eq!(request.headers()["cookie"], "live_session=t");
    }

    #[test]
    fn a_bad_head_is_refused_with_a_reason() {
        let refused = |head: &[u8]| match parse(head) {
            Err(Refused(status, why)) => (status.as_u16(), why),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(refused(b"POST /live/meetings HTTP/1.1\r\n\r\n").0, 400);
        assert_eq!(
            refused(b"GET /live/meetings HTTP/1.1\r\nContent-Length: 5\r\n\r\n").0,
            400
        );
        assert_eq!(
            refused(b"GET /live/meetings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").0,
            400
        );
        assert_eq!(
            refused(b"GET /live/meetings HTTP/1.1\r\nBad Name: x\r\n\r\n").0,
            400
        );
        let many: String = (0..70).map(|i| format!("x-{i}: 1\r\n")).collect();
        let head = format!("GET /live/meetings HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refused(head.as_bytes()).0, 431);
    }
}
