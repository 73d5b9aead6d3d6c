//! Adds and upserts of the journal, read and merged at the byte level: no parse tree of their
//! bodies, no re-serialization.
//!
//! A journaled add or upsert carries the body its client sent (`mirror.rs`'s
//! `encode_records`), already checked to be JSON the proxy reads. Decoding it into a
//! `serde_json::Value` makes every float a node, and sending it serializes every float again:
//! most of the replay's CPU for an add of float embeddings. Here the body's top-level fields
//! and their array items are located by a scan that only tracks strings and nesting, and a
//! merged body is written by concatenating the items' bytes, field by field. The merge follows
//! the rules of [`shift_chroma::payload::append_record_body`] (only the per-record arrays,
//! disjoint ids, one embedding form, arrays as long as their ids, a missing array stands for
//! nulls); anything outside them (an unknown field, a field that is neither an array nor
//! null, an escaped key or id) is left to the parse-tree path, which the replay then takes.
//! Updates and deletes keep that path: an update is restricted on the target first, a
//! delete's body is its ids alone.

use std::collections::HashSet;
use std::ops::Range;

use crate::ids::ClientCollectionId;
use crate::mirror::{op_json, RecordKind};

/// The per-record arrays of a record write, in the order a merged body lists them.
const FIELDS: [&str; 5] = ["ids", "embeddings", "metadatas", "documents", "uris"];

/// Nesting deeper than this is left to the parse-tree path (which refuses past 128).
const MAX_DEPTH: usize = 128;

/// A batch of adds or upserts of one collection, merged into one request body.
#[derive(Debug, Clone, PartialEq)]
pub struct RawBatch {
    pub kind: RecordKind,
    pub collection: ClientCollectionId,
    /// The request body, JSON (shared: a retry sends it again without a copy).
    pub body: bytes::Bytes,
    /// How many records (ids) it holds.
    pub records: usize,
}

/// How a body's embeddings are written (the forms must match to merge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Absent,
    Floats,
    Base64,
    Other,
}

/// One record-write body's fields: each per-record array's items, or `None` when absent
/// (or null).
struct Body<'a> {
    fields: [Option<Vec<&'a [u8]>>; 5],
}

impl<'a> Body<'a> {
    fn ids(&self) -> &[&'a [u8]] {
        self.fields[0].as_deref().unwrap_or_default()
    }

    fn form(&self) -> Form {
        let Some(items) = &self.fields[1] else {
            return Form::Absent;
        };
        if items.iter().all(|item| item.first() == Some(&b'[')) {
            Form::Floats
        } else if items.iter().all(|item| item.first() == Some(&b'"')) {
            Form::Base64
        } else {
            Form::Other
        }
    }
}

/// A merge in progress: the first entry's body and the ones appended to it.
pub(super) struct RawMerge<'a> {
    kind: RecordKind,
    collection: String,
    fields: [Option<Vec<&'a [u8]>>; 5],
    records: usize,
    ids: HashSet<&'a [u8]>,
    form: Form,
}

impl<'a> RawMerge<'a> {
    /// Starts from a journal payload: `None` unless it is an add or an upsert whose body the
    /// byte-level path reads.
    pub(super) fn start(payload: &'a [u8]) -> Option<RawMerge<'a>> {
        let (kind, collection, body) = records_op(payload)?;
        if !matches!(kind, RecordKind::Add | RecordKind::Upsert) {
            return None;
        }
        let ids = distinct_ids(body.ids())?;
        // Nothing to merge into, or a write Chroma refuses: the parse-tree path decides.
        if ids.is_empty() {
            return None;
        }
        let records = body.ids().len();
        let form = body.form();
        Some(RawMerge {
            kind,
            collection,
            fields: body.fields,
            records,
            ids,
            form,
        })
    }

    /// Records so far.
    pub(super) fn records(&self) -> usize {
        self.records
    }

    /// Appends the next entry when one request can say both and the total stays within
    /// `max_records`; false, and nothing changed, otherwise.
    pub(super) fn push(&mut self, payload: &'a [u8], max_records: usize) -> bool {
        let Some((kind, collection, body)) = records_op(payload) else {
            return false;
        };
        let added = body.ids().len();
        if kind != self.kind
            || collection != self.collection
            || self.records + added > max_records
            || body.form() != self.form
        {
            return false;
        }
        let Some(ids) = distinct_ids(body.ids()) else {
            return false;
        };
        if ids.iter().any(|id| self.ids.contains(id)) {
            return false;
        }
        for (slot, more) in self.fields.iter_mut().zip(body.fields) {
            match (slot.as_mut(), more) {
                (None, None) => {}
                (Some(items), more) => {
                    items.extend(more.unwrap_or_else(|| vec![b"null".as_slice(); added]))
                }
                (None, Some(more)) => {
                    let mut items = vec![b"null".as_slice(); self.records];
                    items.extend(more);
                    *slot = Some(items);
                }
            }
        }
        self.ids.extend(ids);
        self.records += added;
        true
    }

    /// The merged request.
    pub(super) fn finish(self) -> RawBatch {
        let size: usize = self
            .fields
            .iter()
            .flatten()
            .flat_map(|items| items.iter().map(|item| item.len() + 1))
            .sum();
        let mut body = Vec::with_capacity(size + 64);
        body.push(b'{');
        for (name, items) in FIELDS.iter().zip(&self.fields) {
            let Some(items) = items else { continue };
            if body.len() > 1 {
                body.push(b',');
            }
            body.extend_from_slice(format!("\"{name}\":[").as_bytes());
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(item);
            }
            body.push(b']');
        }
        body.push(b'}');
        RawBatch {
            kind: self.kind,
            collection: ClientCollectionId::from(self.collection),
            body: body.into(),
            records: self.records,
        }
    }
}

/// The ids as a set, when they are strings without escapes and distinct (a body repeating an
/// id is left to the parse-tree path).
fn distinct_ids<'a>(ids: &[&'a [u8]]) -> Option<HashSet<&'a [u8]>> {
    let mut set = HashSet::with_capacity(ids.len());
    for id in ids {
        let plain = id.len() >= 2
            && id.first() == Some(&b'"')
            && id.last() == Some(&b'"')
            && !id.contains(&b'\\');
        if !plain || !set.insert(*id) {
            return None;
        }
    }
    Some(set)
}

/// A record write's kind, collection and body, from a journal payload
/// (`{"records":{"kind":..,"collection":..,"body":..}}`, after the identity if any).
fn records_op(payload: &[u8]) -> Option<(RecordKind, String, Body<'_>)> {
    let json = op_json(payload);
    let scan = Scan::new(json)?;
    let top = scan.object_fields(scan.span()?)?;
    let [(b"records", records)] = top.as_slice() else {
        return None;
    };
    let (mut kind, mut collection, mut body) = (None, None, None);
    for (key, value) in scan.object_fields(records.clone())? {
        let bytes = &json[value.clone()];
        match key {
            b"kind" => kind = serde_json::from_slice::<RecordKind>(bytes).ok(),
            b"collection" => collection = serde_json::from_slice::<String>(bytes).ok(),
            b"body" => body = Some(value),
            _ => return None,
        }
    }
    let body = scan.record_body(body?)?;
    Some((kind?, collection?, body))
}

/// Containers nested this deep or less have their ends found by the one pass of
/// [`Scan::new`]: the op, `records`, the body, its arrays and their items.
const INDEXED_DEPTH: usize = 5;

/// The bytes that start or end a string or a container.
const STRUCTURAL: [bool; 256] = {
    let mut table = [false; 256];
    table[b'"' as usize] = true;
    table[b'[' as usize] = true;
    table[b']' as usize] = true;
    table[b'{' as usize] = true;
    table[b'}' as usize] = true;
    table
};

/// Where the first quote or bracket of `bytes` is, as a lookup in [`STRUCTURAL`] of each byte
/// would find it, eight bytes at a time: `zeros` flags the bytes of a word that are zero,
/// exactly for the lowest one (a borrow runs only upward from a zero byte, so a wrong flag
/// sits above a right one), hence the lowest flag of the three masks is the first hit.
/// `[` and `]` are `{` and `}` with bit 0x20 cleared, and no other byte is, so setting that
/// bit folds each pair into one comparison.
#[inline(always)]
fn next_structural(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const fn zeros(word: u64) -> u64 {
        word.wrapping_sub(ONES) & !word & 0x8080_8080_8080_8080
    }
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let folded = word | 0x2020_2020_2020_2020;
        let hits = zeros(word ^ (b'"' as u64 * ONES))
            | zeros(folded ^ (b'{' as u64 * ONES))
            | zeros(folded ^ (b'}' as u64 * ONES));
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|b| STRUCTURAL[*b as usize])
        .map(|skip| i + skip)
}

/// A journal payload's JSON with where each of its outer containers ends, found in one pass
/// (the fields, items and ends read below would otherwise each scan the body again).
struct Scan<'a> {
    json: &'a [u8],
    /// `(start, end)` of each container at most [`INDEXED_DEPTH`] deep, by start.
    ends: Vec<(usize, usize)>,
}

impl<'a> Scan<'a> {
    /// `None` when the brackets do not balance.
    fn new(json: &'a [u8]) -> Option<Scan<'a>> {
        let (mut ends, mut open, mut depth, mut i) = (Vec::new(), Vec::new(), 0usize, 0);
        // Only quotes and brackets matter; the bytes between them (floats, mostly) are
        // skipped eight at a time.
        while let Some(skip) = next_structural(json.get(i..)?) {
            i += skip;
            match json[i] {
                b'"' => {
                    i = string_end(json, i)?;
                    continue;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth <= INDEXED_DEPTH {
                        open.push(i);
                    }
                }
                _ => {
                    if depth <= INDEXED_DEPTH {
                        ends.push((open.pop()?, i + 1));
                    }
                    depth = depth.checked_sub(1)?;
                }
            }
            i += 1;
        }
        ends.sort_unstable();
        Some(Scan { json, ends })
    }

    /// The range of the single JSON value of the payload (whitespace around it allowed).
    fn span(&self) -> Option<Range<usize>> {
        let start = skip_ws(self.json, 0);
        let end = self.value_end(start)?;
        (skip_ws(self.json, end) == self.json.len()).then_some(start..end)
    }

    /// Where the value starting at `start` ends (one past its last byte).
    fn value_end(&self, start: usize) -> Option<usize> {
        match self.ends.binary_search_by_key(&start, |(open, _)| *open) {
            Ok(found) => Some(self.ends[found].1),
            Err(_) => value_end(self.json, start),
        }
    }

    /// The per-record arrays of a body; `None` if it has any other field, or one of them is
    /// neither an array nor null. A repeated key keeps its last value, as a parse does.
    fn record_body(&self, at: Range<usize>) -> Option<Body<'a>> {
        let mut fields: [Option<Vec<&[u8]>>; 5] = Default::default();
        for (key, value) in self.object_fields(at)? {
            let slot = FIELDS.iter().position(|f| f.as_bytes() == key)?;
            fields[slot] = match self.json.get(value.start)? {
                b'n' => None,
                b'[' => Some(self.array_items(value)?),
                _ => return None,
            };
        }
        let count = fields[0].as_ref()?.len();
        // Every array as long as the ids.
        if fields.iter().flatten().any(|items| items.len() != count) {
            return None;
        }
        Some(Body { fields })
    }

    /// The keys (raw, unescaped only) and value ranges of the object at `at`.
    fn object_fields(&self, at: Range<usize>) -> Option<Vec<(&'a [u8], Range<usize>)>> {
        let json = self.json;
        let mut out = Vec::new();
        members(json, at, b'{', b'}', |i| {
            if json.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = string_end(json, i)?;
            let key = json.get(i + 1..key_end - 1)?;
            if key.contains(&b'\\') {
                return None;
            }
            let colon = skip_ws(json, key_end);
            if json.get(colon) != Some(&b':') {
                return None;
            }
            let start = skip_ws(json, colon + 1);
            let end = self.value_end(start)?;
            out.push((key, start..end));
            Some(end)
        })?;
        Some(out)
    }

    /// The items of the array at `at`, as their bytes.
    fn array_items(&self, at: Range<usize>) -> Option<Vec<&'a [u8]>> {
        let mut ranges = Vec::new();
        members(self.json, at, b'[', b']', |i| {
            let end = self.value_end(i)?;
            ranges.push(i..end);
            Some(end)
        })?;
        Some(ranges.into_iter().map(|r| &self.json[r]).collect())
    }
}

/// Walks the comma-separated members of the object or array at `at`; `member` reads one
/// starting at its first byte and returns where it ends.
fn members(
    json: &[u8],
    at: Range<usize>,
    open: u8,
    close: u8,
    mut member: impl FnMut(usize) -> Option<usize>,
) -> Option<()> {
    if json.get(at.start) != Some(&open) || at.end == 0 || json.get(at.end - 1) != Some(&close) {
        return None;
    }
    let mut i = skip_ws(json, at.start + 1);
    if i == at.end - 1 {
        return Some(());
    }
    loop {
        i = skip_ws(json, member(i)?);
        match json.get(i)? {
            b',' => i = skip_ws(json, i + 1),
            _ if i == at.end - 1 => return Some(()),
            _ => return None,
        }
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// Where the value starting at `start` ends (one past its last byte), for a value
/// [`Scan::new`] did not index. The body was checked to be JSON on the write path: this only
/// needs to find the end, tracking strings and nesting.
fn value_end(json: &[u8], start: usize) -> Option<usize> {
    match *json.get(start)? {
        b'"' => string_end(json, start),
        b'{' | b'[' => {
            let (mut depth, mut i) = (0usize, start);
            loop {
                match *json.get(i)? {
                    b'"' => {
                        i = string_end(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return None;
                        }
                    }
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        // A number, true, false or null.
        _ => {
            let scalar = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.');
            let mut i = start;
            while json.get(i).is_some_and(scalar) {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// One past the closing quote of the string starting at `start`.
fn string_end(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match *json.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
#[path = "raw_records_tests.rs"]
mod tests;
