//! Byte layouts of the values in the journal and dead-letter tables.
//!
//! Explicit and little-endian, so the file does not depend on a serialization crate's choices.
//! The first byte is the layout version: a future layout can be read beside this one.
//!
//! Journal entry (the key is the sequence number):
//! `[version=1][target][created_ms: u64][collection_len: u32][collection][payload]`
//!
//! Dead letter (the key is the sequence number it had in the journal):
//! `[version=1][target][created_ms: u64][parked_ms: u64][collection_len: u32][collection]
//! [reason_len: u32][reason][payload]`

use shift_config::BackendName;

use crate::{DeadLetter, Seq, StoreError};

/// The only layout this build writes.
const VERSION: u8 = 1;
/// Where `created_ms` sits in a journal entry: the writer stamps it at commit time into bytes
/// the caller encoded, so the payload is copied once and outside the single writer thread.
const CREATED_MS_AT: usize = 2;
/// Bytes before the collection name in a journal entry.
const ENTRY_HEAD: usize = CREATED_MS_AT + 8 + 4;

/// One byte per backend; zero is never written, so a zeroed value does not decode.
fn target_byte(target: BackendName) -> u8 {
    match target {
        BackendName::Old => 1,
        BackendName::New => 2,
    }
}

fn target_from(byte: u8) -> Option<BackendName> {
    match byte {
        1 => Some(BackendName::Old),
        2 => Some(BackendName::New),
        _ => None,
    }
}

fn len_u32(what: &'static str, len: usize) -> Result<u32, StoreError> {
    u32::try_from(len).map_err(|_| StoreError::TooLarge { what, len })
}

/// Encodes a journal entry with `created_ms` zero; [`stamp_created_ms`] fills it in.
pub(crate) fn encode_entry(
    target: BackendName,
    collection: &str,
    payload: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let collection_len = len_u32("a collection key", collection.len())?;
    let mut out = Vec::with_capacity(ENTRY_HEAD + collection.len() + payload.len());
    out.push(VERSION);
    out.push(target_byte(target));
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&collection_len.to_le_bytes());
    out.extend_from_slice(collection.as_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Writes the commit time into an entry made by [`encode_entry`].
pub(crate) fn stamp_created_ms(entry: &mut [u8], created_ms: u64) {
    if let Some(slot) = entry.get_mut(CREATED_MS_AT..CREATED_MS_AT + 8) {
        slot.copy_from_slice(&created_ms.to_le_bytes());
    }
}

/// A journal entry read in place, borrowing the stored bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EntryView<'a> {
    pub target: BackendName,
    pub created_ms: u64,
    pub collection: &'a str,
    pub payload: &'a [u8],
}

/// Reads a value front to back; every read checks the length, so a short value is an error
/// rather than a panic.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err("value is truncated");
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn str(&mut self) -> Result<&'a str, &'static str> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| "text is not UTF-8")
    }

    fn head(&mut self) -> Result<BackendName, &'static str> {
        if self.u8()? != VERSION {
            return Err("unknown value layout");
        }
        target_from(self.u8()?).ok_or("unknown target backend")
    }
}

/// Decodes a journal entry; the error says what is wrong, the caller adds where.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<EntryView<'_>, &'static str> {
    let mut c = Cursor { rest: bytes };
    let target = c.head()?;
    let created_ms = c.u64()?;
    let collection = c.str()?;
    Ok(EntryView {
        target,
        created_ms,
        collection,
        payload: c.rest,
    })
}

/// Encodes the dead letter of a journal entry. The strings came from a decoded entry and a
/// reason checked by [`check_reason`], so their lengths fit.
pub(crate) fn encode_dead_letter(entry: &EntryView<'_>, parked_ms: u64, reason: &str) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(30 + entry.collection.len() + reason.len() + entry.payload.len());
    out.push(VERSION);
    out.push(target_byte(entry.target));
    out.extend_from_slice(&entry.created_ms.to_le_bytes());
    out.extend_from_slice(&parked_ms.to_le_bytes());
    for text in [entry.collection, reason] {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(entry.payload);
    out
}

/// Refuses a reason the dead-letter layout cannot record, before it reaches the writer.
pub(crate) fn check_reason(reason: &str) -> Result<(), StoreError> {
    len_u32("a dead-letter reason", reason.len()).map(|_| ())
}

/// Decodes a dead letter into its owned form.
pub(crate) fn decode_dead_letter(seq: Seq, bytes: &[u8]) -> Result<DeadLetter, &'static str> {
    let mut c = Cursor { rest: bytes };
    let target = c.head()?;
    let created_ms = c.u64()?;
    let parked_ms = c.u64()?;
    let collection = c.str()?.to_owned();
    let reason = c.str()?.to_owned();
    Ok(DeadLetter {
        seq,
        target,
        collection,
        created_ms,
        parked_ms,
        reason,
        payload: c.rest.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_with_stamped_time() {
        let mut bytes = encode_entry(BackendName::New, "coll-a", b"\x00payload\xff").unwrap();
        stamp_created_ms(&mut bytes, 1_700_000_000_123);
        let view = decode_entry(&bytes).unwrap();
        assert_eq!(
            view,
            EntryView {
                target: BackendName::New,
                created_ms: 1_700_000_000_123,
                collection: "coll-a",
                payload: b"\x00payload\xff",
            }
        );
    }

    #[test]
    fn empty_collection_and_payload_round_trip() {
        let bytes = encode_entry(BackendName::Old, "", b"").unwrap();
        let view = decode_entry(&bytes).unwrap();
        assert_eq!(view.collection, "");
        assert!(view.payload.is_empty());
        assert_eq!(view.target, BackendName::Old);
    }

    #[test]
    fn dead_letter_round_trips() {
        let mut bytes = encode_entry(BackendName::Old, "c", b"body").unwrap();
        stamp_created_ms(&mut bytes, 5);
        let view = decode_entry(&bytes).unwrap();
        let dead = encode_dead_letter(&view, 9, "400: invalid dimension");
        let letter = decode_dead_letter(Seq(42), &dead).unwrap();
        assert_eq!(
            letter,
            DeadLetter {
                seq: Seq(42),
                target: BackendName::Old,
                collection: "c".into(),
                created_ms: 5,
                parked_ms: 9,
                reason: "400: invalid dimension".into(),
                payload: b"body".to_vec(),
            }
        );
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let bytes = encode_entry(BackendName::New, "collection", b"p").unwrap();
        for cut in 0..ENTRY_HEAD + 3 {
            assert!(decode_entry(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 99;
        assert_eq!(decode_entry(&wrong_version), Err("unknown value layout"));
        let mut wrong_target = bytes;
        wrong_target[1] = 0;
        assert_eq!(decode_entry(&wrong_target), Err("unknown target backend"));
        assert!(decode_dead_letter(Seq(1), &[VERSION, 1, 0]).is_err());
    }
}
