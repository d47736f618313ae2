//! The canonical bytes of an event and the SHA-256 chain over them.
//!
//! The bytes are a JSON array of every column but the hashes, with object keys sorted at every depth and no
//! whitespace. Sorting is done here, not left to serde_json's map type, so the bytes do not depend on a cargo
//! feature (`preserve_order`) that another crate could switch on. The timestamp enters as microseconds since
//! the epoch, the precision PostgreSQL stores, so it reads back identically.
//!
//! An event's hash is `sha256(prev_hash || sha256(canonical bytes))` (docs/adr/0003-hash-chain.md).
//!
//! Two encoders produce the same bytes: [`canonical_bytes`] from `serde_json::Value`s (the appender has them),
//! and [`canonical_bytes_of_text`] from the JSON text of the jsonb columns as PostgreSQL sends it (the
//! verifier), without building `Value` trees: a direct pass for text as PostgreSQL prints it, serde_json's parser
//! for anything else (see [`write_json_text`]). Numbers that are not plain integers, and strings with escapes,
//! go through serde_json's parsing and printing either way, and keys are sorted bytewise with the last of
//! duplicate keys winning, as serde_json's map does. The tests compare the encoders on awkward and random JSON.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The fields that make up an event's canonical bytes. Borrowed so appends and verification share one encoder.
///
/// `J` is how the jsonb columns are given: `&Value` (appends) or [`JsonText`] (verification).
pub struct CanonicalEvent<'a, J = &'a Value> {
    pub position: i64,
    pub event_id: &'a str,
    pub ts: DateTime<Utc>,
    pub entity_kind: &'a str,
    pub entity_id: &'a str,
    pub stream_version: i32,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub payload: J,
    pub action: &'a str,
    pub actor_kind: &'a str,
    pub actor_id: &'a str,
    pub before: Option<J>,
    pub after: Option<J>,
    pub note: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub unique_keys: &'a [String],
}

/// The JSON text of a jsonb column, as PostgreSQL sends it (without the binary format's version byte).
#[derive(Debug, Clone, Copy)]
pub struct JsonText<'a>(pub &'a [u8]);

/// A jsonb column's value that can write its canonical form.
pub trait CanonicalJson: Sized {
    /// What writing the payload learned that may save work on `before` and `after`.
    type Payload;

    fn write_payload(&self, out: &mut Vec<u8>) -> Result<Self::Payload, serde_json::Error>;

    /// Writes `before` or `after`; `out` holds the `payload` written by [`Self::write_payload`], untouched since.
    fn write_beside_payload(
        &self,
        out: &mut Vec<u8>,
        payload: &Self,
        written: &Self::Payload,
    ) -> Result<(), serde_json::Error>;
}

impl CanonicalJson for &Value {
    type Payload = ();

    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        write_value(out, self);
        Ok(())
    }

    fn write_beside_payload(&self, out: &mut Vec<u8>, _: &Self, (): &()) -> Result<(), serde_json::Error> {
        write_value(out, self);
        Ok(())
    }
}

/// Where the canonical form of each value of the payload's top-level object went in `out` (empty when the
/// payload was not an object or took serde_json's path).
#[derive(Debug, Default)]
pub struct PayloadMembers(Vec<Member>);

/// A value of the payload's top-level object: its JSON text, `text[text_start..text_end]` of the payload's, and
/// its canonical form, `out[out_start..out_end]`, unless a later duplicate key superseded it.
#[derive(Debug, Clone, Copy)]
struct Member {
    text_start: usize,
    text_end: usize,
    out_start: usize,
    out_end: usize,
    superseded: bool,
}

impl CanonicalJson for JsonText<'_> {
    type Payload = PayloadMembers;

    fn write_payload(&self, out: &mut Vec<u8>) -> Result<PayloadMembers, serde_json::Error> {
        let mut members = Vec::new();
        write_json_text_noting_members(out, self.0, &mut members)?;
        Ok(PayloadMembers(members))
    }

    /// `after` is often one of the payload's values (a created object's document); when its text is exactly
    /// that value's text, its canonical form is the one already written, and is copied. The same text always
    /// has the same canonical form, so this changes no byte.
    fn write_beside_payload(
        &self,
        out: &mut Vec<u8>,
        payload: &Self,
        written: &PayloadMembers,
    ) -> Result<(), serde_json::Error> {
        let same = written
            .0
            .iter()
            .find(|member| !member.superseded && &payload.0[member.text_start..member.text_end] == self.0);
        match same {
            Some(member) => out.extend_from_within(member.out_start..member.out_end),
            None => write_json_text(out, self.0)?,
        }
        Ok(())
    }
}

/// The canonical bytes of one event.
pub fn canonical_bytes(event: &CanonicalEvent<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_canonical(&mut out, event).expect("writing a Value cannot fail");
    out
}

/// The canonical bytes of one event whose jsonb columns are given as text: the bytes [`canonical_bytes`] gives
/// for the `Value`s serde_json parses from those texts. Appends to `out`; fails if a text is not JSON that
/// serde_json accepts (exactly when decoding it into a `Value` would fail).
pub fn canonical_bytes_of_text(
    out: &mut Vec<u8>,
    event: &CanonicalEvent<'_, JsonText<'_>>,
) -> Result<(), serde_json::Error> {
    write_canonical(out, event)
}

fn write_canonical<J: CanonicalJson>(
    out: &mut Vec<u8>,
    event: &CanonicalEvent<'_, J>,
) -> Result<(), serde_json::Error> {
    out.push(b'[');
    write_number(out, event.position);
    out.push(b',');
    write_string(out, event.event_id);
    out.push(b',');
    write_number(out, event.ts.timestamp_micros());
    for text in [event.entity_kind, event.entity_id] {
        out.push(b',');
        write_string(out, text);
    }
    out.push(b',');
    write_number(out, i64::from(event.stream_version));
    out.push(b',');
    write_string(out, event.event_type);
    out.push(b',');
    write_number(out, i64::from(event.schema_version));
    out.push(b',');
    let payload = event.payload.write_payload(out)?;
    for text in [event.action, event.actor_kind, event.actor_id] {
        out.push(b',');
        write_string(out, text);
    }
    for value in [&event.before, &event.after] {
        out.push(b',');
        match value {
            Some(value) => value.write_beside_payload(out, &event.payload, &payload)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    for text in [event.note, event.trace_id, event.correlation_id, event.causation_id, event.idempotency_key] {
        out.push(b',');
        match text {
            Some(text) => write_string(out, text),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",[");
    for (key_idx, key) in event.unique_keys.iter().enumerate() {
        if key_idx > 0 {
            out.push(b',');
        }
        write_string(out, key);
    }
    out.extend_from_slice(b"]]");
    Ok(())
}

/// `sha256(canonical bytes)`: the digest of one event's contents. Independent of other events, so a verifier
/// computes these in parallel and only the cheap chaining step is sequential.
pub fn content_hash(canonical: &[u8]) -> [u8; 32] {
    Sha256::digest(canonical).into()
}

/// `sha256(prev_hash || content_hash)`: the link of the chain.
pub fn link_hash(prev_hash: &[u8], content_hash: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(content_hash);
    hasher.finalize().into()
}

/// `sha256(prev_hash || sha256(canonical bytes))`: an event's stored hash.
pub fn chain_hash(prev_hash: &[u8], canonical: &[u8]) -> [u8; 32] {
    link_hash(prev_hash, &content_hash(canonical))
}

/// Replaces every number in `value` with the one read back once `value` has been stored in a jsonb column: the
/// number serde_json reads from the text PostgreSQL prints for it (see [`jsonb_number_text`]).
///
/// jsonb keeps numbers as `numeric`, which has no negative zero and no exponent notation, so serde_json's
/// `-0.0` comes back as `0.0` and `1e16` as the integer `10000000000000000`. The appender applies this to an
/// event's jsonb values before hashing them, so the hash covers what readers and the verifier get back. With
/// serde_json's `float_roundtrip` feature (the workspace enables it) parsing is exact, so a float comes back
/// as itself unless it is a negative zero or an integer printed with an exponent, and applying this twice
/// changes nothing more.
pub fn as_jsonb_reads_back(value: &mut Value) {
    match value {
        Value::Number(number) if number.is_f64() => {
            let text = number.to_string();
            let read_back: Option<Value> = jsonb_number_text(&text).and_then(|text| serde_json::from_str(&text).ok());
            if let Some(Value::Number(read_back)) = read_back {
                *number = read_back;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(as_jsonb_reads_back),
        Value::Object(map) => map.values_mut().for_each(as_jsonb_reads_back),
        _ => {}
    }
}

/// The text PostgreSQL's `numeric_out` prints for the number its `numeric_in` reads from `text`, a JSON number
/// (jsonb stores numbers as `numeric`): plain decimal notation, as many fraction digits as `text` has after
/// its point less its exponent (none if that is negative), and no sign on zero. `None` if `text` is not a
/// JSON number.
fn jsonb_number_text(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(unsigned) => (true, unsigned),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.strip_prefix('+').unwrap_or(exponent).parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if integer.is_empty()
        || mantissa.ends_with('.')
        || !integer.bytes().chain(fraction.bytes()).all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{integer}{fraction}");
    // The value is `digits` with the decimal point `point` digits from their left (beyond them if `point` is
    // larger than their number, before them with zeros between if it is negative).
    let point = i64::try_from(integer.len()).ok()?.checked_add(exponent)?;
    let length = i64::try_from(digits.len()).ok()?;
    let (whole, fraction) = if point <= 0 {
        (String::new(), format!("{}{digits}", "0".repeat(usize::try_from(-point).ok()?)))
    } else if point >= length {
        (format!("{digits}{}", "0".repeat(usize::try_from(point - length).ok()?)), String::new())
    } else {
        let (whole, fraction) = digits.split_at(usize::try_from(point).ok()?);
        (whole.to_owned(), fraction.to_owned())
    };
    let whole = whole.trim_start_matches('0');
    let is_zero = whole.is_empty() && fraction.bytes().all(|byte| byte == b'0');
    let mut printed = String::with_capacity(whole.len() + fraction.len() + 3);
    if negative && !is_zero {
        printed.push('-');
    }
    printed.push_str(if whole.is_empty() { "0" } else { whole });
    if !fraction.is_empty() {
        printed.push('.');
        printed.push_str(&fraction);
    }
    Some(printed)
}

fn write_number(out: &mut Vec<u8>, number: i64) {
    use std::io::Write as _;
    write!(out, "{number}").expect("writing to a Vec cannot fail");
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    // serde_json's string escaping is deterministic; reuse it rather than re-implementing JSON escapes.
    serde_json::to_writer(&mut *out, text).expect("writing a string to a Vec cannot fail");
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            // serde_json's map is already in key order unless `preserve_order` is on; the members are sorted only
            // then, and each value is taken with its key rather than looked up again by it.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            if !members.is_sorted_by_key(|(key, _)| *key) {
                members.sort_unstable_by_key(|(key, _)| *key);
            }
            out.push(b'{');
            for (member_idx, (key, value)) in members.into_iter().enumerate() {
                if member_idx > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_value(out, value);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (item_idx, item) in items.iter().enumerate() {
                if item_idx > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        scalar => write_scalar(out, scalar),
    }
}

/// Writes the canonical form of a JSON text: the bytes [`write_value`] writes for the `Value` that
/// `serde_json::from_slice` gives for it, without building that `Value`; fails exactly when that parse fails.
///
/// Texts as PostgreSQL prints jsonb (valid UTF-8, integers that fit an `i64`, few escapes) take a direct path
/// ([`Direct`]); anything else, and any text the direct path is unsure of, goes through serde_json's parser
/// ([`write_json_text_via_serde`]). Both give the bytes of the `Value` path; the tests compare all three.
pub fn write_json_text(out: &mut Vec<u8>, text: &[u8]) -> Result<(), serde_json::Error> {
    write_json_text_noting_members(out, text, &mut Vec::new())
}

/// [`write_json_text`], noting in `members` where the values of a top-level object went (when the direct
/// path took the text; otherwise `members` is left empty).
fn write_json_text_noting_members(
    out: &mut Vec<u8>,
    text: &[u8],
    members: &mut Vec<Member>,
) -> Result<(), serde_json::Error> {
    let mark = out.len();
    let direct = BUFFERS.with(|buffers| {
        let Ok(mut buffers) = buffers.try_borrow_mut() else { return None };
        let Buffers { entries, keys, scratch } = &mut *buffers;
        entries.clear();
        keys.clear();
        Direct { text, at: 0, out: &mut *out, entries, keys, scratch, members: &mut *members, depth: 0 }.document()
    });
    if direct.is_none() {
        members.clear();
        out.truncate(mark);
        write_json_text_via_serde(out, text)?;
    }
    Ok(())
}

/// [`write_json_text`] by serde_json's parser (`deserialize_any`): the text is accepted or refused exactly as
/// `Value` parsing would, and each number reaches us as the same `u64`, `i64` or `f64` a `Value` would hold;
/// numbers and strings are then printed by serde_json as a `Value`'s are. Objects are written entry by entry
/// into `out` and, when their keys were not already in order, their entries are moved into sorted order
/// (bytewise, as `String`'s `Ord` and so serde_json's `BTreeMap`), keeping the last of duplicate keys, as
/// serde_json's map does.
fn write_json_text_via_serde(out: &mut Vec<u8>, text: &[u8]) -> Result<(), serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    Canonical { out }.deserialize(&mut deserializer)?;
    deserializer.end()
}

fn compare_entries(text: &[u8], keys: &[u8], left: &Entry, right: &Entry) -> std::cmp::Ordering {
    let key = |entry: &Entry| match entry.key {
        KeyAt::Text(start, end) => &text[start as usize..end as usize],
        KeyAt::Decoded(start, end) => &keys[start as usize..end as usize],
    };
    left.prefix.cmp(&right.prefix).then_with(|| key(left).cmp(key(right)))
}

/// Buffers [`Direct`] reuses from text to text, one set per thread.
#[derive(Default)]
struct Buffers {
    entries: Vec<Entry>,
    keys: Vec<u8>,
    scratch: Vec<u8>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// One object entry written to `out[start..end]` (`"key":value`), with where its unescaped key is and the key's
/// first eight bytes as a big-endian number (zero-padded), which orders most keys without a `memcmp`, and, in
/// the top-level object, the index of its value's [`Member`]. Offsets are `u32` (a text or canonical form of
/// 4 GiB goes to serde_json) to keep entries small: they are pushed and sorted by the million.
#[derive(Clone, Copy)]
struct Entry {
    key: KeyAt,
    prefix: u64,
    start: u32,
    end: u32,
    member: Option<u32>,
}

fn key_prefix(key: &[u8]) -> u64 {
    match key.first_chunk::<8>() {
        Some(first) => u64::from_be_bytes(*first),
        // Byte by byte: a short copy into an array and a load of it stalls on store forwarding.
        None => {
            let prefix = key.iter().fold(0_u64, |prefix, &byte| (prefix << 8) | u64::from(byte));
            prefix.checked_shl(8 * (8 - key.len() as u32)).unwrap_or(0)
        }
    }
}

/// An unescaped key: in the text (it had no escapes) or in the key buffer (it had).
#[derive(Clone, Copy)]
enum KeyAt {
    Text(u32, u32),
    Decoded(u32, u32),
}

/// Nesting deeper than this is left to serde_json, which enforces its own recursion limit (128).
const DIRECT_MAX_DEPTH: u32 = 100;
/// Longest integer copied as it is: 18 digits always fit an `i64`, which serde_json prints as written.
const DIRECT_MAX_DIGITS: usize = 18;

/// A recursive-descent pass over a JSON text that writes its canonical form straight to `out`. It only handles
/// what it can match byte for byte with the `Value` path: valid UTF-8 (checked once up front), strings copied
/// as they are unless they hold an escape (those are decoded and re-escaped by serde_json), integers of up to
/// 18 digits without a leading zero or a minus zero copied as they are (other numbers parsed and printed by
/// serde_json, as a `Value` would hold them), objects sorted and deduplicated as serde_json's map is. Anything
/// else (`None`) sends the whole text to [`write_json_text_via_serde`].
struct Direct<'t, 'b> {
    text: &'t [u8],
    at: usize,
    out: &'b mut Vec<u8>,
    entries: &'b mut Vec<Entry>,
    keys: &'b mut Vec<u8>,
    scratch: &'b mut Vec<u8>,
    members: &'b mut Vec<Member>,
    depth: u32,
}

impl Direct<'_, '_> {
    fn document(mut self) -> Option<()> {
        std::str::from_utf8(self.text).ok()?;
        self.value()?;
        self.skip_whitespace();
        (self.at == self.text.len()).then_some(())
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    fn value(&mut self) -> Option<()> {
        self.skip_whitespace();
        match *self.text.get(self.at)? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => {
                let (start, end, escaped) = self.string()?;
                if escaped {
                    let decoded: String = serde_json::from_slice(&self.text[start..end]).ok()?;
                    write_string(self.out, &decoded);
                } else {
                    self.out.extend_from_slice(&self.text[start..end]);
                }
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, literal: &[u8]) -> Option<()> {
        self.text[self.at..].starts_with(literal).then_some(())?;
        self.at += literal.len();
        self.out.extend_from_slice(literal);
        Some(())
    }

    /// The string token at `at` (quotes included) as `text[start..end]`, and whether it holds an escape.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.at;
        let mut at = start + 1;
        let mut escaped = false;
        loop {
            match *self.text.get(at)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    at += 2;
                }
                0..=0x1f => return None,
                _ => at += 1,
            }
        }
        self.at = at + 1;
        Some((start, at + 1, escaped))
    }

    fn number(&mut self) -> Option<()> {
        let start = self.at;
        let length = self.text[start..]
            .iter()
            .position(|byte| !matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .unwrap_or(self.text.len() - start);
        let token = &self.text[start..start + length];
        self.at += length;
        let digits = token.strip_prefix(b"-").unwrap_or(token);
        let plain_integer = match digits {
            [b'0'] => token.len() == 1,
            [b'1'..=b'9', rest @ ..] => digits.len() <= DIRECT_MAX_DIGITS && rest.iter().all(u8::is_ascii_digit),
            _ => false,
        };
        if plain_integer {
            self.out.extend_from_slice(token);
        } else {
            let number: Value = serde_json::from_slice(token).ok()?;
            if !number.is_number() {
                return None;
            }
            write_scalar(self.out, &number);
        }
        Some(())
    }

    fn array(&mut self) -> Option<()> {
        self.enter()?;
        self.at += 1;
        self.out.push(b'[');
        self.skip_whitespace();
        if self.text.get(self.at) == Some(&b']') {
            self.at += 1;
        } else {
            loop {
                self.value()?;
                self.skip_whitespace();
                match *self.text.get(self.at)? {
                    b',' => self.out.push(b','),
                    b']' => break,
                    _ => return None,
                }
                self.at += 1;
            }
            self.at += 1;
        }
        self.out.push(b']');
        self.depth -= 1;
        Some(())
    }

    fn object(&mut self) -> Option<()> {
        self.enter()?;
        self.at += 1;
        self.out.push(b'{');
        let body = self.out.len();
        let first_entry = self.entries.len();
        let keys_mark = self.keys.len();
        let mut in_order = true;
        self.skip_whitespace();
        if self.text.get(self.at) == Some(&b'}') {
            self.at += 1;
        } else {
            loop {
                self.skip_whitespace();
                if self.text.get(self.at) != Some(&b'"') {
                    return None;
                }
                let entry_start = self.out.len();
                let (start, end, escaped) = self.string()?;
                let key = if escaped {
                    let decoded: String = serde_json::from_slice(&self.text[start..end]).ok()?;
                    write_string(self.out, &decoded);
                    let key_start = self.keys.len().try_into().ok()?;
                    self.keys.extend_from_slice(decoded.as_bytes());
                    KeyAt::Decoded(key_start, self.keys.len().try_into().ok()?)
                } else {
                    self.out.extend_from_slice(&self.text[start..end]);
                    KeyAt::Text((start + 1).try_into().ok()?, (end - 1).try_into().ok()?)
                };
                self.skip_whitespace();
                if self.text.get(self.at) != Some(&b':') {
                    return None;
                }
                self.at += 1;
                self.out.push(b':');
                self.skip_whitespace();
                let (text_start, out_start) = (self.at, self.out.len());
                self.value()?;
                let member = if self.depth == 1 {
                    let (text_end, out_end) = (self.at, self.out.len());
                    self.members.push(Member { text_start, text_end, out_start, out_end, superseded: false });
                    Some((self.members.len() - 1).try_into().ok()?)
                } else {
                    None
                };
                let prefix = key_prefix(self.key(key));
                let (start, end) = (entry_start.try_into().ok()?, self.out.len().try_into().ok()?);
                let entry = Entry { key, prefix, start, end, member };
                if let Some(previous) = self.entries[first_entry..].last() {
                    in_order &= self.compare(previous, &entry).is_lt();
                }
                self.entries.push(entry);
                self.skip_whitespace();
                match *self.text.get(self.at)? {
                    b',' => self.out.push(b','),
                    b'}' => break,
                    _ => return None,
                }
                self.at += 1;
            }
            self.at += 1;
            if !in_order {
                self.sort_entries(body, first_entry);
            }
        }
        self.entries.truncate(first_entry);
        self.keys.truncate(keys_mark);
        self.out.push(b'}');
        self.depth -= 1;
        Some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= DIRECT_MAX_DEPTH).then_some(())
    }

    fn key(&self, key: KeyAt) -> &[u8] {
        match key {
            KeyAt::Text(start, end) => &self.text[start as usize..end as usize],
            KeyAt::Decoded(start, end) => &self.keys[start as usize..end as usize],
        }
    }

    /// Orders entries by key, bytewise (as `String`'s `Ord`).
    fn compare(&self, left: &Entry, right: &Entry) -> std::cmp::Ordering {
        compare_entries(self.text, self.keys, left, right)
    }

    /// Rewrites the entries written since `body` in key order, the last of equal keys only.
    fn sort_entries(&mut self, body: usize, first_entry: usize) {
        let (text, keys) = (self.text, &*self.keys);
        let entries = &mut self.entries[first_entry..];
        // Stable: of equal keys, the one written last stays last.
        entries.sort_by(|left, right| compare_entries(text, keys, left, right));
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.out[body..]);
        self.out.truncate(body);
        let mut first = true;
        for (entry_idx, entry) in entries.iter().enumerate() {
            let superseded =
                entries.get(entry_idx + 1).is_some_and(|next| compare_entries(text, keys, entry, next).is_eq());
            if superseded {
                // Not in the canonical form, so not a member `after` may be copied from.
                if let Some(member) = entry.member {
                    self.members[member as usize].superseded = true;
                }
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            let (start, end, moved_to) = (entry.start as usize, entry.end as usize, self.out.len());
            self.out.extend_from_slice(&self.scratch[start - body..end - body]);
            if let Some(member) = entry.member {
                let member = &mut self.members[member as usize];
                (member.out_start, member.out_end) =
                    (member.out_start - start + moved_to, member.out_end - start + moved_to);
            }
        }
    }
}

/// A serde seed that writes the canonical form of whatever it is fed into `out`.
struct Canonical<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<(), E> {
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E>(self, value: i64) -> Result<(), E> {
        write_scalar(self.out, &Value::from(value));
        Ok(())
    }

    fn visit_u64<E>(self, value: u64) -> Result<(), E> {
        write_scalar(self.out, &Value::from(value));
        Ok(())
    }

    fn visit_f64<E>(self, value: f64) -> Result<(), E> {
        // `Value`'s own rule: a float that is not finite is `null`.
        let value = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        write_scalar(self.out, &value);
        Ok(())
    }

    /// A string borrowed from the text had no escape sequence in it, and serde_json refuses raw control
    /// characters, so it holds nothing serde_json escapes: its canonical form is itself in quotes.
    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<(), E> {
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
        Ok(())
    }

    fn visit_str<E>(self, value: &str) -> Result<(), E> {
        write_string(self.out, value);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if items.next_element_seed(Canonical { out: &mut *self.out })?.is_none() {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let body = self.out.len();
        // Each entry, `"key":value`, is written at once; `out[start..end]` holds it.
        let mut entries: Vec<(Cow<'de, str>, usize, usize)> = Vec::new();
        let mut in_order = true;
        while let Some(key) = map.next_key_seed(Key)? {
            if let Some((previous, _, _)) = entries.last() {
                in_order &= previous.as_ref() < key.as_ref();
                self.out.push(b',');
            }
            let start = self.out.len();
            match &key {
                // As in `visit_borrowed_str`: nothing in it needs escaping.
                Cow::Borrowed(key) => {
                    self.out.push(b'"');
                    self.out.extend_from_slice(key.as_bytes());
                    self.out.push(b'"');
                }
                Cow::Owned(key) => write_string(self.out, key),
            }
            self.out.push(b':');
            map.next_value_seed(Canonical { out: &mut *self.out })?;
            entries.push((key, start, self.out.len()));
        }
        if !in_order {
            // Stable, so of equal keys the last written stays last; keep only that one.
            entries.sort_by(|left, right| left.0.cmp(&right.0));
            entries.reverse();
            entries.dedup_by(|later, earlier| later.0 == earlier.0);
            entries.reverse();
            let written = self.out[body..].to_vec();
            self.out.truncate(body);
            for (entry_idx, (_, start, end)) in entries.iter().enumerate() {
                if entry_idx > 0 {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(&written[start - body..end - body]);
            }
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(key.to_owned()))
    }

    fn visit_string<E>(self, key: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(key))
    }
}

fn write_scalar(out: &mut Vec<u8>, scalar: &Value) {
    serde_json::to_writer(&mut *out, scalar).expect("writing a scalar to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(payload: &'a Value, keys: &'a [String]) -> CanonicalEvent<'a> {
        CanonicalEvent {
            position: 7,
            event_id: "01J0000000000000000000000A",
            ts: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            entity_kind: "Task",
            entity_id: "01J0000000000000000000000B",
            stream_version: 2,
            event_type: "TaskEnqueued",
            schema_version: 1,
            payload,
            action: "created",
            actor_kind: "human",
            actor_id: "alice",
            before: None,
            after: Some(payload),
            note: Some("n\"ote"),
            trace_id: Some("t"),
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            unique_keys: keys,
        }
    }

    #[test]
    fn object_keys_are_sorted_at_every_depth() {
        let payload: Value = serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":null}}"#).unwrap();
        let keys = vec!["idempotency:k".to_owned()];
        let bytes = String::from_utf8(canonical_bytes(&event(&payload, &keys))).unwrap();
        assert_eq!(
            bytes,
            r#"[7,"01J0000000000000000000000A",1700000000123456,"Task","01J0000000000000000000000B",2,"TaskEnqueued",1,{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1},"created","human","alice",null,{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1},"n\"ote","t",null,null,null,["idempotency:k"]]"#
        );
    }

    /// The bytes the appender's encoder gives for the `Value` serde_json parses from `text`, or `None` when
    /// serde_json refuses the text.
    fn via_value(text: &str) -> Option<Vec<u8>> {
        let value: Value = serde_json::from_str(text).ok()?;
        let mut out = Vec::new();
        write_value(&mut out, &value);
        Some(out)
    }

    fn via_text(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        write_json_text(&mut out, text.as_bytes()).ok()?;
        Some(out)
    }

    fn via_serde(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        write_json_text_via_serde(&mut out, text.as_bytes()).ok()?;
        Some(out)
    }

    /// The direct path alone: `None` when it hands the text over to serde_json.
    fn via_direct(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut buffers = Buffers::default();
        let Buffers { entries, keys, scratch } = &mut buffers;
        let members = &mut Vec::new();
        Direct { text: text.as_bytes(), at: 0, out: &mut out, entries, keys, scratch, members, depth: 0 }.document()?;
        Some(out)
    }

    /// Checks every encoder against the `Value` path; returns whether the direct path took the text.
    fn assert_same(text: &str) -> bool {
        let expected = via_value(text);
        let show = |bytes: &Option<Vec<u8>>| bytes.as_deref().map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        assert_eq!(show(&via_text(text)), show(&expected), "canonical bytes of {text}");
        assert_eq!(show(&via_serde(text)), show(&expected), "canonical bytes through serde_json of {text}");
        let direct = via_direct(text);
        if direct.is_some() {
            assert_eq!(show(&direct), show(&expected), "canonical bytes through the direct path of {text}");
        }
        direct.is_some()
    }

    #[test]
    fn text_and_value_encoders_agree_on_awkward_json() {
        for text in [
            // jsonb's own output: keys by length then bytes, a space after `:` and `,`.
            r#"{"b": 1, "aa": {"zz": [{"y": 1, "x": 2}], "c": null}, "A": true}"#,
            r#"{"id": "x", "kind": "Task", "title": "t", "labels": [], "metadata": {}}"#,
            r#"{"a":1,"a":2,"b":{"c":3,"c":{"d":4}},"a":3}"#,
            r#"{"é": 1, "e": 2, "\u00e9t\u00e9": 3, "z": 4, "Z": 5, "": 6, "\"": 7, "\n": 8}"#,
            r#"["\u0000\u001f\u007f\"\\\/\b\f\n\r\t", "\ud83d\ude00", "😀", "\u2028"]"#,
            r#"[0, -0, 1, -1, 18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809]"#,
            r#"[0.0, -0.0, 1.0, 1.5, 1e5, 1E+5, 1e-7, 0.1, 100000.0, 1.5e300, 123456789012345678901234567890, 2.5E-300]"#,
            r#"[true, false, null, [], {}, [[]], [{}], {"a": []}, {"a": {}}]"#,
            "  {\"k\" :\t[ 1 ,2 ] }\n",
            r#""just a string""#,
            "42",
            "null",
        ] {
            assert_same(text);
        }
        // What PostgreSQL prints takes the direct path.
        assert!(assert_same(r#"{"b": 1, "aa": {"zz": [{"y": 1, "x": 2.5}], "c": null}, "A": "t\"\n\u0001"}"#));
        let deep = format!("{}1{}", "[".repeat(150), "]".repeat(150));
        assert!(!assert_same(&deep), "serde_json decides on deep nesting");
    }

    #[test]
    fn text_the_value_parser_refuses_is_refused() {
        for text in [
            "",
            "1e400",
            "1.",
            "-",
            "--1",
            "1e",
            "01",
            "-01",
            "nulll",
            "tru",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "\u{feff}1",
            "\"a\u{1}b\"",
            "{\"a\u{1f}\": 1}",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "[1] 2",
            "'a'",
            "\"\\x\"",
            "nul",
            "[1",
        ] {
            assert!(via_value(text).is_none(), "{text} is refused by serde_json");
            assert!(via_text(text).is_none(), "{text} is refused by the text encoder");
        }
    }

    /// Random JSON texts, written with random key orders, duplicate keys, escapes, number forms and whitespace.
    fn random_json(rng: &mut impl rand::Rng, depth: u32, text: &mut String) {
        const KEYS: [&str; 12] = ["a", "b", "aa", "ab", "B", "id", "kind", "é", "a\\u0062", "\\n", "zz", ""];
        const NUMBERS: [&str; 14] = [
            "0",
            "-0",
            "7",
            "-12",
            "3.25",
            "-0.5",
            "1e3",
            "2E-4",
            "6.02e+23",
            "1.0",
            "18446744073709551615",
            "98765432109876543210",
            "-9223372036854775809",
            "0.30000000000000004",
        ];
        const STRINGS: [&str; 6] = ["", "plain", "quote\\\"d", "tab\\tnew\\nline", "\\u00e9\\ud83d\\ude00", "ünï"];
        let space = |rng: &mut dyn rand::RngCore| if rng.next_u32() % 3 == 0 { " " } else { "" };
        let choice = if depth == 0 { rng.gen_range(0..4) } else { rng.gen_range(0..6) };
        match choice {
            0 => text.push_str(NUMBERS[rng.gen_range(0..NUMBERS.len())]),
            1 => {
                text.push('"');
                text.push_str(STRINGS[rng.gen_range(0..STRINGS.len())]);
                text.push('"');
            }
            2 => text.push_str(["true", "false"][rng.gen_range(0..2)]),
            3 => text.push_str("null"),
            4 => {
                text.push('[');
                for item_idx in 0..rng.gen_range(0..4) {
                    if item_idx > 0 {
                        text.push(',');
                        text.push_str(space(rng));
                    }
                    random_json(rng, depth - 1, text);
                }
                text.push(']');
            }
            _ => {
                text.push('{');
                for entry_idx in 0..rng.gen_range(0..6) {
                    if entry_idx > 0 {
                        text.push(',');
                        text.push_str(space(rng));
                    }
                    text.push('"');
                    text.push_str(KEYS[rng.gen_range(0..KEYS.len())]);
                    text.push_str("\":");
                    text.push_str(space(rng));
                    random_json(rng, depth - 1, text);
                }
                text.push('}');
            }
        }
    }

    #[test]
    fn text_and_value_encoders_agree_on_random_json() {
        use rand::SeedableRng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6a63_7400);
        let mut direct = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            random_json(&mut rng, 4, &mut text);
            direct += usize::from(assert_same(&text));
        }
        assert!(direct > 19_000, "the direct path took {direct} texts");
    }

    #[test]
    fn a_whole_event_encodes_the_same_from_text() {
        let payload_text = r#"{"b": 1, "a": {"z": [{"y": 1, "x": 2}], "c": null}}"#;
        let payload: Value = serde_json::from_str(payload_text).unwrap();
        let keys = vec!["idempotency:k".to_owned(), "repo:x".to_owned()];
        let from_value = canonical_bytes(&event(&payload, &keys));
        let value_event = event(&payload, &keys);
        let text_event = CanonicalEvent {
            payload: JsonText(payload_text.as_bytes()),
            before: None,
            after: Some(JsonText(payload_text.as_bytes())),
            ..value_event_fields(&value_event)
        };
        let mut from_text = Vec::new();
        canonical_bytes_of_text(&mut from_text, &text_event).unwrap();
        assert_eq!(String::from_utf8(from_text).unwrap(), String::from_utf8(from_value).unwrap());
    }

    /// Payloads whose top-level values `before` and `after` repeat (as created events' `after` repeats the
    /// object): the copied canonical forms must be the ones the `Value` path writes, also when the payload's keys
    /// are reordered or duplicated.
    #[test]
    fn after_copied_from_the_payload_encodes_the_same() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xaf7e_0001);
        const KEYS: [&str; 6] = ["object", "task", "a", "zz", "id", "object"];
        for _ in 0..5_000 {
            let mut members: Vec<(&str, String)> = Vec::new();
            for _ in 0..rng.gen_range(1..6) {
                let mut value = String::new();
                random_json(&mut rng, 3, &mut value);
                members.push((KEYS[rng.gen_range(0..KEYS.len())], value));
            }
            let payload_text = format!(
                "{{{}}}",
                members.iter().map(|(key, value)| format!("\"{key}\": {value}")).collect::<Vec<_>>().join(", ")
            );
            let pick = |rng: &mut rand::rngs::StdRng| match rng.gen_range(0..4) {
                0 => None,
                1 => Some("{\"other\": 1}".to_owned()),
                _ => Some(members[rng.gen_range(0..members.len())].1.clone()),
            };
            let (before_text, after_text) = (pick(&mut rng), pick(&mut rng));
            let payload: Value = serde_json::from_str(&payload_text).unwrap();
            let before: Option<Value> = before_text.as_deref().map(|text| serde_json::from_str(text).unwrap());
            let after: Option<Value> = after_text.as_deref().map(|text| serde_json::from_str(text).unwrap());
            let mut value_event = event(&payload, &[]);
            value_event.before = before.as_ref();
            value_event.after = after.as_ref();
            let expected = String::from_utf8(canonical_bytes(&value_event)).unwrap();
            let text_event = CanonicalEvent {
                payload: JsonText(payload_text.as_bytes()),
                before: before_text.as_deref().map(|text| JsonText(text.as_bytes())),
                after: after_text.as_deref().map(|text| JsonText(text.as_bytes())),
                ..value_event_fields(&value_event)
            };
            let mut actual = b"prefix".to_vec();
            canonical_bytes_of_text(&mut actual, &text_event).unwrap();
            assert_eq!(String::from_utf8_lossy(&actual[6..]), expected, "payload {payload_text}, after {after_text:?}");
        }
    }

    /// The fields of `event` that are not jsonb, with placeholder jsonb texts.
    fn value_event_fields<'a>(event: &CanonicalEvent<'a>) -> CanonicalEvent<'a, JsonText<'a>> {
        CanonicalEvent {
            position: event.position,
            event_id: event.event_id,
            ts: event.ts,
            entity_kind: event.entity_kind,
            entity_id: event.entity_id,
            stream_version: event.stream_version,
            event_type: event.event_type,
            schema_version: event.schema_version,
            payload: JsonText(b"null"),
            action: event.action,
            actor_kind: event.actor_kind,
            actor_id: event.actor_id,
            before: None,
            after: None,
            note: event.note,
            trace_id: event.trace_id,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            idempotency_key: event.idempotency_key,
            unique_keys: event.unique_keys,
        }
    }

    /// What PostgreSQL 15 prints for `select '<text>'::jsonb`, checked by hand with psql.
    #[test]
    fn jsonb_number_text_is_what_postgresql_prints() {
        for (text, printed) in [
            ("-0.0", "0.0"),
            ("-0", "0"),
            ("-0e5", "0"),
            ("0", "0"),
            ("1e16", "10000000000000000"),
            ("1.5e-7", "0.00000015"),
            ("1E+2", "100"),
            ("1e2", "100"),
            ("1.0", "1.0"),
            ("1.50e1", "15.0"),
            ("1E-7", "0.0000001"),
            ("-12.5", "-12.5"),
            ("123.456e1", "1234.56"),
            ("18446744073709551616", "18446744073709551616"),
            ("2.5e-3", "0.0025"),
        ] {
            assert_eq!(jsonb_number_text(text).as_deref(), Some(printed), "{text}");
        }
        assert_eq!(jsonb_number_text("5e-324").unwrap(), format!("0.{}5", "0".repeat(323)));
        assert_eq!(
            jsonb_number_text("1.7976931348623157e308").unwrap(),
            format!("17976931348623157{}", "0".repeat(292))
        );
        for text in ["", "-", "1.", ".5", "1e", "a", "1x"] {
            assert_eq!(jsonb_number_text(text), None, "{text}");
        }
    }

    #[test]
    fn numbers_read_back_from_jsonb_keep_their_value_and_are_stable() {
        use rand::{Rng as _, SeedableRng as _};
        let read_back = |value: &Value| {
            let mut value = value.clone();
            as_jsonb_reads_back(&mut value);
            value
        };
        assert_eq!(read_back(&json_f64(-0.0)).to_string(), "0.0");
        assert_eq!(read_back(&json_f64(1e16)).to_string(), "10000000000000000");
        assert_eq!(read_back(&json_f64(-1.5e18)).to_string(), "-1500000000000000000");
        assert_eq!(read_back(&json_f64(1e20)), json_f64(1e20), "beyond u64 stays a float");
        assert_eq!(read_back(&json_f64(1e-7)).to_string(), "1e-7");
        let nested = serde_json::json!({"a": [-0.0, {"b": 1e16}], "c": -0.0, "d": 7});
        assert_eq!(read_back(&nested).to_string(), r#"{"a":[0.0,{"b":10000000000000000}],"c":0.0,"d":7}"#);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6a73_6f6e);
        for _ in 0..200_000 {
            let float = f64::from_bits(rng.gen());
            if !float.is_finite() {
                continue;
            }
            let once = read_back(&json_f64(float));
            assert_eq!(once.as_f64(), Some(if float == 0.0 { 0.0 } else { float }), "{float:e} keeps its value");
            assert_eq!(read_back(&once), once, "{float:e} reads back as itself the second time");
        }
    }

    fn json_f64(float: f64) -> Value {
        Value::Number(serde_json::Number::from_f64(float).unwrap())
    }

    #[test]
    fn the_chain_depends_on_the_previous_hash() {
        let payload = serde_json::json!({"a": 1});
        let bytes = canonical_bytes(&event(&payload, &[]));
        assert_ne!(chain_hash(&GENESIS_HASH, &bytes), chain_hash(&[1; 32], &bytes));
        assert_eq!(chain_hash(&GENESIS_HASH, &bytes), chain_hash(&GENESIS_HASH, &bytes));
    }
}
