//! The adapter against the real h2 server, fed by a real HPACK encoder (httlib-hpack).

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use httlib_hpack::Encoder;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;

// === h2 plumbing ===

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;
const GOAWAY: u8 = 0x7;

fn frame(dst: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    dst.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    dst.put_u32(stream);
    dst.extend_from_slice(payload);
}

fn preface() -> BytesMut {
    let mut out = BytesMut::from(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]);
    frame(&mut out, SETTINGS, 0, 0, &[]);
    out
}

/// A request as h2 decoded it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    stream: u32,
    method: String,
    path: String,
    authority: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Runs an h2 server behind the adapter on one end of a duplex pipe; returns the client end,
/// a receiver of the requests h2 accepted, and the connection task (Err if h2 failed it).
fn server() -> (
    DuplexStream,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let (client, server) = tokio::io::duplex(1 << 20);
    serve(client, GrpcUnixStream::new(server))
}

/// The same h2 server on any connection (with the adapter or without).
fn serve<IO>(
    client: DuplexStream,
    io: IO,
) -> (
    DuplexStream,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut conn = h2::server::handshake(io).await?;
        while let Some(request) = conn.accept().await {
            let (request, mut respond) = request?;
            let tx = tx.clone();
            // h2 makes progress only while the connection is polled: one task a stream.
            tokio::spawn(async move {
                let stream = u32::from(respond.stream_id());
                let (parts, mut body) = request.into_parts();
                let mut data = Vec::new();
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                let _ = tx.send(Seen {
                    stream,
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    authority: parts.uri.authority().map(ToString::to_string),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                        .collect(),
                    body: data,
                });
                let _ = respond.send_response(http::Response::new(()), true);
            });
        }
        Ok(())
    });
    (client, rx, task)
}

/// Writes `bytes`, then reads the server's frames until it has answered `responses` requests,
/// sent GOAWAY, or closed; returns them.
async fn exchange(mut client: DuplexStream, bytes: &[u8], responses: usize) -> Vec<u8> {
    client.write_all(bytes).await.unwrap();
    let mut back = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = client.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
            let frames = frames(&back);
            let answered = frames.iter().filter(|(kind, _)| *kind == 0x1).count();
            if answered >= responses || frames.iter().any(|(kind, _)| *kind == GOAWAY) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the server neither answered nor closed");
    back
}

/// The complete frames in `bytes`: (type, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// The error code of the first GOAWAY among the server's frames.
fn goaway(bytes: &[u8]) -> Option<u32> {
    frames(bytes)
        .into_iter()
        .find(|(kind, _)| *kind == GOAWAY)
        .map(|(_, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

async fn collect(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>, n: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(s)) => seen.push(s),
            _ => break,
        }
    }
    seen.sort_by_key(|s| s.stream);
    seen
}

fn encode(enc: &mut Encoder<'_>, fields: &[(&str, &str)], flags: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        enc.encode(
            (n.as_bytes().to_vec(), v.as_bytes().to_vec(), flags),
            &mut out,
        )
        .unwrap();
    }
    out
}

// === examples ===

#[tokio::test]
async fn a_grpc_core_socket_authority_reaches_h2_as_localhost() {
    let (client, mut rx, _task) = server();
    let mut enc = Encoder::default();
    let mut bytes = preface();
    for (stream, authority) in [
        (1, "%2Ftmp%2Fagent.sock"),
        (3, "/tmp/agent.sock"),
        (5, "localhost:1"),
    ] {
        let block = encode(
            &mut enc,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/SpiffeWorkloadAPI/FetchJWTSVID"),
                (":authority", authority),
                ("workload.spiffe.io", "true"),
            ],
            Encoder::HUFFMAN_VALUE | Encoder::WITH_INDEXING | Encoder::BEST_FORMAT,
        );
        frame(&mut bytes, 0x1, 0x4 | 0x1, stream, &block);
    }
    let _ = exchange(client, &bytes, 3).await;
    let seen = collect(&mut rx, 3).await;
    let authorities: Vec<_> = seen.iter().map(|s| s.authority.clone().unwrap()).collect();
    assert_eq!(authorities, ["localhost", "localhost", "localhost:1"]);
    assert!(
        seen.iter()
            .all(|s| s.headers == [("workload.spiffe.io".into(), "true".into())])
    );
}

#[tokio::test]
async fn a_block_larger_than_a_frame_once_re_encoded_is_split_into_continuations() {
    // 40 headers of 800 bytes, Huffman-coded by the client across three frames: re-encoded as
    // plain literals the block is ~33 KiB, so h2 must receive HEADERS + CONTINUATIONs.
    let (client, mut rx, _task) = server();
    let mut enc = Encoder::default();
    let mut fields: Vec<(String, String)> = vec![
        (":method".into(), "POST".into()),
        (":scheme".into(), "http".into()),
        (":path".into(), "/x".into()),
        (":authority".into(), "%2Frun%2Fa.sock".into()),
    ];
    for i in 0..40 {
        fields.push((format!("x-h{i}"), "abcdefgh".repeat(100)));
    }
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let block = encode(&mut enc, &refs, Encoder::HUFFMAN_VALUE);
    assert!(block.len() < 3 * 16_384);
    let mut bytes = preface();
    let chunks: Vec<&[u8]> = block.chunks(block.len() / 3 + 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        // END_STREAM on the HEADERS frame, END_HEADERS on the last one.
        let mut flags = if i == 0 { 0x1 } else { 0 };
        if i + 1 == chunks.len() {
            flags |= 0x4;
        }
        frame(&mut bytes, if i == 0 { 0x1 } else { 0x9 }, flags, 1, chunk);
    }
    let _ = exchange(client, &bytes, 1).await;
    let seen = collect(&mut rx, 1).await;
    assert_eq!(seen.len(), 1, "h2 accepted the request");
    assert_eq!(seen[0].authority.as_deref(), Some("localhost"));
    assert_eq!(seen[0].headers.len(), 40);
    assert!(seen[0].headers.iter().all(|(_, v)| v.len() == 800));
}

type WriteFrames = Box<dyn Fn(&mut BytesMut)>;

#[tokio::test]
async fn malformed_frames_get_the_goaway_h2_alone_sends() {
    let block = encode(
        &mut Encoder::default(),
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "/x"),
        ],
        0,
    );
    let cases: Vec<(&str, WriteFrames)> = vec![
        (
            "padding longer than the frame",
            Box::new(|b| frame(b, 0x1, 0x4 | 0x8, 1, &[200, 0x82])),
        ),
        (
            "CONTINUATION without HEADERS",
            Box::new(|b| frame(b, 0x9, 0x4, 1, &[0x82])),
        ),
        (
            "HEADERS interrupted by DATA",
            Box::new(move |b| {
                frame(b, 0x1, 0, 1, &block[..2]);
                frame(b, DATA, 0, 1, b"x");
            }),
        ),
        (
            "index past the dynamic table",
            Box::new(|b| frame(b, 0x1, 0x4, 1, &[0x82, 0xff, 0x10])),
        ),
        (
            "table size update above the setting",
            Box::new(|b| frame(b, 0x1, 0x4, 1, &[0x3f, 0xe2, 0x1f, 0x82])),
        ),
        (
            "table size update after a field",
            Box::new(|b| frame(b, 0x1, 0x4, 1, &[0x82, 0x20])),
        ),
        (
            "bad Huffman padding",
            Box::new(|b| frame(b, 0x1, 0x4, 1, &[0x82, 0x01, 0x81, 0x00])),
        ),
        (
            "HEADERS on stream 0",
            Box::new(|b| frame(b, 0x1, 0x4, 0, &[0x82])),
        ),
        (
            "HEADERS larger than the frame size",
            Box::new(|b| frame(b, 0x1, 0x4, 1, &vec![0x82; 16_385])),
        ),
        (
            "PUSH_PROMISE from a client",
            Box::new(|b| frame(b, 0x5, 0x4, 1, &[0, 0, 0, 2, 0x82])),
        ),
        (
            "not HTTP/2 at all",
            Box::new(|b| {
                b.clear();
                b.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            }),
        ),
    ];
    for (what, write) in cases {
        let mut bytes = preface();
        write(&mut bytes);
        let mut codes = Vec::new();
        for adapter in [false, true] {
            let (client, server_end) = tokio::io::duplex(1 << 20);
            let (client, _rx, task) = if adapter {
                serve(client, GrpcUnixStream::new(server_end))
            } else {
                serve(client, server_end)
            };
            let back = exchange(client, &bytes, 1).await;
            assert!(
                task.await.unwrap().is_err(),
                "{what}: h2 failed the connection"
            );
            codes.push(goaway(&back));
        }
        assert_eq!(
            codes[0], codes[1],
            "{what}: GOAWAY without and with the adapter"
        );
    }
}

#[tokio::test]
async fn a_header_block_past_the_bound_is_handed_over_and_memory_stays_bounded() {
    // 100 KiB of headers in CONTINUATIONs: the adapter gives up at 64 KiB, h2 then refuses
    // the request (its list limit is far lower) and the adapter holds no more than a block.
    let (client, server_end) = tokio::io::duplex(1 << 20);
    let adapter = tokio::spawn(async move {
        let mut a = GrpcUnixStream::new(server_end);
        let mut sink = vec![0u8; 8192];
        let mut peak = 0;
        loop {
            let n = a.read(&mut sink).await.unwrap();
            peak = peak.max(a.buffered_capacity());
            if n == 0 {
                return (peak, a.is_passthrough());
            }
        }
    });
    let mut enc = Encoder::default();
    let mut block = encode(
        &mut enc,
        &[(":method", "GET"), (":scheme", "http"), (":path", "/")],
        0,
    );
    for i in 0..100 {
        let value = "v".repeat(1000);
        block.extend(encode(&mut enc, &[(&format!("x-{i}"), &value)], 0));
    }
    let mut bytes = preface();
    let mut chunks = block.chunks(10_000).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let end = if chunks.peek().is_none() { 0x4 } else { 0 };
        frame(&mut bytes, if first { 0x1 } else { 0x9 }, end, 1, chunk);
        first = false;
    }
    let mut client = client;
    client.write_all(&bytes).await.unwrap();
    client.shutdown().await.unwrap();
    let (peak, passthrough) = adapter.await.unwrap();
    assert!(passthrough, "the adapter handed the block to h2");
    assert!(
        peak < 2 * super::authority::MAX_BLOCK,
        "peak buffer {peak} bytes"
    );
}

// === the property ===

#[derive(Debug, Clone)]
struct Request {
    authority: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// httlib flags for this block: Huffman on/off, indexing, never-indexed.
    flags: u8,
    /// A dynamic table size update before this block (≤ 4096).
    resize: Option<u32>,
    /// Where to cut the block into HEADERS + CONTINUATIONs (fractions of its length).
    cuts: Vec<u16>,
    padded: Option<u8>,
    priority: bool,
}

fn token() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,20}".prop_map(|s| format!("x-{s}"))
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop_oneof![
            Just("localhost".to_string()),
            "[a-z0-9.]{1,30}(:[0-9]{1,5})?",
            "(%2F[a-zA-Z0-9._-]{1,12}){1,6}",
            "(/[a-zA-Z0-9._-]{1,12}){1,6}",
            Just(String::new()),
        ],
        prop::collection::vec((token(), "[ -~]{0,200}"), 0..12),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::sample::select(vec![0u8, 0x3, 0x4, 0x6, 0x7, 0x8, 0xb, 0x13, 0x16, 0x17]),
        prop::option::of(prop_oneof![Just(0u32), 0u32..=4096]),
        prop::collection::vec(any::<u16>(), 0..4),
        prop::option::of(any::<u8>()),
        any::<bool>(),
    )
        .prop_map(
            |(authority, mut headers, body, flags, resize, cuts, padded, priority)| {
                // http::HeaderMap groups repeated names; unique names keep the order comparable.
                let mut names = std::collections::HashSet::new();
                headers.retain(|(n, _)| names.insert(n.clone()));
                Request {
                    authority,
                    headers,
                    body,
                    flags,
                    resize,
                    cuts,
                    padded,
                    priority,
                }
            },
        )
}

/// Encodes every request with one encoder (so later blocks index earlier entries), splits
/// blocks at the cuts, and interleaves each request's DATA after the next one's HEADERS.
fn wire(requests: &[Request]) -> Bytes {
    let mut enc = Encoder::with_dynamic_size(4096);
    let mut out = preface();
    let mut pending_data: Option<(u32, Vec<u8>)> = None;
    for (i, r) in requests.iter().enumerate() {
        let stream = 2 * u32::try_from(i).unwrap() + 1;
        let mut block = Vec::new();
        if let Some(size) = r.resize {
            enc.update_max_dynamic_size(size, &mut block).unwrap();
        }
        let mut fields: Vec<(String, String)> = vec![
            (":method".into(), "POST".into()),
            (":scheme".into(), "http".into()),
            (":path".into(), "/SpiffeWorkloadAPI/FetchX509SVID".into()),
            (":authority".into(), r.authority.clone()),
        ];
        fields.extend(r.headers.iter().cloned());
        for (n, v) in &fields {
            enc.encode(
                (n.as_bytes().to_vec(), v.as_bytes().to_vec(), r.flags),
                &mut block,
            )
            .unwrap();
        }
        let mut cuts: Vec<usize> = r
            .cuts
            .iter()
            .map(|c| usize::from(*c) * block.len() / 65536)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut start = 0;
        let pieces: Vec<&[u8]> = cuts
            .iter()
            .chain(std::iter::once(&block.len()))
            .map(|&end| {
                let piece = &block[start..end.max(start)];
                start = end.max(start);
                piece
            })
            .collect();
        for (k, piece) in pieces.iter().enumerate() {
            let last = k + 1 == pieces.len();
            let mut flags = if last { 0x4 } else { 0 };
            if k == 0 {
                let mut payload = Vec::new();
                if let Some(pad) = r.padded {
                    flags |= 0x8;
                    payload.push(pad);
                }
                if r.priority {
                    flags |= 0x20;
                    payload.extend_from_slice(&[0, 0, 0, 0, 15]);
                }
                payload.extend_from_slice(piece);
                payload.extend(std::iter::repeat_n(0, usize::from(r.padded.unwrap_or(0))));
                frame(&mut out, 0x1, flags, stream, &payload);
            } else {
                frame(&mut out, 0x9, flags, stream, piece);
            }
        }
        if let Some((s, body)) = pending_data.take() {
            frame(&mut out, DATA, 0x1, s, &body);
        }
        pending_data = Some((stream, r.body.clone()));
    }
    if let Some((s, body)) = pending_data.take() {
        frame(&mut out, DATA, 0x1, s, &body);
    }
    out.freeze()
}

proptest! {
    // Cases from PROPTEST_CASES (default 256), so `cargo xtask fuzz` can run more.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn h2_decodes_what_the_client_encoded_except_a_refused_authority(
        requests in prop::collection::vec(request(), 1..8),
        read_sizes in prop::collection::vec(1usize..64, 1..8),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let seen = rt.block_on(async {
            let (client, mut rx, _task) = server();
            let bytes = wire(&requests);
            // Deliver in ragged pieces so frames straddle reads.
            let mut client = client;
            let mut rest = &bytes[..];
            let mut sizes = read_sizes.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap() * 17).min(rest.len());
                client.write_all(&rest[..n]).await.unwrap();
                rest = &rest[n..];
            }
            let _ = exchange(client, &[], requests.len()).await;
            collect(&mut rx, requests.len()).await
        });
        prop_assert_eq!(seen.len(), requests.len());
        for (r, s) in requests.iter().zip(&seen) {
            let valid = http::uri::Authority::try_from(r.authority.as_str()).is_ok();
            let expected = if valid { r.authority.clone() } else { "localhost".into() };
            prop_assert_eq!(s.authority.as_deref(), Some(expected.as_str()));
            prop_assert_eq!(&s.method, "POST");
            prop_assert_eq!(&s.path, "/SpiffeWorkloadAPI/FetchX509SVID");
            prop_assert_eq!(&s.headers, &r.headers);
            prop_assert_eq!(&s.body, &r.body);
        }
    }
}

// === listeners ===

#[tokio::test]
async fn binds_with_mode_refuses_a_live_socket_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/socket");
    let _first = bind_unix(&path, 0o600).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let err = bind_unix(&path, 0o600).await.unwrap_err();
    assert!(matches!(err, ListenError::InUse { .. }), "{err}");
    let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("socket")]);
}

#[tokio::test]
async fn a_live_socket_that_cannot_accept_now_is_not_taken_for_stale() {
    // A server too busy to accept (full backlog) answers connect() with EAGAIN, not
    // ECONNREFUSED: it is alive, and must not be renamed over.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let socket = tokio::net::UnixSocket::new_stream().unwrap();
    socket.bind(&path).unwrap();
    let busy = socket.listen(1).unwrap();
    let mut held = Vec::new();
    let full = loop {
        match tokio::net::UnixStream::connect(&path).await {
            Ok(s) => held.push(s),
            Err(e) => break e,
        }
        assert!(held.len() < 1000, "backlog never filled");
    };
    assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock, "{full}");
    let err = bind_unix(&path, 0o600).await.unwrap_err();
    assert!(matches!(err, ListenError::Undecided { .. }), "{err}");
    drop(busy);
}

#[tokio::test]
async fn stale_socket_is_replaced_and_removed_at_shutdown_only_if_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    // A socket file nobody listens on, as a crashed server leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let (listener, file) = bind_unix(&path, 0o600).await.unwrap().into_parts();
    assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
    drop(listener);
    // A successor replaced the file: ours must not delete it.
    let successor = bind_unix(&path, 0o600).await.unwrap();
    file.remove().await;
    assert!(path.exists(), "successor's socket kept");
    let (_l, file) = successor.into_parts();
    file.remove().await;
    assert!(!path.exists(), "own socket removed");
}

#[tokio::test]
async fn refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    std::fs::write(&path, b"not a socket").unwrap();
    let err = bind_unix(&path, 0o600).await.unwrap_err();
    assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}
