//! A scanner for the common shape of a partner record: one JSON object of scalar members whose
//! strings have no escapes. It reads the text once, borrows every key and value from it and
//! builds nothing; anything else (nesting, an escape, a number with an exponent, text that is
//! not JSON) ends the scan with `None`, and the record is then parsed in full. It never accepts
//! text that a JSON parser refuses.

use super::coerce::ValueRef;

/// Calls `member(key, value)` for each member of the object in `text`, in order, and returns
/// `Some(())` when the whole text was such an object; `None` as soon as it is not, or when
/// `member` answers `None`.
pub fn scan<'t>(text: &'t str, mut member: impl FnMut(&'t str, ValueRef<'t>) -> Option<()>) -> Option<()> {
    let mut scanner = Scanner { text, at: 0 };
    scanner.skip_space();
    scanner.eat(b'{')?;
    scanner.skip_space();
    if scanner.eat(b'}').is_none() {
        loop {
            scanner.skip_space();
            let key = scanner.string()?;
            scanner.skip_space();
            scanner.eat(b':')?;
            scanner.skip_space();
            let value = scanner.value()?;
            member(key, value)?;
            scanner.skip_space();
            match scanner.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    scanner.skip_space();
    (scanner.at == scanner.text.len()).then_some(())
}

struct Scanner<'t> {
    text: &'t str,
    at: usize,
}

impl<'t> Scanner<'t> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn eat(&mut self, expected: u8) -> Option<()> {
        (self.peek()? == expected).then(|| self.at += 1)
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string without escapes, its text borrowed. The quotes are ASCII, so the slice between
    /// them lies on character boundaries.
    fn string(&mut self) -> Option<&'t str> {
        self.eat(b'"')?;
        let start = self.at;
        // Eight bytes at a time up to the first word holding a byte that needs a look; the loop
        // below reads from there byte by byte.
        let bytes = self.text.as_bytes();
        while let Some(word) = bytes.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if needs_look(word) {
                break;
            }
            self.at += 8;
        }
        loop {
            match self.next()? {
                b'"' => return self.text.get(start..self.at - 1),
                // An escape needs decoding; a control character is not allowed in a JSON string.
                b'\\' | 0..=0x1f => return None,
                _ => {}
            }
        }
    }

    fn value(&mut self) -> Option<ValueRef<'t>> {
        match self.peek()? {
            b'"' => self.string().map(ValueRef::String),
            b'n' => self.word(b"null", ValueRef::Null),
            b't' => self.word(b"true", ValueRef::Bool(true)),
            b'f' => self.word(b"false", ValueRef::Bool(false)),
            b'-' | b'0'..=b'9' => self.number().map(ValueRef::Number),
            _ => None,
        }
    }

    fn word(&mut self, word: &[u8], value: ValueRef<'t>) -> Option<ValueRef<'t>> {
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word).then(|| {
            self.at = end;
            value
        })
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, its text as sent. A number with an exponent is left to the
    /// parser, which does not keep its text as sent (`1E5` becomes `1e+5`).
    fn number(&mut self) -> Option<&'t str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            let first = self.at;
            self.digits();
            if self.at == first {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E' | b'0'..=b'9')) {
            return None;
        }
        self.text.get(start..self.at)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }
}

/// True when one of the eight bytes of `word` ends a string or cannot stand in one as it is: a
/// quote, a backslash or a control character (below 0x20). A byte `b` is below `n` (at most
/// 0x80) exactly when `b - n` borrows into its top bit while `b`'s own top bit is clear; a borrow
/// from a lower byte happens only when that byte was below `n` itself, so the answer for the
/// word is exact.
fn needs_look(word: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const TOPS: u64 = ONES << 7;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & TOPS != 0;
    below(word, 0x20) || below(word ^ (ONES * u64::from(b'"')), 1) || below(word ^ (ONES * u64::from(b'\\')), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        scan(text, |key, value| {
            out.push((key.to_string(), format!("{value:?}")));
            Some(())
        })?;
        Some(out)
    }

    #[test]
    fn flat_objects_are_read_as_sent() {
        let got = members(" {\"a\": \"x y\", \"b\":-0.50 ,\"c\":true,\"d\":false,\"e\":null,\"f\":0}\r\n").unwrap();
        let values: Vec<&str> = got.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            values,
            ["String(\"x y\")", "Number(\"-0.50\")", "Bool(true)", "Bool(false)", "Null", "Number(\"0\")"]
        );
        assert_eq!(members("{}"), Some(vec![]));
        assert_eq!(members("{\"é\":\"ü\"}").unwrap()[0].0, "é");
    }

    #[test]
    fn anything_else_is_left_to_the_parser() {
        for text in [
            "",
            "[]",
            "{",
            "{\"a\":1",
            "{\"a\":1,}",
            "{,}",
            "{\"a\" 1}",
            "{\"a\":1}x",
            "{\"a\":1}{}",
            "{'a':1}",
            "{\"a\":01}",
            "{\"a\":-}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e3}",
            "{\"a\":1E3}",
            "{\"a\":+1}",
            "{\"a\":1.5.2}",
            "{\"a\":nul}",
            "{\"a\":nulls}",
            "{\"a\":True}",
            "{\"a\":[1]}",
            "{\"a\":{}}",
            "{\"a\\\"\":1}",
            "{\"a\":\"b\\n\"}",
            "{\"a\":\"b\tc\"}",
            "{\"a\":\"b}",
            "{\"a\":1 2}",
            "{a:1}",
            "{\"a\":\u{0c}1}",
            "{\"a\":NaN}",
            "{\"a\":-Infinity}",
        ] {
            assert_eq!(members(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_word_needs_a_look_exactly_when_one_of_its_bytes_does() {
        let special = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
        // Every byte value at every position, among neighbours of each kind (a borrow between
        // bytes must not make or hide a hit).
        for fill in [b'a', 0xff, 0x80, b' ', 0x1f, b'"'] {
            for at in 0..8 {
                for b in 0..=255u8 {
                    let mut bytes = [fill; 8];
                    bytes[at] = b;
                    let expected = bytes.iter().any(|&x| special(x));
                    assert_eq!(needs_look(u64::from_le_bytes(bytes)), expected, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn long_strings_are_read_to_their_quote_and_no_further() {
        for len in 0..40 {
            let body: String = "abcdéfgh".chars().cycle().take(len).collect();
            let text = format!("{{\"{body}\":\"{body}\",\"k\":1}}");
            let got = members(&text).unwrap();
            assert_eq!(got[0], (body.clone(), format!("String({body:?})")));
            for bad in ["\\n", "\u{1}", "\t"] {
                let text = format!("{{\"k\":\"{body}{bad}{body}\"}}");
                assert_eq!(members(&text), None, "{text:?}");
            }
        }
    }

    #[test]
    fn a_member_can_end_the_scan() {
        assert_eq!(scan("{\"a\":1,\"b\":2}", |key, _| (key == "a").then_some(())), None);
    }

    /// Whatever the scanner accepts, serde_json parses into an object of the same members.
    #[test]
    fn what_is_accepted_is_json_with_the_same_members() {
        let pieces = [
            "{", "}", "\"a\"", "\"b c\"", ":", ",", " ", "\t", "\n", "1", "0", "-", ".", "5", "e", "\"x\"", "null",
            "true", "fals", "e", "\\", "\"", "[", "]", "\u{1}", "é",
        ];
        let mut state = 12345u64;
        let (mut accepted, mut tried) = (0, 0);
        for _ in 0..200_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut bits = state;
            let around = [" ", "\t", "\r\n", "", "", "x"];
            let mut text = String::from(around[(bits % 6) as usize]);
            bits /= 6;
            text.push_str("{\"k\":");
            for _ in 0..(bits % 9) {
                bits /= 9;
                text.push_str(pieces[(bits % pieces.len() as u64) as usize]);
                bits /= pieces.len() as u64;
            }
            text.push('}');
            text.push_str(around[(bits % 6) as usize]);
            tried += 1;
            let Some(got) = members(&text) else { continue };
            accepted += 1;
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let object = value.as_object().unwrap_or_else(|| panic!("{text:?}"));
            let keys: std::collections::BTreeSet<&String> = got.iter().map(|(key, _)| key).collect();
            if keys.len() < got.len() {
                // A repeated key: the parser keeps one of them; the validator refuses the record.
                continue;
            }
            assert_eq!(object.len(), got.len(), "{text:?}");
            for ((key, value), (got_key, got_value)) in object.iter().zip(&got) {
                assert_eq!(key, got_key, "{text:?}");
                assert_eq!(&format!("{:?}", ValueRef::from(value)), got_value, "{text:?}");
            }
        }
        assert!(accepted > 1_000 && accepted < tried, "accepted {accepted} of {tried}");
    }
}
