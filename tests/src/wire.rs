#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers
//! Raw clients for bad-input tests: connections to a TCP or Unix listener, bytes written as
//! they are, HTTP/2 frames built by hand (headers encoded with sidecar-runtime's HPACK encoder,
//! the one the `:authority` adapter uses), gRPC messages with any length prefix, and a reader
//! that tallies what the server answered (GOAWAY, RST_STREAM, HEADERS, PING ACKs).
//!
//! Written from bytes, or with the `h2` crate when the point is the body, so nothing in
//! between can tidy the input up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Safety net for reads from an abusive connection (a healthy server answers in milliseconds).
pub const READ_LIMIT: Duration = Duration::from_secs(20);

// === Connections ===

/// A client connection, TCP or Unix.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A listener under test.
#[derive(Clone, Debug)]
pub enum Port {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Port {
    pub async fn connect(&self) -> Box<dyn Io> {
        match self {
            Self::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await.unwrap()),
            Self::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.unwrap()),
        }
    }
}

/// `n` reproducible pseudo-random bytes (xorshift), never starting like an HTTP/2 preface.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// Writes `bytes` (the server may stop reading and close: write errors are part of the
/// answer) and reads until the server closes; returns what it sent back, or `None` if it
/// kept the connection open past [`READ_LIMIT`].
pub async fn send_and_read_to_close(port: &Port, bytes: &[u8]) -> Option<Vec<u8>> {
    let io = port.connect().await;
    let (mut r, mut w) = tokio::io::split(io);
    let write = async {
        let _ = w.write_all(bytes).await;
        let _ = w.flush().await;
        w
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(READ_LIMIT, r.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(got),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let (_w, got) = tokio::join!(write, read);
    got
}

// === Raw HTTP/2 ===

/// The client connection preface and the frame types and flags the tests write or read.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_HEADERS: u8 = 0x4;
/// HTTP/2 error codes (RFC 9113 §7).
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// gRPC status codes the batteries expect.
pub const INTERNAL: u32 = 13;
pub const OUT_OF_RANGE: u32 = 11;
pub const REFUSED_STREAM: u32 = 0x7;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// The header block of a gRPC request to `path` (as a gRPC client sends it, with the
/// Workload API's security header), then `extra` fields.
pub fn grpc_head(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut fields: Vec<(&str, &[u8])> = vec![
        (":method", b"POST"),
        (":scheme", b"http"),
        (":path", path.as_bytes()),
        (":authority", b"localhost"),
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
        ("workload.spiffe.io", b"true"),
    ];
    fields.extend_from_slice(extra);
    sidecar_runtime::uds::header_block(&fields)
}

/// The preface and an empty SETTINGS frame.
pub fn h2_start() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(frame(SETTINGS, 0, 0, &[]));
    b
}

/// What a server sent back on a raw HTTP/2 connection.
#[derive(Debug, Default)]
pub struct Seen {
    /// GOAWAY's error code.
    pub goaway: Option<u32>,
    /// RST_STREAM frames by error code.
    pub resets: std::collections::BTreeMap<u32, usize>,
    /// Response header blocks; and how many began `:status: 200` (static index 8, 0x88).
    pub headers: usize,
    pub ok_headers: usize,
    /// PING acknowledgements: h2 handles frames in order, so an ACK of a PING sent last
    /// means everything before it was processed.
    pub ping_acks: usize,
    pub closed: bool,
    /// Whether the first bytes were an HTTP/2 frame at all (vs. e.g. an HTTP/1 answer).
    not_h2: bool,
}

/// Writes `bytes` while reading frames until `done(seen)`, a close or [`READ_LIMIT`].
pub async fn h2_exchange(
    port: &Port,
    bytes: Vec<u8>,
    done: impl Fn(&Seen) -> bool,
) -> (Seen, Box<dyn Io>) {
    let io = port.connect().await;
    let (mut r, mut w) = tokio::io::split(io);
    let write = async move {
        let _ = w.write_all(&bytes).await;
        let _ = w.flush().await;
        w
    };
    let read = async {
        let mut seen = Seen::default();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let deadline = Instant::now() + READ_LIMIT;
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, r.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0) | Err(_)) => {
                    seen.closed = true;
                    break;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf[3] > 0x9 && seen.headers == 0 && seen.resets.is_empty() {
                    seen.not_h2 = true;
                }
                if buf.len() < 9 + len {
                    break;
                }
                let payload = &buf[9..9 + len];
                match buf[3] {
                    GOAWAY if len >= 8 => {
                        seen.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                    }
                    RST_STREAM if len == 4 => {
                        let code = u32::from_be_bytes(payload.try_into().unwrap());
                        *seen.resets.entry(code).or_default() += 1;
                    }
                    PING if buf[4] & 1 == 1 => seen.ping_acks += 1,
                    HEADERS => {
                        seen.headers += 1;
                        seen.ok_headers += usize::from(payload.first() == Some(&0x88));
                    }
                    _ => {}
                }
                buf.drain(..9 + len);
            }
        }
        (seen, r)
    };
    let (w, (seen, r)) = tokio::join!(write, read);
    (seen, Box::new(r.unsplit(w)))
}

// === gRPC bodies through h2 ===

/// Sends one gRPC request with `body` as the raw message bytes (length prefix and all) and
/// returns the `grpc-status` the server answered with.
pub async fn grpc_raw(port: &Port, path: &str, body: Vec<u8>) -> u32 {
    let io = port.connect().await;
    let (mut client, conn) = h2::client::handshake(io).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("workload.spiffe.io", "true")
        .body(())
        .unwrap();
    client = client.ready().await.unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream.send_data(Bytes::from(body), true).unwrap();
    let response = tokio::time::timeout(READ_LIMIT, response)
        .await
        .unwrap()
        .unwrap();
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .map(|v| v.to_str().unwrap().parse::<u32>().unwrap())
    };
    let code = if let Some(code) = status(response.headers()) {
        code
    } else {
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        status(&body.trailers().await.unwrap().expect("trailers")).expect("grpc-status")
    };
    conn.abort();
    code
}

/// A gRPC message: the 5-byte prefix (not compressed) and `message`.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut b = vec![0];
    b.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    b.extend(message);
    b
}

/// `message` with every occurrence of the marker `¤¤` (C2 A4 C2 A4) replaced by bytes that
/// are not UTF-8 (C0 FF FE 80: same length, so protobuf lengths still hold).
pub fn with_invalid_utf8(mut message: Vec<u8>) -> Vec<u8> {
    let marker = "¤¤".as_bytes();
    let mut i = 0;
    let mut replaced = 0;
    while i + marker.len() <= message.len() {
        if &message[i..i + marker.len()] == marker {
            message[i..i + marker.len()].copy_from_slice(&[0xc0, 0xff, 0xfe, 0x80]);
            replaced += 1;
        }
        i += 1;
    }
    assert!(replaced > 0, "marker present");
    message
}
