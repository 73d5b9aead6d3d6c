//! The ids of a record write's body, read without building a parse tree.
//!
//! An add or upsert is mirrored with the body the client sent (see `record_writes.rs`), so
//! the write path needs only its `ids` and the certainty that the journal can read the body
//! back. A `serde_json::Value` of a large add costs one to two times the body's size (floats
//! as 16-byte numbers, every string its own allocation); this reads the body once, keeping
//! nothing but the ids, and accepts exactly what a parse into `Value` accepts: valid UTF-8,
//! valid escapes (no lone surrogates), numbers in range, at most 128 levels of nesting, nothing
//! after the value. The test below holds the two side by side.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Each visitor here is also its own seed: it reads any JSON value.
macro_rules! seed_of_visitor {
    ($visitor:ident) => {
        impl<'de> DeserializeSeed<'de> for $visitor {
            type Value = <$visitor as Visitor<'de>>::Value;

            fn deserialize<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Self::Value, D::Error> {
                deserializer.deserialize_any(self)
            }
        }
    };
}

/// The visitor methods of the scalars other than strings, each answering `$value`.
macro_rules! scalars {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// The strings of the top-level `ids` array (the last one, if the key repeats; none when the
/// body is no object or `ids` no array), as [`crate::mirror::ids_of`] reads them from a parse
/// tree; or why the body is not JSON the proxy can read.
pub fn record_ids(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    // A `Value` parse checks UTF-8 only inside strings, where any byte above 0x7f must be;
    // checking the whole body is the same check, and lets the parse borrow every string.
    let text = std::str::from_utf8(body).map_err(|e| {
        de::Error::custom(format!(
            "invalid UTF-8 at byte {} of the body",
            e.valid_up_to()
        ))
    })?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let ids = deserializer.deserialize_any(TopLevel)?;
    deserializer.end()?;
    Ok(ids)
}

/// The body: an object whose `ids` are kept, or anything else (checked, no ids).
struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
        let mut ids = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if key {
                ids = map.next_value_seed(Ids)?;
            } else {
                map.next_value_seed(Checked)?;
            }
        }
        Ok(ids)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<String>, A::Error> {
        Checked.visit_seq(seq).map(|()| Vec::new())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }

    scalars!(Vec::new());
}

/// A key of the top-level object: whether it is `ids`.
struct Key;

seed_of_visitor!(Key);

impl<'de> Visitor<'de> for Key {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "ids")
    }
}

/// The value of `ids`: its strings when it is an array.
struct Ids;

seed_of_visitor!(Ids);

impl<'de> Visitor<'de> for Ids {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut ids = Vec::new();
        while let Some(id) = seq.next_element_seed(Id)? {
            ids.extend(id);
        }
        Ok(ids)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<String>, A::Error> {
        Checked.visit_map(map).map(|()| Vec::new())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Vec<String>, E> {
        Ok(Vec::new())
    }

    scalars!(Vec::new());
}

/// One element of `ids`: a string, or anything else (checked, skipped).
struct Id;

seed_of_visitor!(Id);

impl<'de> Visitor<'de> for Id {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Checked.visit_seq(seq).map(|()| None)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Checked.visit_map(map).map(|()| None)
    }

    fn visit_str<E: de::Error>(self, id: &str) -> Result<Self::Value, E> {
        Ok(Some(id.to_owned()))
    }

    scalars!(None);
}

/// Any value, read through (strings decoded, so escapes are checked) and kept nowhere.
struct Checked;

seed_of_visitor!(Checked);

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Checked)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Checked)?.is_some() {
            map.next_value_seed(Checked)?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    scalars!(());
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::mirror::ids_of;

    /// What the write path read before: a parse tree, then its ids.
    fn through_a_tree(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
        serde_json::from_slice::<Value>(body).map(|value| ids_of(&value))
    }

    #[test]
    fn reads_the_ids_a_parse_tree_has_and_refuses_what_it_refuses() {
        let deep = format!(
            "{{\"ids\":[\"a\"],\"x\":{}{}}}",
            "[".repeat(130),
            "]".repeat(130)
        );
        let fine = format!(
            "{{\"ids\":[\"a\"],\"x\":{}{}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        let bodies: Vec<Vec<u8>> = vec![
            br#"{"ids": ["a", "b"], "embeddings": [[1.5, -2e3], "AACAPw=="]}"#.to_vec(),
            br#" {"ids": ["a"], "ids": ["b", 7, null, {"c": 1}, ["d"], "e"]} "#.to_vec(),
            br#"{"ids": "a", "metadatas": [{"k": "\u00e9\ud83d\ude00"}]}"#.to_vec(),
            br#"{"ids": {"a": 1}}"#.to_vec(),
            br#"["ids", "a"]"#.to_vec(),
            br#""ids""#.to_vec(),
            br#"null"#.to_vec(),
            br#"{"ids": ["a\u0000b", "\"q\""]}"#.to_vec(),
            // What a parse tree refuses.
            br#"{"ids": ["a"], "documents": ["\ud800"]}"#.to_vec(),
            br#"{"ids": ["a"], "documents": ["\ude00x"]}"#.to_vec(),
            b"{\"ids\": [\"a\"], \"documents\": [\"\xff\xfe\"]}".to_vec(),
            br#"{"ids": ["a"], "x": 1e400}"#.to_vec(),
            br#"{"ids": ["a"]} trailing"#.to_vec(),
            br#"{"ids": ["a"],}"#.to_vec(),
            br#"{"ids": ["a"], "x": "\q"}"#.to_vec(),
            br#"{"ids": ["a"], "x": "tab	inside"}"#.to_vec(),
            br#"{"ids": ["a"]"#.to_vec(),
            b"".to_vec(),
            deep.into_bytes(),
            fine.into_bytes(),
        ];
        for body in &bodies {
            let shown = String::from_utf8_lossy(body);
            match (record_ids(body), through_a_tree(body)) {
                (Ok(ids), Ok(expected)) => assert_eq!(ids, expected, "{shown}"),
                (Err(_), Err(_)) => {}
                (ours, tree) => panic!("{shown}: {ours:?} but a parse tree gives {tree:?}"),
            }
        }
        // The list holds both kinds: 9 bodies read, the 11 after them refused.
        let refused: Vec<bool> = bodies.iter().map(|b| through_a_tree(b).is_err()).collect();
        assert_eq!(refused.iter().filter(|r| **r).count(), 11, "{refused:?}");
    }
}
