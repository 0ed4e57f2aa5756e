//! Property tests that fill the gaps `tests.rs` leaves (fuzzing on stable Rust). `tests.rs` drives valid
//! client streams, with printable header values, through the adapter into h2. Here:
//!
//! - the HPACK decoder against an independent encoder (httlib-hpack) with arbitrary bytes in
//!   names and values, Huffman or not, every indexing mode, table resizes between blocks;
//! - the decoder and the Huffman decoder on arbitrary bytes: no panic, output bounded;
//! - the adapter on arbitrary and mangled byte streams: no panic, its buffers bounded, and
//!   byte-for-byte transparency whenever there is no header block to rewrite.
//!
//! Cases come from `PROPTEST_CASES` (default 256); `cargo xtask fuzz` runs them for longer.

use bytes::BytesMut;
use httlib_hpack::Encoder;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::GrpcUnixStream;
use super::authority::MAX_BLOCK;
use super::hpack::{self, Decoder, Field};
use super::huffman;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const TABLE_SIZE: usize = 4096;
const MAX_LIST: usize = 64 * 1024;
/// What the adapter may hold at once: a block being assembled (raw and decoded, each at most
/// [`MAX_BLOCK`] plus one frame), one frame being read, its re-encoding, with room for
/// `BytesMut`'s growth. Independent of how much the client sends.
const MAX_HELD: usize = 4 * (MAX_BLOCK + 16_384 + 9 + 4096);

fn frame(dst: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    dst.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    dst.extend_from_slice(&stream.to_be_bytes());
    dst.extend_from_slice(payload);
}

/// Feeds `input` to an adapter (then EOF) and reads everything it hands on, in reads of
/// `chunk` bytes; returns that and the most the adapter held between reads.
fn through_adapter(input: &[u8], chunk: usize) -> (Vec<u8>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut adapter = GrpcUnixStream::new(server);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.unwrap();
            client.shutdown().await.unwrap();
            // Keep the client end open until the adapter has read to EOF.
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest).await;
        });
        let mut out = Vec::new();
        let mut held = 0;
        let mut buf = vec![0u8; chunk];
        loop {
            let n = adapter.read(&mut buf).await.unwrap();
            held = held.max(adapter.buffered_capacity());
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        drop(adapter);
        writer.await.unwrap();
        (out, held)
    })
}

/// A frame of any type but HEADERS, with any flags, stream and payload.
fn other_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>().prop_filter("not HEADERS", |k| *k != 0x1),
        any::<u8>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(kind, flags, stream, payload)| {
            let mut out = Vec::new();
            frame(&mut out, kind, flags, stream, &payload);
            out
        })
}

/// A frame that is often HEADERS or CONTINUATION, with HPACK-ish payloads, so the adapter's
/// block assembly and decoder see malformed input of every kind.
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![
        3 => Just(0x1u8),
        2 => Just(0x9u8),
        1 => Just(0x0u8),
        1 => Just(0x5u8),
        1 => any::<u8>(),
    ];
    let stream = prop_oneof![3 => Just(1u32), 1 => Just(0u32), 1 => any::<u32>()];
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        // Indexed references into the static and dynamic tables, literals, size updates.
        prop::collection::vec(
            prop::sample::select(vec![
                0x82u8, 0xbe, 0xff, 0x40, 0x3f, 0x20, 0x10, 0x00, 0x7f, 0x87
            ]),
            0..60
        ),
    ];
    (kind, any::<u8>(), stream, payload).prop_map(|(kind, flags, stream, payload)| {
        let mut out = Vec::new();
        frame(&mut out, kind, flags, stream, &payload);
        out
    })
}

/// One header field as a client may send it: arbitrary octets, any encoder flags.
fn field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, u8)> {
    (
        prop_oneof![
            prop::sample::select(vec![
                ":authority",
                ":path",
                "content-type",
                "x-a",
                "authorization"
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 1..40),
        ],
        prop::collection::vec(any::<u8>(), 0..120),
        prop::sample::select(vec![
            0u8, 0x1, 0x2, 0x3, 0x4, 0x6, 0x7, 0x8, 0xb, 0x13, 0x16, 0x17,
        ]),
    )
}

proptest! {
    /// Our decoder and an independent encoder agree on every block of a connection, whatever
    /// the octets, Huffman coding, indexing and table-size updates.
    #[test]
    fn hpack_decodes_what_an_independent_encoder_sent(
        blocks in prop::collection::vec(
            (prop::option::of(0u32..=4096), prop::collection::vec(field(), 0..12)),
            1..6,
        ),
    ) {
        let mut enc = Encoder::with_dynamic_size(TABLE_SIZE as u32);
        let mut dec = Decoder::new(TABLE_SIZE);
        for (resize, fields) in &blocks {
            let mut block = Vec::new();
            if let Some(size) = resize {
                enc.update_max_dynamic_size(*size, &mut block).unwrap();
            }
            for (name, value, flags) in fields {
                enc.encode((name.clone(), value.clone(), *flags), &mut block).unwrap();
            }
            let decoded = dec.decode(&block, usize::MAX).unwrap();
            let got: Vec<(Vec<u8>, Vec<u8>, bool)> = decoded
                .iter()
                .map(|f| (f.name.to_vec(), f.value.to_vec(), f.never_indexed))
                .collect();
            let want: Vec<(Vec<u8>, Vec<u8>, bool)> = fields
                .iter()
                .map(|(n, v, flags)| (n.clone(), v.clone(), flags & 0x8 != 0))
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    /// What the adapter re-encodes decodes to the same fields, never-indexed kept, and adds
    /// nothing to a receiver's dynamic table (a fresh decoder with a zero-size table reads it).
    #[test]
    fn hpack_re_encoding_round_trips_without_indexing(
        fields in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..120), any::<bool>()),
            0..16,
        ),
    ) {
        let fields: Vec<Field> = fields
            .into_iter()
            .map(|(name, value, never_indexed)| Field {
                name: name.into(),
                value: value.into(),
                never_indexed,
            })
            .collect();
        let mut dst = BytesMut::new();
        hpack::encode(&fields, &mut dst);
        let decoded = Decoder::new(0).decode(&dst, usize::MAX).unwrap();
        prop_assert_eq!(decoded, fields);
    }

    /// Arbitrary octets as a header block: refused or decoded, never a panic, and what is
    /// decoded stays within the list bound.
    #[test]
    fn hpack_arbitrary_blocks_stay_within_the_list_bound(
        blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 1..4),
        max_list in prop_oneof![Just(MAX_LIST), 0usize..2048],
    ) {
        let mut dec = Decoder::new(TABLE_SIZE);
        for block in &blocks {
            if let Ok(fields) = dec.decode(block, max_list) {
                let size: usize = fields.iter().map(|f| f.name.len() + f.value.len() + 32).sum();
                prop_assert!(size <= max_list, "{size} > {max_list}");
            }
        }
    }

    /// The shortest Huffman code is 5 bits: output is at most 8/5 of the input.
    #[test]
    fn huffman_output_is_bounded_by_its_input(src in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut dst = Vec::new();
        let _ = huffman::decode(&src, &mut dst);
        prop_assert!(dst.len() * 5 <= src.len() * 8, "{} from {}", dst.len(), src.len());
    }

    /// Not HTTP/2 (no preface): every byte reaches h2 as sent, for h2 to refuse.
    #[test]
    fn adapter_passes_anything_without_the_preface_through_unchanged(
        input in prop::collection::vec(any::<u8>(), 0..4000)
            .prop_filter("no preface", |b| !b.starts_with(&PREFACE[..b.len().min(PREFACE.len())]) || b.is_empty()),
        chunk in 1usize..5000,
    ) {
        let (out, held) = through_adapter(&input, chunk);
        prop_assert_eq!(out, input);
        prop_assert!(held <= MAX_HELD);
    }

    /// With the preface but no HEADERS frame there is nothing to rewrite: byte-for-byte
    /// transparency, whatever the other frames (and truncation at EOF) look like.
    #[test]
    fn adapter_is_transparent_without_header_blocks(
        frames in prop::collection::vec(other_frame(), 0..12),
        cut in any::<prop::sample::Index>(),
        chunk in 1usize..5000,
    ) {
        let mut input = PREFACE.to_vec();
        for f in &frames {
            input.extend_from_slice(f);
        }
        let input = &input[..PREFACE.len() + cut.index(input.len() - PREFACE.len() + 1)];
        let (out, held) = through_adapter(input, chunk);
        prop_assert_eq!(&out[..], input);
        prop_assert!(held <= MAX_HELD);
    }

    /// Arbitrary frames after the preface, header blocks included: no panic, bounded buffers,
    /// and output bounded by the input (a header block re-encodes to at most the list bound).
    #[test]
    fn adapter_holds_bounded_memory_on_arbitrary_frames(
        frames in prop::collection::vec(any_frame(), 0..16),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
        chunk in 1usize..5000,
    ) {
        let mut input = PREFACE.to_vec();
        for f in &frames {
            input.extend_from_slice(f);
        }
        input.extend_from_slice(&garbage);
        let (out, held) = through_adapter(&input, chunk);
        prop_assert!(held <= MAX_HELD, "held {held}");
        prop_assert!(out.starts_with(PREFACE));
        let blocks = frames.len() + 1;
        prop_assert!(out.len() <= input.len() + blocks * 2 * MAX_LIST, "{} from {}", out.len(), input.len());
    }

    /// A header block past the size bound, however it is split, is handed over and not held.
    #[test]
    fn adapter_never_holds_more_than_one_bounded_block(
        pieces in prop::collection::vec(1usize..16_384, 1..12),
        fill in any::<u8>(),
    ) {
        let mut input = PREFACE.to_vec();
        for (i, len) in pieces.iter().enumerate() {
            let (kind, flags) = if i == 0 { (0x1, 0) } else { (0x9, 0) };
            frame(&mut input, kind, flags, 1, &vec![fill; *len]);
        }
        let (out, held) = through_adapter(&input, 4096);
        prop_assert!(held <= MAX_HELD, "held {held}");
        // No END_HEADERS: the block never completes, so whatever was held goes to h2 as is.
        prop_assert_eq!(out, input);
    }
}
