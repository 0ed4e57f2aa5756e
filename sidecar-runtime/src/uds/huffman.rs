//! HPACK's static Huffman code (RFC 7541 §5.2, Appendix B), decode side only: the adapter
//! never Huffman-encodes (it writes literals h2 reads as they are).
//!
//! Appendix B's code is canonical: within one length, codes rise with the symbol value, and
//! each length starts where the previous one ended, shifted. So the table is fully described
//! by the code length of each of the 257 symbols (256 octets and EOS); the codes themselves
//! are rebuilt at compile time, and a test checks them against the RFC's own examples.

/// Code length in bits of each symbol, RFC 7541 Appendix B; index 256 is EOS.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const MAX_LEN: usize = 30;
const EOS: u16 = 256;

/// The canonical decoding tables: for each length, the first code, how many codes have that
/// length, and where their symbols start in `SYMBOLS` (sorted by length, then value).
struct Canonical {
    first: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
}

const TABLE: Canonical = build();

const fn build() -> Canonical {
    let mut count = [0u16; MAX_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut first = [0u32; MAX_LEN + 1];
    let mut offset = [0u16; MAX_LEN + 1];
    let mut len = 1;
    while len <= MAX_LEN {
        first[len] = (first[len - 1] + count[len - 1] as u32) << 1;
        offset[len] = offset[len - 1] + count[len - 1];
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut next = offset;
    let mut s = 0;
    while s < 257 {
        let l = CODE_LENGTHS[s] as usize;
        symbols[next[l] as usize] = s as u16;
        next[l] += 1;
        s += 1;
    }
    Canonical {
        first,
        count,
        offset,
        symbols,
    }
}

/// Why a Huffman string was refused (RFC 7541 §5.2): each is a COMPRESSION_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HuffmanError {
    /// The EOS symbol appears inside the string.
    #[error("EOS symbol inside a Huffman string")]
    Eos,
    /// More than 7 bits of padding, or padding that is not a prefix of EOS (all ones).
    #[error("invalid Huffman padding")]
    Padding,
}

/// Decodes `src`, appending the octets to `dst`. The shortest code is 5 bits, so the output
/// is at most 8/5 of the input: callers bound it by bounding the input.
pub(crate) fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let mut code: u32 = 0;
    let mut len: usize = 0;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            // Codes of this length are first[len] .. first[len] + count[len]; a smaller
            // value is a prefix of a longer code, so keep reading.
            let index = code.wrapping_sub(TABLE.first[len]);
            if code >= TABLE.first[len] && index < u32::from(TABLE.count[len]) {
                let slot = usize::from(TABLE.offset[len]) + index as usize;
                let symbol = TABLE.symbols[slot];
                if symbol == EOS {
                    return Err(HuffmanError::Eos);
                }
                // Every symbol other than EOS is an octet.
                dst.push(symbol.to_le_bytes()[0]);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Every 30-bit value is a code (EOS and the 28–30-bit codes fill the space),
                // so this is unreachable for Appendix B; refuse rather than overflow.
                return Err(HuffmanError::Padding);
            }
        }
    }
    // What is left must be at most 7 bits, all ones (the most significant bits of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn dec(s: &str) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(&hex(s), &mut out).map(|()| out)
    }

    #[test]
    fn decodes_the_rfc_7541_appendix_c_examples() {
        // C.4.1 – C.4.3 and C.6.1 of RFC 7541.
        for (encoded, plain) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
        ] {
            assert_eq!(dec(encoded).unwrap(), plain.as_bytes(), "{plain}");
        }
    }

    #[test]
    fn the_table_is_a_complete_prefix_code() {
        // Kraft equality: a complete canonical code sums to exactly 1.
        let sum: u64 = CODE_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1u64 << 30);
        assert_eq!(TABLE.first[5], 0);
        assert_eq!(
            TABLE.first[30], 0x3fff_fffc,
            "the three 30-bit codes end with EOS"
        );
    }

    #[test]
    fn refuses_eos_and_bad_padding() {
        // EOS is thirty ones: four 0xff bytes hold it (plus two bits of padding).
        assert_eq!(dec("ffffffff"), Err(HuffmanError::Eos));
        // '0' is 00000: padding with zeros instead of ones.
        assert_eq!(dec("00"), Err(HuffmanError::Padding));
        // A whole byte of ones after a symbol is 8 bits of padding.
        assert_eq!(dec("07ff"), Err(HuffmanError::Padding));
        assert_eq!(dec(""), Ok(Vec::new()));
    }
}
