//! Request bodies to records: content encoding, JSON array / envelope / NDJSON, size limits.

use std::io::Read;
use std::ops::Range;

use bytes::Bytes;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::reject::{FieldError, RejectCode};
use super::structure;

/// Limits applied while decoding one request.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_decompressed_bytes: usize,
    pub max_record_bytes: usize,
    pub max_records: usize,
    /// Nesting of semi-structured values; a record is one level more.
    pub max_depth: usize,
}

/// How the records are laid out in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// A JSON array of records, or `{"records": [...]}`.
    Json,
    /// One JSON document per line.
    Ndjson,
}

/// Why a whole body could not be read; per-record problems are rejects instead.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported content encoding {0:?}; use gzip, zstd or identity")]
    UnsupportedEncoding(String),
    #[error("unsupported content type {0:?}; use application/json or application/x-ndjson")]
    UnsupportedMediaType(String),
    #[error("body is larger than {0} bytes once decompressed")]
    TooLarge(usize),
    #[error("batch holds more than {0} records")]
    TooManyRecords(usize),
    #[error("body is not valid {encoding}: {message}")]
    Corrupt { encoding: &'static str, message: String },
    #[error("body is not valid JSON at byte {offset}: {message}")]
    Syntax { offset: usize, message: String },
    #[error("expected a JSON array of records or an object with a \"records\" array")]
    Shape,
    #[error("batch holds no records")]
    Empty,
    #[error("the gateway is over its memory budget")]
    OverBudget,
    #[error("parsing this body would take about {needed} bytes, more than limits.memory_budget_bytes ({budget}); send it in smaller batches")]
    TooLargeToParse { needed: usize, budget: usize },
}

/// Heap bytes one JSON value takes once parsed, beyond its text: the value itself, its map entry
/// and index slot, allocator headers.
pub const PARSED_BYTES_PER_VALUE: usize = 120;
/// Copies of the text that parsed records hold (each record's text, then its strings).
pub const PARSED_TEXT_COPIES: usize = 3;

/// Heap bytes the records of `text` will take once parsed, estimated before parsing from its
/// structure in one pass: [`PARSED_TEXT_COPIES`] of the text, and [`PARSED_BYTES_PER_VALUE`]
/// per value (every `{`, `[`, `:`, `,` and line break outside strings opens one). Measured for
/// this parser in `tests/footprint.rs`: real records, long strings, wide rows, nested arrays.
pub fn parsed_footprint(text: &[u8]) -> usize {
    let values = 1 + structure::values_opened(text);
    text.len().saturating_mul(PARSED_TEXT_COPIES).saturating_add(values.saturating_mul(PARSED_BYTES_PER_VALUE))
}

/// A record as decoded: a JSON value, a reject found before validation, or a record taken as it
/// was read (see [`parse_records_with`]). Boxed, so that a request's list of them stays small
/// (24 bytes a record) when most records are taken as they were read.
#[derive(Debug)]
pub enum Decoded {
    Value(Box<Value>),
    Rejected {
        record: Box<Value>,
        error: Box<FieldError>,
    },
    /// A record taken as it was read: its cells are with whoever took it. `span` is its text in
    /// the body, to read it again if the schema changes before the rows are kept.
    Row {
        span: Range<usize>,
    },
}

impl Decoded {
    pub fn value(value: Value) -> Self {
        Decoded::Value(Box::new(value))
    }
}

/// What the decoder offers each record's text to before parsing it (see [`parse_records_with`]).
pub trait Accept {
    /// Told once, before the first record is offered, how many records the body holds at most:
    /// a JSON array's length, or an NDJSON body's lines, but no more than half its bytes (a
    /// record and its newline take two at least) and `max_records`.
    fn expect(&mut self, _records: usize) {}

    /// Takes the record at `index` (its position among the body's records) straight from its
    /// text when it passes as it is (see [`crate::ingest::validate::Validator::accept_text_into`]);
    /// `false` has it parsed into a [`Value`].
    fn accept(&mut self, index: usize, text: &str) -> bool;
}

/// Takes no record as it was read: every record is parsed.
struct ParseAll;

impl Accept for ParseAll {
    fn accept(&mut self, _: usize, _: &str) -> bool {
        false
    }
}

/// Picks the body format from a `Content-Type` header value.
pub fn body_format(content_type: Option<&str>) -> Result<BodyFormat, DecodeError> {
    let Some(raw) = content_type else {
        return Ok(BodyFormat::Json);
    };
    let essence = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "" | "application/json" | "text/json" => Ok(BodyFormat::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Ok(BodyFormat::Ndjson),
        _ if essence.ends_with("+json") => Ok(BodyFormat::Json),
        _ => Err(DecodeError::UnsupportedMediaType(raw.to_string())),
    }
}

/// Undoes `Content-Encoding`, refusing to inflate past `limit` bytes; an uncompressed body is
/// returned as it is, not copied. `admit(n)` is asked before the output may grow to `n` bytes
/// (the memory budget's say); a `false` stops with `OverBudget`.
pub fn decompress(
    body: Bytes,
    encoding: Option<&str>,
    limit: usize,
    admit: &mut dyn FnMut(usize) -> bool,
) -> Result<Bytes, DecodeError> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    let inflated = match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(DecodeError::TooLarge(limit));
            }
            return Ok(body);
        }
        Some("gzip") | Some("x-gzip") => {
            read_limited(flate2::read::MultiGzDecoder::new(&body[..]), limit, "gzip", admit)
        }
        Some("zstd") => {
            let decoder = zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| DecodeError::Corrupt { encoding: "zstd", message: e.to_string() })?;
            read_limited(decoder, limit, "zstd", admit)
        }
        Some(other) => Err(DecodeError::UnsupportedEncoding(other.to_string())),
    };
    inflated.map(Bytes::from)
}

/// Most bytes inflated between two questions to the budget; steps start at a sixteenth of it
/// and double with the output, so a small body never asks for much.
const INFLATE_STEP: usize = 1 << 20;

fn read_limited(
    mut reader: impl Read,
    limit: usize,
    encoding: &'static str,
    admit: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    loop {
        // The budget is asked before each step is inflated, never after.
        let step =
            out.len().clamp(INFLATE_STEP / 16, INFLATE_STEP).min(limit.saturating_add(1).saturating_sub(out.len()));
        if !admit(out.len() + step) {
            return Err(DecodeError::OverBudget);
        }
        out.reserve_exact(step);
        let read = (&mut reader)
            .take(step as u64)
            .read_to_end(&mut out)
            .map_err(|e| DecodeError::Corrupt { encoding, message: e.to_string() })?;
        if out.len() > limit {
            return Err(DecodeError::TooLarge(limit));
        }
        if read < step {
            return Ok(out);
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    records: Vec<&'a RawValue>,
}

/// Splits a decompressed body into records.
pub fn parse_records(body: &[u8], format: BodyFormat, limits: &DecodeLimits) -> Result<Vec<Decoded>, DecodeError> {
    parse_records_with(body, format, limits, &mut ParseAll)
}

/// [`parse_records`], offering each record's text to `accept` first (after the size limit):
/// the records it takes are [`Decoded::Row`]s, never parsed into a [`Value`].
pub fn parse_records_with(
    body: &[u8],
    format: BodyFormat,
    limits: &DecodeLimits,
    accept: &mut dyn Accept,
) -> Result<Vec<Decoded>, DecodeError> {
    let records = match format {
        BodyFormat::Json => parse_json(body, limits, accept)?,
        BodyFormat::Ndjson => parse_ndjson(body, limits, accept)?,
    };
    if records.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(records)
}

/// Parses the [`Decoded::Row`]s of `records` into values again (their text is in `body`), for a
/// schema other than the one they were accepted under.
pub fn reparse(body: &[u8], records: Vec<Decoded>, limits: &DecodeLimits) -> Vec<Decoded> {
    let parse = |span: Range<usize>| match body.get(span.clone()) {
        Some(text) => decode_line(text, 0, span, limits, &mut ParseAll),
        None => rejected(Value::Null, RejectCode::InvalidJson, "record text out of the body".into()),
    };
    records
        .into_iter()
        .map(|record| match record {
            Decoded::Row { span, .. } => parse(span),
            other => other,
        })
        .collect()
}

/// Where `text`, a slice of `body`, lies in it.
fn span_of(body: &[u8], text: &[u8]) -> Range<usize> {
    let start = (text.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    debug_assert!(start <= body.len() && start + text.len() <= body.len(), "text is not a part of the body");
    start..start + text.len()
}

fn parse_json(body: &[u8], limits: &DecodeLimits, accept: &mut dyn Accept) -> Result<Vec<Decoded>, DecodeError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let raws: Vec<&RawValue> = match first {
        Some(b'[') => serde_json::from_slice(body).map_err(|e| syntax_error(body, &e))?,
        Some(b'{') => {
            serde_json::from_slice::<Envelope>(body)
                .map_err(|e| match e.classify() {
                    serde_json::error::Category::Data => DecodeError::Shape,
                    _ => syntax_error(body, &e),
                })?
                .records
        }
        Some(_) => return Err(DecodeError::Shape),
        None => return Err(DecodeError::Empty),
    };
    if raws.len() > limits.max_records {
        return Err(DecodeError::TooManyRecords(limits.max_records));
    }
    accept.expect(raws.len());
    Ok(raws
        .into_iter()
        .enumerate()
        .map(|(index, raw)| decode_one(raw.get(), index, span_of(body, raw.get().as_bytes()), limits, accept))
        .collect())
}

fn parse_ndjson(body: &[u8], limits: &DecodeLimits, accept: &mut dyn Accept) -> Result<Vec<Decoded>, DecodeError> {
    // One record a line at most: sized once rather than grown (and copied) as lines are read. A
    // record takes two bytes at least with its newline, so blank lines cannot size it past that.
    let lines = memchr::memchr_iter(b'\n', body).count() + 1;
    let most = lines.min(body.len() / 2 + 1).min(limits.max_records);
    accept.expect(most);
    let mut out = Vec::with_capacity(most);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain([body.len()]) {
        let line = body[start..end].trim_ascii();
        start = end + 1;
        if line.is_empty() {
            continue;
        }
        if out.len() == limits.max_records {
            return Err(DecodeError::TooManyRecords(limits.max_records));
        }
        out.push(decode_line(line, out.len(), span_of(body, line), limits, accept));
    }
    Ok(out)
}

/// One record's bytes, which need not be UTF-8.
fn decode_line(
    line: &[u8],
    index: usize,
    span: Range<usize>,
    limits: &DecodeLimits,
    accept: &mut dyn Accept,
) -> Decoded {
    match std::str::from_utf8(line) {
        Ok(text) => decode_one(text, index, span, limits, accept),
        Err(e) => rejected(
            Value::String(truncate_lossy(line, limits.max_record_bytes)),
            RejectCode::InvalidJson,
            format!("line is not valid UTF-8 at byte {}", e.valid_up_to()),
        ),
    }
}

fn decode_one(text: &str, index: usize, span: Range<usize>, limits: &DecodeLimits, accept: &mut dyn Accept) -> Decoded {
    if text.len() > limits.max_record_bytes {
        return rejected(
            Value::String(truncate_lossy(text.as_bytes(), 1024)),
            RejectCode::RecordTooLarge,
            format!("record is {} bytes; the limit is {}", text.len(), limits.max_record_bytes),
        );
    }
    // Only flat records pass as they are: nothing to check for depth.
    if accept.accept(index, text) {
        return Decoded::Row { span };
    }
    // Checked on the bytes, before parsing: a deep record is too large, never "invalid JSON"
    // (the parser's own recursion limit), and never costs a deep parse.
    if nests_deeper_than(text.as_bytes(), limits.max_depth + 1) {
        return rejected(
            Value::String(truncate_lossy(text.as_bytes(), 1024)),
            RejectCode::RecordTooLarge,
            format!("record nests deeper than limits.max_depth = {} levels", limits.max_depth),
        );
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Decoded::value(value),
        Err(e) => rejected(
            Value::String(text.to_string()),
            RejectCode::InvalidJson,
            format!("invalid JSON at column {}: {}", e.column(), strip_position(&e)),
        ),
    }
}

/// True when arrays and objects in `json` nest more than `limit` levels (brackets inside strings
/// do not count). Malformed text is left for the parser to report.
fn nests_deeper_than(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    for byte in structure::outside_strings(json) {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn rejected(record: Value, code: RejectCode, message: String) -> Decoded {
    Decoded::Rejected {
        record: Box::new(record),
        error: Box::new(FieldError { path: String::new(), column: None, code, message }),
    }
}

/// serde_json reports line and column; partners get a byte offset into the decompressed body.
fn syntax_error(body: &[u8], error: &serde_json::Error) -> DecodeError {
    let mut offset = 0usize;
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if n + 1 == error.line() {
            offset += error.column().saturating_sub(1).min(line.len());
            break;
        }
        offset += line.len() + 1;
    }
    DecodeError::Syntax { offset: offset.min(body.len()), message: strip_position(error) }
}

fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn truncate_lossy(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    text.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits =
        DecodeLimits { max_decompressed_bytes: 1 << 20, max_record_bytes: 64, max_records: 10, max_depth: 3 };

    fn values(decoded: &[Decoded]) -> Vec<Option<&Value>> {
        decoded
            .iter()
            .map(|d| match d {
                Decoded::Value(v) => Some(&**v),
                Decoded::Rejected { .. } | Decoded::Row { .. } => None,
            })
            .collect()
    }

    /// A request keeps one of these a record: three words rather than a parsed record's size
    /// (about 160 bytes), so a 10,000-record request's list is 240 KB rather than 1.6 MB.
    #[test]
    fn a_decoded_record_is_three_words() {
        assert_eq!(std::mem::size_of::<Decoded>(), 3 * std::mem::size_of::<usize>());
    }

    #[test]
    fn reads_array_envelope_and_ndjson() {
        let array = parse_records(br#"[{"a":1},{"a":2}]"#, BodyFormat::Json, &LIMITS).unwrap();
        assert_eq!(values(&array).len(), 2);
        let envelope = parse_records(br#" {"records":[{"a":1}], "meta": 1}"#, BodyFormat::Json, &LIMITS).unwrap();
        assert_eq!(values(&envelope), vec![Some(&serde_json::json!({"a": 1}))]);
        let nd = parse_records(b"{\"a\":1}\n\n{oops\r\n{\"a\":3}\n", BodyFormat::Ndjson, &LIMITS).unwrap();
        assert_eq!(nd.len(), 3);
        match &nd[1] {
            Decoded::Rejected { error, record } => {
                assert_eq!(error.code, RejectCode::InvalidJson);
                assert_eq!(**record, Value::String("{oops".into()));
            }
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    #[test]
    fn deep_records_are_too_large_not_invalid() {
        let limits = DecodeLimits { max_record_bytes: 1 << 20, ..LIMITS };
        let ok = br#"{"a":{"b":[{"c":"[[[[["}]}}"#;
        assert_eq!(values(&parse_records(ok, BodyFormat::Ndjson, &limits).unwrap()).len(), 1);
        assert!(values(&parse_records(ok, BodyFormat::Ndjson, &limits).unwrap())[0].is_some(), "brackets in strings");
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let line = format!("{{\"a\":{deep}}}");
        let decoded = parse_records(line.as_bytes(), BodyFormat::Ndjson, &limits).unwrap();
        match &decoded[0] {
            Decoded::Rejected { error, .. } => assert_eq!(error.code, RejectCode::RecordTooLarge, "{}", error.message),
            other => panic!("expected a reject, got {other:?}"),
        }
        let shallow = br#"{"a":{"b":{"c":1}}}"#;
        assert!(values(&parse_records(shallow, BodyFormat::Ndjson, &limits).unwrap())[0].is_some());
        let deeper = br#"{"a":{"b":{"c":{"d":{"e":1}}}}}"#;
        assert!(values(&parse_records(deeper, BodyFormat::Ndjson, &limits).unwrap())[0].is_none());
    }

    #[test]
    fn broken_array_is_a_syntax_error_with_offset() {
        let err = parse_records(b"[{\"a\":1},\n {\"a\": }]", BodyFormat::Json, &LIMITS).unwrap_err();
        match err {
            DecodeError::Syntax { offset, .. } => assert_eq!(offset, 17),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(parse_records(b"42", BodyFormat::Json, &LIMITS), Err(DecodeError::Shape)));
        assert!(matches!(parse_records(br#"{"rows":[]}"#, BodyFormat::Json, &LIMITS), Err(DecodeError::Shape)));
        assert!(matches!(parse_records(b"[]", BodyFormat::Json, &LIMITS), Err(DecodeError::Empty)));
    }

    #[test]
    fn oversized_records_and_batches() {
        let big = format!("[{{\"a\":\"{}\"}}]", "x".repeat(100));
        let decoded = parse_records(big.as_bytes(), BodyFormat::Json, &LIMITS).unwrap();
        assert!(matches!(&decoded[0], Decoded::Rejected { error, .. } if error.code == RejectCode::RecordTooLarge));
        let many = format!("[{}]", ["1"; 11].join(","));
        assert!(matches!(
            parse_records(many.as_bytes(), BodyFormat::Json, &LIMITS),
            Err(DecodeError::TooManyRecords(10))
        ));
        // Blank lines are not records: ten records among them are within the limit, eleven not.
        let ten = "\n \r\n{\"a\":1}\n".repeat(10);
        assert_eq!(parse_records(ten.as_bytes(), BodyFormat::Ndjson, &LIMITS).unwrap().len(), 10);
        let eleven = format!("{ten}{{\"a\":1}}");
        assert!(matches!(
            parse_records(eleven.as_bytes(), BodyFormat::Ndjson, &LIMITS),
            Err(DecodeError::TooManyRecords(10))
        ));
        let blank = "\n".repeat(1000);
        assert!(matches!(parse_records(blank.as_bytes(), BodyFormat::Ndjson, &LIMITS), Err(DecodeError::Empty)));
    }

    #[test]
    fn decompression_is_bounded() {
        use std::io::Write;
        let plain = vec![b' '; 10_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let all = &mut |_| true;
        let gz = Bytes::from(gz);
        assert_eq!(decompress(gz.clone(), Some("gzip"), 10_000, all).unwrap().len(), 10_000);
        assert!(matches!(decompress(gz, Some("gzip"), 9_999, all), Err(DecodeError::TooLarge(_))));
        let zs = Bytes::from(zstd::encode_all(&plain[..], 3).unwrap());
        assert_eq!(decompress(zs, Some("ZSTD"), 20_000, all).unwrap().len(), 10_000);
        let junk = Bytes::from_static(b"junk");
        assert!(matches!(decompress(junk, Some("gzip"), 100, all), Err(DecodeError::Corrupt { .. })));
        let x = Bytes::from_static(b"x");
        assert!(matches!(decompress(x, Some("br"), 100, all), Err(DecodeError::UnsupportedEncoding(_))));
    }

    #[test]
    fn the_budget_is_asked_before_inflating() {
        use std::io::Write;
        let plain = vec![b' '; 3 * INFLATE_STEP];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let mut asked = Vec::new();
        let mut admit = |n: usize| {
            asked.push(n);
            n <= 2 * INFLATE_STEP
        };
        let refused = decompress(Bytes::from(gz), Some("gzip"), 10 * INFLATE_STEP, &mut admit);
        assert!(matches!(refused, Err(DecodeError::OverBudget)), "{refused:?}");
        let kib = 1024;
        let steps = [64 * kib, 128 * kib, 256 * kib, 512 * kib, INFLATE_STEP, 2 * INFLATE_STEP, 3 * INFLATE_STEP];
        assert_eq!(asked, steps, "asked before each step; small steps first, doubling up to 1 MiB");
        // An uncompressed body is used as it came: no copy, nothing more to ask for.
        let body = Bytes::from_static(b"[{}]");
        let out = decompress(body.clone(), None, 100, &mut |_| false).unwrap();
        assert_eq!(out.as_ptr(), body.as_ptr());
    }

    #[test]
    fn content_types() {
        assert_eq!(body_format(None).unwrap(), BodyFormat::Json);
        assert_eq!(body_format(Some("application/json; charset=utf-8")).unwrap(), BodyFormat::Json);
        assert_eq!(body_format(Some("application/x-ndjson")).unwrap(), BodyFormat::Ndjson);
        assert!(body_format(Some("text/csv")).is_err());
    }
}
