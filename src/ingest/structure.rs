//! Counting a body's values before it is parsed, 64 bytes at a time.
//!
//! [`crate::ingest::decode::parsed_footprint`] reserves memory for a body before it is parsed, from
//! the number of values the body opens: every `{`, `[`, `:`, `,` and line break outside its
//! strings. That count reads every byte of every body, so it is done on 64-byte blocks: a bit mask
//! per block for quotes, backslashes and those bytes (SSE2 on x86_64), strings found from the
//! quotes by a prefix XOR, and the bytes outside them counted with `count_ones`. A block holding a
//! backslash, or starting right after an escaping one, is read byte by byte instead, as every
//! block was before: escapes need no tricks, and a body full of them is read no slower than that.

/// Bytes among `{`, `[`, `:`, `,` and `\n` in `json` that are outside its strings.
pub(crate) fn values_opened(json: &[u8]) -> usize {
    let mut strings = Strings::default();
    let mut count = 0;
    let (blocks, rest) = json.as_chunks::<BLOCK>();
    for block in blocks {
        let masks = Masks::of(block);
        if masks.backslashes != 0 || strings.escaped {
            count += strings.bytewise(block);
            continue;
        }
        // A bit is set from each quote that opens a string up to the byte before the quote that
        // closes it: the prefix XOR of the quotes, flipped when the block starts inside a string.
        let carried = if strings.inside { u64::MAX } else { 0 };
        let inside = prefix_xor(masks.quotes) ^ carried;
        count += (masks.opening & !inside).count_ones() as usize;
        strings.inside = inside >> (BLOCK - 1) == 1;
    }
    count + strings.bytewise(rest)
}

/// The bytes of `json` outside its strings (a string's opening quote included), in order.
pub(crate) fn outside_strings(json: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut strings = Strings::default();
    json.iter().copied().filter(move |&byte| strings.outside(byte))
}

const BLOCK: usize = 64;

/// Where the reading stands between blocks.
#[derive(Default)]
struct Strings {
    inside: bool,
    /// Inside a string, the next byte is escaped.
    escaped: bool,
}

impl Strings {
    /// Reads one byte: whether it is outside the strings (a string's opening quote is).
    fn outside(&mut self, byte: u8) -> bool {
        if self.inside {
            match byte {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.inside = false,
                _ => {}
            }
            return false;
        }
        self.inside = byte == b'"';
        true
    }

    /// Counts the bytes of `bytes` that open a value, reading one byte at a time.
    fn bytewise(&mut self, bytes: &[u8]) -> usize {
        bytes.iter().filter(|&&byte| self.outside(byte) && opens_value(byte)).count()
    }
}

fn opens_value(byte: u8) -> bool {
    matches!(byte, b'{' | b'[' | b':' | b',' | b'\n')
}

/// Bit `i` is the XOR of bits `0..=i` of `x`.
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

/// One bit per byte of a block: bit `i` stands for byte `i`.
struct Masks {
    quotes: u64,
    backslashes: u64,
    opening: u64,
}

impl Masks {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    fn of(block: &[u8; BLOCK]) -> Masks {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let mut masks = Masks { quotes: 0, backslashes: 0, opening: 0 };
        for (lane, bytes) in block.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is enabled for this build (the cfg above), and the unaligned load
            // reads the 16 bytes of `bytes`, a chunk of `block`.
            let (quotes, backslashes, opening) = unsafe {
                let v = _mm_loadu_si128(bytes.as_ptr().cast::<__m128i>());
                let eq = |byte: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8));
                let opening = _mm_or_si128(
                    _mm_or_si128(_mm_or_si128(eq(b'{'), eq(b'[')), _mm_or_si128(eq(b':'), eq(b','))),
                    eq(b'\n'),
                );
                (_mm_movemask_epi8(eq(b'"')), _mm_movemask_epi8(eq(b'\\')), _mm_movemask_epi8(opening))
            };
            let at = |bits: i32| u64::from(bits as u16) << (lane * 16);
            masks.quotes |= at(quotes);
            masks.backslashes |= at(backslashes);
            masks.opening |= at(opening);
        }
        masks
    }

    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    fn of(block: &[u8; BLOCK]) -> Masks {
        let mut masks = Masks { quotes: 0, backslashes: 0, opening: 0 };
        for (i, &byte) in block.iter().enumerate() {
            masks.quotes |= u64::from(byte == b'"') << i;
            masks.backslashes |= u64::from(byte == b'\\') << i;
            masks.opening |= u64::from(opens_value(byte)) << i;
        }
        masks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytewise(json: &[u8]) -> usize {
        Strings::default().bytewise(json)
    }

    #[test]
    fn counts_what_opens_a_value_outside_strings_only() {
        let record = br#"{"a":[1,2],"b":"x,y:{z}[","c":"q\"{,","d":"\\","e":{"f":"\\\""}}"#;
        // Outside strings: { : [ , , : , : , : , : { : (the last `}`s close).
        assert_eq!(values_opened(record), 14);
        // The same record, then blocks without a backslash: spaces, then `{ : , : [` and 40 `,`.
        let mut padded = record.to_vec();
        padded.extend(b" ".repeat(64 - record.len() % 64));
        padded.extend(br#"{"g":"x,y:{z}[","h":["#);
        padded.extend(b"1,".repeat(40));
        assert_eq!(padded.len() / 64, 3);
        assert_eq!(values_opened(&padded), 14 + 5 + 40);
        assert_eq!(values_opened(b""), 0);
        assert_eq!(values_opened(b"\n\n"), 2);
    }

    /// The block path against the byte-by-byte reading on random text of JSON's tricky bytes, of
    /// random lengths and of lengths just past whole blocks, with strings and escapes across
    /// block boundaries.
    #[test]
    fn blocks_count_as_reading_byte_by_byte_does() {
        let alphabet = b"\"\"\"\\{}[]:,\n a1";
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..4_000 {
            let len = match case % 4 {
                0 => (next() % 200) as usize,
                1 => 64 * (1 + (next() % 4) as usize) + (next() % 3) as usize,
                _ => (next() % 700) as usize,
            };
            // Some texts have no backslash, so that whole blocks take the mask path.
            let without_escapes = case % 3 == 0;
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .map(|b| if without_escapes && b == b'\\' { b'a' } else { b })
                .collect();
            assert_eq!(values_opened(&text), bytewise(&text), "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn a_string_open_across_blocks_hides_what_it_holds() {
        let mut text = b"{\"k\":\"".to_vec();
        text.extend(std::iter::repeat_n(b',', 200));
        text.extend(b"\",\"m\":1}\n");
        // `{`, `:`, then after the string `,`, `:` and the line break.
        assert_eq!(values_opened(&text), 5);
        let mut escaped = b"{\"k\":\"".to_vec();
        escaped.extend(std::iter::repeat_n(b'x', 57));
        escaped.extend(b"\\\"[[[[\",\"m\":\"");
        // The second block holds no backslash, but starts with the escaped quote.
        escaped.extend(b"y".repeat(64));
        escaped.extend(b"\"}");
        assert_eq!(escaped[63], b'\\', "the escape ends the first block");
        assert!(!escaped[64..128].contains(&b'\\'));
        // `{` and `:`, then after the string `,` and `:`.
        assert_eq!(values_opened(&escaped), 4);
    }
}
