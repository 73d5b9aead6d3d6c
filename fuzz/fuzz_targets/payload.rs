//! The payload views on any request or response body: no panic, and what they derive from a
//! record write stays consistent (a split loses no record).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shift_chroma::payload::{
    get_response_ids, record_count, record_ids, retain_records, split_record_body, DeleteSelection,
};

fuzz_target!(|bytes: &[u8]| {
    let _ = record_ids(bytes);
    let _ = get_response_ids(bytes);
    let _ = DeleteSelection::parse(bytes);
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let count = record_count(&body);
    let parts = split_record_body(&body, 3);
    if count > 3 && parts.len() > 1 {
        assert_eq!(parts.iter().map(record_count).sum::<usize>(), count);
    }
    if let Some(kept) = retain_records(&body, |_| true) {
        assert_eq!(record_count(&kept), count);
    }
});
