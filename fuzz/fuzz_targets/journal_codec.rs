//! The journal and dead-letter decoders on any stored bytes (a torn page, a bit flip): an
//! error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    shift_state::fuzzing::decode_values(bytes);
});
