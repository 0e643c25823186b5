//! Counting a body's values before it is parsed, 64 bytes at a time.
//!
//! [`crate::ingest::decode::parsed_footprint`] reserves memory for a body before it is parsed, from
//! the number of values the body opens: every `{`, `[`, `:`, `,` and line break outside its
//! strings. That count reads every byte of every body, so it is done on 64-byte blocks: a bit mask
//! per block for quotes, backslashes and those bytes (SSE2 on x86_64), strings found from the
//! quotes by a prefix XOR, and the bytes outside them counted with `count_ones`. A block holding a
//! backslash, or starting right after one, is read byte by byte instead, so escapes need no
//! tricks: partners' JSON rarely holds any.

/// Bytes among `{`, `[`, `:`, `,` and `\n` in `json` that are outside its strings.
pub(crate) fn values_opened(json: &[u8]) -> usize {
    let mut strings = Strings::default();
    let mut count = 0;
    let mut blocks = json.chunks_exact(BLOCK);
    for block in &mut blocks {
        let block: &[u8; BLOCK] = block.try_into().expect("chunks_exact gives whole blocks");
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
    count + strings.bytewise(blocks.remainder())
}

const BLOCK: usize = 64;

/// Where the reading stands between blocks.
#[derive(Default)]
struct Strings {
    inside: bool,
    /// The last byte read was a backslash inside a string.
    escaped: bool,
}

impl Strings {
    /// Counts the opening bytes of `bytes` one at a time, following strings and escapes.
    fn bytewise(&mut self, bytes: &[u8]) -> usize {
        let mut count = 0;
        for &byte in bytes {
            if self.inside {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.inside = false,
                    _ => {}
                }
            } else if byte == b'"' {
                self.inside = true;
            } else if opens_value(byte) {
                count += 1;
            }
        }
        count
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
    #[cfg(target_arch = "x86_64")]
    fn of(block: &[u8; BLOCK]) -> Masks {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let mut masks = Masks { quotes: 0, backslashes: 0, opening: 0 };
        for (lane, bytes) in block.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is part of every x86_64 target, and the load reads the 16 bytes of
            // `bytes`, a chunk of `block`.
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

    #[cfg(not(target_arch = "x86_64"))]
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
        assert_eq!(values_opened(record), bytewise(record));
        assert_eq!(values_opened(b""), 0);
        assert_eq!(values_opened(b"\n\n"), 2);
    }

    /// The block path against the byte-by-byte reading on random text of JSON's tricky bytes, at
    /// every length around the block size and with strings and escapes across block boundaries.
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
        escaped.extend(b"\\\"[[[[\",\"m\":1}");
        assert_eq!(escaped[63], b'\\', "the escape ends the first block");
        assert_eq!(values_opened(&escaped), 4);
    }
}
