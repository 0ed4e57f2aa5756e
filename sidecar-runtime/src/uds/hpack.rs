//! HPACK (RFC 7541), as much as the `:authority` adapter needs: a decoder that mirrors the
//! client's encoder (static and dynamic tables, Huffman, size updates), and an encoder that
//! writes only representations which never touch the receiver's dynamic table.
//!
//! Writing "literal without indexing" (or "never indexed") and static-table references only
//! is what makes the adapter safe: h2's dynamic table stays empty whatever the client does,
//! so it can never disagree with the table this decoder keeps for the client (§2.3.2).

use std::collections::VecDeque;

use bytes::{BufMut as _, Bytes, BytesMut};

use super::huffman::{self, HuffmanError};

/// RFC 7541 Appendix A. Index 1 is `STATIC[0]`.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// An entry's size in the table's accounting (RFC 7541 §4.1), also the unit of
/// SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2).
const ENTRY_OVERHEAD: usize = 32;

/// One decoded header field.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: Bytes,
    pub(crate) value: Bytes,
    /// Sent as "never indexed" (§6.2.3): kept so on re-encoding, as intermediaries must.
    pub(crate) never_indexed: bool,
}

impl std::fmt::Debug for Field {
    // Header values carry tokens (`authorization`): never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Field")
            .field("name", &String::from_utf8_lossy(&self.name))
            .field("value_len", &self.value.len())
            .finish_non_exhaustive()
    }
}

/// Why a header block could not be decoded. Each is a COMPRESSION_ERROR in HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The block ends inside a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer does not fit the bound we accept.
    #[error("integer too large")]
    Integer,
    /// Index 0, or past the end of the static and dynamic tables.
    #[error("invalid table index {0}")]
    Index(usize),
    /// A bad Huffman string.
    #[error(transparent)]
    Huffman(#[from] HuffmanError),
    /// A dynamic table size update larger than the advertised setting, or after a field.
    #[error("invalid dynamic table size update")]
    SizeUpdate,
    /// The decoded list is larger than the caller will hold.
    #[error("header list larger than {0} bytes")]
    TooLarge(usize),
}

/// The decoder side of one HPACK context (one connection direction).
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Newest first: dynamic index 62 is `entries[0]`.
    entries: VecDeque<(Bytes, Bytes)>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as the receiver advertised it: the ceiling of size updates.
    settings_max: usize,
}

// === impl Decoder ===

impl Decoder {
    pub(crate) fn new(settings_max: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: settings_max,
            settings_max,
        }
    }

    /// Decodes one complete header block. `max_list` bounds the decoded size (names, values
    /// and 32 bytes a field), which bounds memory whatever the indexing does.
    pub(crate) fn decode(
        &mut self,
        mut block: &[u8],
        max_list: usize,
    ) -> Result<Vec<Field>, DecodeError> {
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        // Size updates are allowed only before the first field (§4.2); h2 enforces the same.
        let mut can_resize = true;
        while let Some(&first) = block.first() {
            let field = if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (name, value) = self.get(index)?;
                Field {
                    name,
                    value,
                    never_indexed: false,
                }
            } else if first & 0xc0 == 0x40 {
                let field = self.literal(&mut block, 6, false)?;
                self.insert(field.name.clone(), field.value.clone());
                field
            } else if first & 0xe0 == 0x20 {
                if !can_resize {
                    return Err(DecodeError::SizeUpdate);
                }
                let size = integer(&mut block, 5)?;
                if size > self.settings_max {
                    return Err(DecodeError::SizeUpdate);
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            } else {
                // 0000xxxx without indexing, 0001xxxx never indexed: both 4-bit prefixes.
                self.literal(&mut block, 4, first & 0x10 != 0)?
            };
            can_resize = false;
            list_size =
                list_size.saturating_add(field.name.len() + field.value.len() + ENTRY_OVERHEAD);
            if list_size > max_list {
                return Err(DecodeError::TooLarge(max_list));
            }
            fields.push(field);
        }
        Ok(fields)
    }

    fn get(&self, index: usize) -> Result<(Bytes, Bytes), DecodeError> {
        match index {
            0 => Err(DecodeError::Index(0)),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((
                    Bytes::from_static(name.as_bytes()),
                    Bytes::from_static(value.as_bytes()),
                ))
            }
            _ => self
                .entries
                .get(index - 62)
                .cloned()
                .ok_or(DecodeError::Index(index)),
        }
    }

    fn literal(
        &self,
        block: &mut &[u8],
        prefix: u8,
        never_indexed: bool,
    ) -> Result<Field, DecodeError> {
        let index = integer(block, prefix)?;
        let name = if index == 0 {
            string(block)?
        } else {
            self.get(index)?.0
        };
        let value = string(block)?;
        Ok(Field {
            name,
            value,
            never_indexed,
        })
    }

    fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // §4.4: an entry larger than the table empties it and is not added.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.entries.push_front((name, value));
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some((name, value)) = self.entries.pop_back() else {
                self.size = 0;
                break;
            };
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }
}

/// Reads an integer with an `prefix`-bit prefix (§5.1). Values past 2^28 are refused: no
/// index, length or table size we accept comes near that, and it keeps the shift in range.
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, DecodeError> {
    let (&first, rest) = block.split_first().ok_or(DecodeError::Truncated)?;
    *block = rest;
    let mask = (1usize << prefix) - 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let (&byte, rest) = block.split_first().ok_or(DecodeError::Truncated)?;
        *block = rest;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(DecodeError::Integer);
        }
    }
}

/// Reads a string literal (§5.2), Huffman-decoding it when its H bit is set.
fn string(block: &mut &[u8]) -> Result<Bytes, DecodeError> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(DecodeError::Truncated);
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        let mut out = Vec::with_capacity(len + len / 2);
        huffman::decode(raw, &mut out)?;
        Ok(Bytes::from(out))
    } else {
        Ok(Bytes::copy_from_slice(raw))
    }
}

/// Encodes `fields` with static-table references and literals only, none of which adds to
/// the receiver's dynamic table, and no Huffman (h2 decodes plain literals as they are).
pub(crate) fn encode(fields: &[Field], dst: &mut BytesMut) {
    for field in fields {
        let mut name_index = 0;
        let mut exact = None;
        for (i, (name, value)) in STATIC.iter().enumerate() {
            if name.as_bytes() == field.name {
                if name_index == 0 {
                    name_index = i + 1;
                }
                if value.as_bytes() == field.value {
                    exact = Some(i + 1);
                    break;
                }
            }
        }
        match exact {
            // A sensitive field must stay a literal (§7.1.3), even when the static table has it.
            Some(index) if !field.never_indexed => put_integer(dst, index, 7, 0x80),
            _ => {
                let flags = if field.never_indexed { 0x10 } else { 0x00 };
                put_integer(dst, name_index, 4, flags);
                if name_index == 0 {
                    put_string(dst, &field.name);
                }
                put_string(dst, &field.value);
            }
        }
    }
}

/// A header block of `(name, value)` fields, encoded as [`encode`] does: static-table
/// references and plain literals only. Public for clients that write HTTP/2 frames by hand
/// (the suite's bad-input tests), so they encode headers exactly as the adapter does.
pub fn header_block(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let fields: Vec<Field> = fields
        .iter()
        .map(|(name, value)| Field {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value),
            never_indexed: false,
        })
        .collect();
    let mut dst = BytesMut::new();
    encode(&fields, &mut dst);
    dst.to_vec()
}

fn put_integer(dst: &mut BytesMut, value: usize, prefix: u8, flags: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        // `value < mask <= 127`: the cast keeps every bit.
        dst.put_u8(flags | value.to_le_bytes()[0]);
        return;
    }
    dst.put_u8(flags | mask.to_le_bytes()[0]);
    let mut rest = value - mask;
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f).to_le_bytes()[0]);
        rest >>= 7;
    }
    dst.put_u8(rest.to_le_bytes()[0]);
}

fn put_string(dst: &mut BytesMut, s: &[u8]) {
    put_integer(dst, s.len(), 7, 0x00);
    dst.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8(f.name.to_vec()).unwrap(),
                    String::from_utf8(f.value.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn strs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn decodes_rfc_7541_c3_and_c4_request_sequences() {
        // C.3 (no Huffman) and C.4 (Huffman): three requests on one connection, each using
        // the dynamic table entries the previous ones added.
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::new(4096);
            let first = d.decode(&hex(blocks[0]), 65536).unwrap();
            assert_eq!(
                pairs(&first),
                strs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com")
                ])
            );
            let second = d.decode(&hex(blocks[1]), 65536).unwrap();
            assert_eq!(
                pairs(&second)[3],
                strs(&[(":authority", "www.example.com")])[0]
            );
            assert_eq!(pairs(&second)[4], strs(&[("cache-control", "no-cache")])[0]);
            let third = d.decode(&hex(blocks[2]), 65536).unwrap();
            assert_eq!(
                pairs(&third),
                strs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value")
                ])
            );
            assert_eq!(d.size, 164, "table size after C.3.3 / C.4.3");
        }
    }

    #[test]
    fn size_updates_evict_and_are_refused_late_or_too_large() {
        let mut d = Decoder::new(4096);
        d.decode(&hex("4001 6101 62"), 1000).unwrap(); // a: b, indexed
        assert_eq!(d.entries.len(), 1);
        d.decode(&hex("20"), 1000).unwrap(); // size 0 empties the table
        assert!(d.entries.is_empty());
        assert_eq!(d.decode(&hex("be"), 1000), Err(DecodeError::Index(62)));
        assert_eq!(
            d.decode(&hex("3fe2 1f"), 1000),
            Err(DecodeError::SizeUpdate)
        ); // 4097
        assert_eq!(d.decode(&hex("82 20"), 1000), Err(DecodeError::SizeUpdate)); // after a field
        assert_eq!(d.decode(&hex("80"), 1000), Err(DecodeError::Index(0)));
        assert_eq!(d.decode(&hex("4001"), 1000), Err(DecodeError::Truncated));
        assert_eq!(
            d.decode(&hex("ffff ffff ff"), 1000),
            Err(DecodeError::Integer)
        );
    }

    #[test]
    fn the_list_bound_holds_whatever_the_indexing() {
        // One 3,000-byte value indexed once, then referenced over and over: 1 byte each.
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xb9, 0x16]; // len 127 + 2873 = 3000
        block.extend(std::iter::repeat_n(b'v', 3000));
        block.extend(std::iter::repeat_n(0xbe, 100));
        let mut d = Decoder::new(4096);
        assert_eq!(d.decode(&block, 65536), Err(DecodeError::TooLarge(65536)));
    }

    #[test]
    fn encoding_round_trips_and_never_indexes() {
        let fields = vec![
            Field {
                name: Bytes::from_static(b":method"),
                value: Bytes::from_static(b"POST"),
                never_indexed: false,
            },
            Field {
                name: Bytes::from_static(b":authority"),
                value: Bytes::from_static(b"localhost"),
                never_indexed: false,
            },
            Field {
                name: Bytes::from_static(b"authorization"),
                value: Bytes::from(vec![b'a'; 300]),
                never_indexed: true,
            },
            Field {
                name: Bytes::from_static(b"x-custom"),
                value: Bytes::from_static(b""),
                never_indexed: false,
            },
        ];
        let mut out = BytesMut::new();
        encode(&fields, &mut out);
        assert_eq!(out[0], 0x83, ":method POST is static index 3");
        let mut d = Decoder::new(4096);
        assert_eq!(d.decode(&out, 65536).unwrap(), fields);
        assert!(
            d.entries.is_empty(),
            "nothing was added to the receiver's table"
        );
    }
}
