//! Property tests of the journal and dead-letter byte layouts: every value round-trips, and no
//! byte string (a torn page, a bit flip, a foreign file) makes a decoder panic. They run on
//! stable Rust for a bounded number of cases (`PROPTEST_CASES`, 256 by default); the
//! `journal_codec` cargo-fuzz target in `fuzz/` drives the same decoders without a bound.

use proptest::prelude::*;
use shift_config::BackendName;

use crate::codec::{
    decode_dead_letter, decode_entry, encode_dead_letter, encode_entry, stamp_created_ms, EntryView,
};
use crate::Seq;

fn target() -> impl Strategy<Value = BackendName> {
    prop_oneof![Just(BackendName::Old), Just(BackendName::New)]
}

proptest! {
    #[test]
    fn entries_round_trip(
        target in target(),
        collection in "\\PC{0,40}",
        payload in prop::collection::vec(any::<u8>(), 0..512),
        created_ms in any::<u64>(),
    ) {
        let mut bytes = encode_entry(target, &collection, &payload).unwrap();
        stamp_created_ms(&mut bytes, created_ms);
        let view = decode_entry(&bytes).unwrap();
        prop_assert_eq!(view, EntryView { target, created_ms, collection: &collection, payload: &payload });
    }

    #[test]
    fn dead_letters_round_trip(
        target in target(),
        collection in "\\PC{0,40}",
        reason in "\\PC{0,80}",
        payload in prop::collection::vec(any::<u8>(), 0..512),
        created_ms in any::<u64>(),
        parked_ms in any::<u64>(),
        seq in any::<u64>(),
    ) {
        let entry = EntryView { target, created_ms, collection: &collection, payload: &payload };
        let bytes = encode_dead_letter(&entry, parked_ms, &reason);
        let letter = decode_dead_letter(Seq(seq), &bytes).unwrap();
        prop_assert_eq!(letter.seq, Seq(seq));
        prop_assert_eq!(letter.target, target);
        prop_assert_eq!(letter.collection, collection);
        prop_assert_eq!(letter.created_ms, created_ms);
        prop_assert_eq!(letter.parked_ms, parked_ms);
        prop_assert_eq!(letter.reason, reason);
        prop_assert_eq!(letter.payload, payload);
    }

    /// Arbitrary bytes decode to an error or a value, never a panic.
    #[test]
    fn any_bytes_decode_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode_entry(&bytes);
        let _ = decode_dead_letter(Seq(0), &bytes);
    }

    /// A value cut short before its payload is refused, not misread: the collection name and
    /// the reason carry their lengths, so a torn value cannot pass for a shorter one.
    #[test]
    fn truncated_heads_are_refused(
        collection in "\\PC{0,20}",
        reason in "\\PC{0,20}",
        cut in any::<prop::sample::Index>(),
    ) {
        let entry = encode_entry(BackendName::New, &collection, b"").unwrap();
        prop_assert!(decode_entry(&entry[..cut.index(entry.len())]).is_err());
        let view = decode_entry(&entry).unwrap();
        let letter = encode_dead_letter(&view, 7, &reason);
        prop_assert!(decode_dead_letter(Seq(1), &letter[..cut.index(letter.len())]).is_err());
    }

    /// One flipped bit in the head (version, target, or a length) is refused or read as
    /// another well-formed value; it never panics.
    #[test]
    fn flipped_bits_never_panic(
        collection in "[a-z]{0,12}",
        payload in prop::collection::vec(any::<u8>(), 0..32),
        bit in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_entry(BackendName::Old, &collection, &payload).unwrap();
        let at = bit.index(bytes.len() * 8);
        bytes[at / 8] ^= 1 << (at % 8);
        if at < 8 * 2 {
            // The version and target bytes admit no other value.
            prop_assert!(decode_entry(&bytes).is_err());
        } else {
            let _ = decode_entry(&bytes);
        }
    }
}
