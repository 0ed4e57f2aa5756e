//! The `:authority` adapter: HTTP/2 as a client sends it over a Unix socket, with the one
//! header h2 would refuse made acceptable.
//!
//! gRPC C-core (grpcio, py-spiffe, C++, Envoy's `google_grpc`) sends the percent-encoded
//! socket path as `:authority` on `unix:` targets, grpc-java the raw path (the table of
//! clients in docs/architecture.md, read off the wire by tests/go_java_clients.rs). `h2`
//! refuses the request with RST_STREAM(PROTOCOL_ERROR) because `http::uri::Authority` does not
//! parse it (hyperium/h2#487). This adapter sits between the socket and h2 on the
//! read side only: frames pass through as they are, except header blocks, which are decoded
//! with the client's HPACK context and handed to h2 re-encoded, with an `:authority` that
//! `Authority` refuses replaced by `localhost` (what grpc-go sends). Everything written to
//! the client passes through untouched.
//!
//! What keeps it sound:
//! - h2's HPACK table is never written to: the re-encoded blocks use static references and
//!   literals without indexing only, so h2's dynamic table stays empty while ours mirrors
//!   the client's. They cannot disagree.
//! - Whatever the adapter does not understand, h2 judges: a malformed frame, a header block
//!   that does not decode, one past the size bounds, a preface that is not HTTP/2. From then
//!   on the connection passes through raw, starting with the very bytes in question, and h2
//!   closes the connection with the error it would have sent anyway. (Raw blocks are still
//!   decoded consistently by h2: its table holds only entries added after the switch, the
//!   newest ones of the client's table, so a reference resolves to the same entry or fails.)
//! - Memory is bounded: one header block of at most [`MAX_BLOCK`] bytes and a table of
//!   4,096 bytes; DATA and every other frame stream through with no buffering beyond a read,
//!   and a drained read buffer is freed, so an idle connection holds only the HPACK table.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::STATS;
use super::hpack::{self, Decoder};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// The frame size every HTTP/2 peer must accept, and what our servers advertise (hyper's
/// default SETTINGS_MAX_FRAME_SIZE): re-encoded blocks are split to fit it, and a larger
/// header frame is left to h2 to refuse.
const MAX_FRAME: usize = 16_384;
/// The largest compressed header block (all its frames) the adapter assembles.
pub(crate) const MAX_BLOCK: usize = 64 * 1024;
/// The largest decoded header list it rewrites: four times hyper's 16 KiB
/// SETTINGS_MAX_HEADER_LIST_SIZE, so h2 stays the one that answers oversized requests.
const MAX_LIST: usize = 64 * 1024;
/// SETTINGS_HEADER_TABLE_SIZE of our servers: the protocol default, which neither hyper nor
/// tonic changes (a test checks the server's SETTINGS frame).
const HEADER_TABLE_SIZE: usize = 4096;
const READ_CHUNK: usize = 4096;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The authority put in place of one h2 refuses: what grpc-go and Kubernetes send on UDS.
const LOCALHOST: &[u8] = b"localhost";

/// A server-side connection whose client header blocks are made acceptable to h2.
/// Build one per accepted Unix-socket connection; TCP connections need none.
pub struct GrpcUnixStream<IO> {
    io: IO,
    mode: Mode,
    /// Bytes read from the client and not yet handed on.
    inbuf: BytesMut,
    /// Re-encoded (or given-up) frames, handed to h2 before anything in `inbuf`.
    out: BytesMut,
    /// Bytes at the front of `inbuf` (and after it, of the socket) to pass through as-is.
    forward: usize,
    /// A header block whose END_HEADERS has not arrived yet.
    block: Option<Block>,
    decoder: Decoder,
    eof: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Preface,
    Frames,
    /// Everything from here on is h2's to judge, byte for byte.
    Passthrough,
}

struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
    /// The frames as received, for handing over unchanged when the adapter gives up.
    raw: BytesMut,
}

enum Step {
    Progress,
    NeedInput,
}

impl<IO> fmt::Debug for GrpcUnixStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcUnixStream")
            .field("mode", &self.mode)
            .field("buffered", &self.inbuf.len())
            .finish_non_exhaustive()
    }
}

// === impl GrpcUnixStream ===

impl<IO> GrpcUnixStream<IO> {
    /// Wraps an accepted connection.
    pub fn new(io: IO) -> Self {
        STATS.connections.fetch_add(1, Relaxed);
        Self {
            io,
            mode: Mode::Preface,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            forward: 0,
            block: None,
            decoder: Decoder::new(HEADER_TABLE_SIZE),
            eof: false,
        }
    }

    /// Wraps a connection without rewriting anything: h2 sees the client's bytes as they are.
    pub fn passthrough(io: IO) -> Self {
        Self {
            mode: Mode::Passthrough,
            ..Self::new(io)
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Parses what `inbuf` holds, moving it to `out` or marking it to forward.
    fn step(&mut self) -> Step {
        match self.mode {
            Mode::Passthrough => Step::Progress,
            Mode::Preface => {
                let n = self.inbuf.len().min(PREFACE.len());
                if self.inbuf[..n] != PREFACE[..n] {
                    self.give_up(None);
                    Step::Progress
                } else if n < PREFACE.len() {
                    Step::NeedInput
                } else {
                    self.forward = PREFACE.len();
                    self.mode = Mode::Frames;
                    Step::Progress
                }
            }
            Mode::Frames => self.frame(),
        }
    }

    fn frame(&mut self) -> Step {
        let Some(head) = self.inbuf.get(..FRAME_HEADER) else {
            return Step::NeedInput;
        };
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let kind = head[3];
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        // A block in progress must be continued on its stream and nothing else (§6.10).
        let continues = self
            .block
            .as_ref()
            .map(|b| kind == CONTINUATION && stream == b.stream);
        match (kind, continues) {
            (_, Some(false)) | (CONTINUATION, None) | (PUSH_PROMISE, _) => {
                self.give_up(None);
                Step::Progress
            }
            (HEADERS | CONTINUATION, _) => {
                if len > MAX_FRAME || stream == 0 {
                    self.give_up(None);
                    return Step::Progress;
                }
                if self.inbuf.len() < FRAME_HEADER + len {
                    self.inbuf.reserve(FRAME_HEADER + len - self.inbuf.len());
                    return Step::NeedInput;
                }
                let frame = self.inbuf.split_to(FRAME_HEADER + len).freeze();
                self.header_frame(frame);
                Step::Progress
            }
            _ => {
                self.forward = FRAME_HEADER + len;
                Step::Progress
            }
        }
    }

    /// One HEADERS or CONTINUATION frame, whole.
    fn header_frame(&mut self, frame: Bytes) {
        let (kind, flags) = (frame[3], frame[4]);
        let mut payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            let mut pad = 0;
            if flags & PADDED != 0 {
                let Some((&n, rest)) = payload.split_first() else {
                    return self.give_up(Some(frame));
                };
                pad = usize::from(n);
                payload = rest;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let Some((p, rest)) = payload.split_first_chunk::<5>() else {
                    return self.give_up(Some(frame));
                };
                priority = Some(*p);
                payload = rest;
            }
            // Padding that eats the fragment is a PROTOCOL_ERROR (§6.2): h2's to send.
            let Some(end) = payload.len().checked_sub(pad) else {
                return self.give_up(Some(frame));
            };
            payload = &payload[..end];
            self.block = Some(Block {
                stream: u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: BytesMut::new(),
                raw: BytesMut::new(),
            });
        }
        let Some(block) = self.block.as_mut() else {
            return self.give_up(Some(frame));
        };
        block.fragment.extend_from_slice(payload);
        block.raw.extend_from_slice(&frame);
        if block.raw.len() > MAX_BLOCK {
            return self.give_up(None);
        }
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.finish(block);
        }
    }

    /// Re-encodes a complete block into `out`, or hands it over raw if it does not decode.
    fn finish(&mut self, block: Block) {
        let mut fields = match self.decoder.decode(&block.fragment, MAX_LIST) {
            Ok(fields) => fields,
            Err(error) => {
                tracing::debug!(%error, "header block h2 will have to refuse; passing through");
                self.block = Some(block);
                return self.give_up(None);
            }
        };
        for field in &mut fields {
            if field.name == ":authority"
                && http::uri::Authority::from_maybe_shared(field.value.clone()).is_err()
            {
                field.value = Bytes::from_static(LOCALHOST);
                STATS.rewritten.fetch_add(1, Relaxed);
            }
        }
        let mut encoded = BytesMut::with_capacity(block.fragment.len() + 64);
        hpack::encode(&fields, &mut encoded);
        self.put_frames(&block, encoded.freeze());
    }

    /// Frames `encoded` as HEADERS (+ CONTINUATION), each at most [`MAX_FRAME`].
    fn put_frames(&mut self, block: &Block, mut encoded: Bytes) {
        let mut first = true;
        loop {
            let room = MAX_FRAME
                - if first && block.priority.is_some() {
                    5
                } else {
                    0
                };
            let chunk = encoded.split_to(room.min(encoded.len()));
            let mut flags = 0;
            if encoded.is_empty() {
                flags |= END_HEADERS;
            }
            let kind = if first {
                if block.end_stream {
                    flags |= END_STREAM;
                }
                if block.priority.is_some() {
                    flags |= PRIORITY;
                }
                HEADERS
            } else {
                CONTINUATION
            };
            let priority = if first { block.priority } else { None };
            let len = chunk.len() + priority.map_or(0, |p| p.len());
            // `len <= MAX_FRAME < 2^24`: three bytes hold it.
            let [_, l0, l1, l2] = u32::try_from(len).unwrap_or(0).to_be_bytes();
            self.out.extend_from_slice(&[l0, l1, l2, kind, flags]);
            self.out.put_u32(block.stream);
            if let Some(p) = priority {
                self.out.extend_from_slice(&p);
            }
            self.out.extend_from_slice(&chunk);
            first = false;
            if encoded.is_empty() {
                break;
            }
        }
    }

    /// From here on the connection is h2's alone: what the adapter holds of the current block
    /// (and `pending`, a frame already taken from `inbuf`) goes first, then the rest raw.
    fn give_up(&mut self, pending: Option<Bytes>) {
        self.mode = Mode::Passthrough;
        STATS.passthrough.fetch_add(1, Relaxed);
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.raw);
        }
        if let Some(frame) = pending {
            self.out.extend_from_slice(&frame);
        }
    }
}

#[cfg(test)]
impl<IO> GrpcUnixStream<IO> {
    pub(crate) fn buffered_capacity(&self) -> usize {
        self.inbuf.capacity()
            + self.out.capacity()
            + self
                .block
                .as_ref()
                .map_or(0, |b| b.raw.capacity() + b.fragment.capacity())
    }

    pub(crate) fn is_passthrough(&self) -> bool {
        self.mode == Mode::Passthrough
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GrpcUnixStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                release_if_empty(&mut this.out);
                return Poll::Ready(Ok(()));
            }
            let passthrough = this.mode == Mode::Passthrough;
            if (passthrough || this.forward > 0) && !this.inbuf.is_empty() {
                let limit = if passthrough {
                    usize::MAX
                } else {
                    this.forward
                };
                let n = this.inbuf.len().min(limit).min(buf.remaining());
                buf.put_slice(&this.inbuf[..n]);
                this.inbuf.advance(n);
                release_if_empty(&mut this.inbuf);
                if !passthrough {
                    this.forward -= n;
                }
                return Poll::Ready(Ok(()));
            }
            if !passthrough && this.forward == 0 && matches!(this.step(), Step::Progress) {
                continue;
            }
            if this.eof {
                if this.inbuf.is_empty() && this.block.is_none() {
                    return Poll::Ready(Ok(()));
                }
                // A truncated frame at EOF: h2 sees the same bytes, then EOF, as without us.
                this.give_up(None);
                continue;
            }
            if this.inbuf.capacity() - this.inbuf.len() < READ_CHUNK {
                this.inbuf.reserve(READ_CHUNK);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.inbuf
            ))?;
            if n == 0 {
                this.eof = true;
            }
        }
    }
}

/// Frees a drained buffer: an idle connection (an SDS stream waits hours between pushes)
/// then holds no read buffer of ours at all, at the cost of one allocation per read.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GrpcUnixStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GrpcUnixStream<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
