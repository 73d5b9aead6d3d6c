//! `record_ids` side by side with a parse into `serde_json::Value`: on chosen bodies, at the
//! bounds (nesting, number range, surrogates), and on random mutations of add bodies.

use serde_json::Value;

use super::*;
use crate::mirror::ids_of;

/// What the write path read before: a parse tree, then its ids.
fn through_a_tree(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    serde_json::from_slice::<Value>(body).map(|value| ids_of(&value))
}

/// Whether `record_ids` reads `body` as the tree does: the same ids, or both refuse it.
/// Returns whether the tree refused it.
fn agrees(body: &[u8]) -> bool {
    let shown = String::from_utf8_lossy(body);
    match (record_ids(body), through_a_tree(body)) {
        (Ok(ids), Ok(expected)) => {
            assert_eq!(ids, expected, "{shown}");
            false
        }
        (Err(_), Err(_)) => true,
        (ours, tree) => panic!("{shown}: {ours:?} but a parse tree gives {tree:?}"),
    }
}

fn nested(levels: usize) -> Vec<u8> {
    format!(
        "{{\"ids\":[\"a\"],\"x\":{}{}}}",
        "[".repeat(levels),
        "]".repeat(levels)
    )
    .into_bytes()
}

#[test]
fn reads_the_ids_a_parse_tree_has_and_refuses_what_it_refuses() {
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"ids": ["a", "b"], "embeddings": [[1.5, -2e3], "AACAPw=="]}"#.to_vec(),
        br#" {"ids": ["a"], "ids": ["b", 7, null, {"c": 1}, ["d"], "e"]} "#.to_vec(),
        br#"{"ids": "a", "metadatas": [{"k": "\u00e9\ud83d\ude00"}]}"#.to_vec(),
        br#"{"ids": {"a": 1}}"#.to_vec(),
        br#"["ids", "a"]"#.to_vec(),
        br#""ids""#.to_vec(),
        br#"null"#.to_vec(),
        br#"{"ids": ["a\u0000b", "\"q\""]}"#.to_vec(),
        nested(100),
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
        nested(130),
    ];
    let refused: Vec<bool> = bodies.iter().map(|body| agrees(body)).collect();
    // The list holds both kinds: 9 bodies read, the 11 after them refused.
    assert_eq!(refused, [[false; 9].as_slice(), &[true; 11]].concat());
}

#[test]
fn agrees_at_the_bounds_of_nesting_numbers_and_escapes() {
    // Nesting: the object and 126 arrays are read, one more is refused.
    assert!(!agrees(&nested(126)));
    assert!(agrees(&nested(127)));
    assert!(!agrees(
        &"[".repeat(127)
            .bytes()
            .chain("]".repeat(127).bytes())
            .collect::<Vec<_>>()
    ));
    assert!(agrees(
        &"[".repeat(128)
            .bytes()
            .chain("]".repeat(128).bytes())
            .collect::<Vec<_>>()
    ));
    let numbers = [
        "0",
        "-0",
        "1",
        "-1",
        "0.5",
        "-0.5e-3",
        "1E5",
        "1e+5",
        "12.50E-0012",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1.8e308",
        "-1.8e308",
        "17976931348623157e292",
        "0.0000000000017976931348623157e320",
        "1e309",
        "1e308",
        "1e-400",
        "0e99999999999999999999",
        "1e99999999999999999999",
        "9e-99999999999",
        "123456789012345678901234567890",
        "18446744073709551616",
        "-9223372036854775809",
        // Refused by the grammar.
        "01",
        "-01",
        "00",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "1.e5",
        "- 1",
        "1.5.5",
        "0x10",
        "Infinity",
        "NaN",
        "1e5e5",
    ];
    let huge = "9".repeat(320);
    let huge_fraction = format!("0.{}e300", "0".repeat(30));
    for number in numbers
        .iter()
        .copied()
        .chain([huge.as_str(), huge_fraction.as_str()])
    {
        agrees(number.as_bytes());
        agrees(format!("{{\"ids\": [\"a\", {number}], \"x\": [{number}]}}").as_bytes());
    }
    let escapes = [
        r#"\""#,
        r#"\\"#,
        r#"\/"#,
        r#"\b\f\n\r\t"#,
        r#"\u0041"#,
        r#"\u00e9"#,
        r#"\uFFFF"#,
        r#"\ud83d\ude00"#,
        r#"\uD83D\uDE00"#,
        r#"\ud83d"#,
        r#"\ud83dx"#,
        r#"\ud83d\n"#,
        r#"\ud83d\u0041"#,
        r#"\ud83d\ud83d\ude00"#,
        r#"\ude00"#,
        r#"\u12"#,
        r#"\u12g4"#,
        r#"\x41"#,
        r#"\"#,
        r#"\U0041"#,
    ];
    for escape in escapes {
        // In a value, in an id (decoded), in a top-level key (which may spell `ids`).
        agrees(format!("{{\"ids\": [\"a\"], \"d\": [\"{escape}\"]}}").as_bytes());
        agrees(format!("{{\"ids\": [\"a{escape}\"]}}").as_bytes());
        agrees(format!("{{\"{escape}\": 1, \"ids\": [\"a\"]}}").as_bytes());
    }
    // A key spelled with escapes is the key it decodes to.
    assert_eq!(record_ids(br#"{"i\u0064s": ["a\n"]}"#).unwrap(), ["a\n"]);
    for literal in [
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "nulll",
        "True",
        "[true,false]",
    ] {
        agrees(literal.as_bytes());
        agrees(format!("{{\"ids\": [{literal}, \"b\"]}}").as_bytes());
    }
    for control in 0u8..0x20 {
        agrees(&[b'"', b'a', control, b'"']);
        agrees(&[b'[', control, b'1', b']']);
    }
}

/// An add body as clients send one, with every kind of value.
fn an_add_body(rng: &mut fastrand::Rng) -> String {
    let records = rng.usize(1..4);
    let ids: Vec<String> = (0..records).map(|i| format!("\"id-{i}\"")).collect();
    let embeddings: Vec<String> = (0..records)
        .map(|_| {
            let floats: Vec<String> = (0..4)
                .map(|_| format!("{}", (rng.f64() - 0.5) * 10f64.powi(rng.i32(-8..8))))
                .collect();
            format!("[{}]", floats.join(", "))
        })
        .collect();
    let documents: Vec<String> = (0..records)
        .map(|i| format!("\"doc {i}\\n\\u00e9 \\ud83d\\ude00\""))
        .collect();
    let metadatas: Vec<String> = (0..records)
        .map(|i| format!("{{\"n\": {i}, \"f\": -0.5e-3, \"b\": true, \"z\": null}}"))
        .collect();
    format!(
        "{{\"ids\": [{}], \"embeddings\": [{}], \"documents\": [{}], \"metadatas\": [{}]}}",
        ids.join(","),
        embeddings.join(","),
        documents.join(","),
        metadatas.join(",")
    )
}

#[test]
fn agrees_on_random_mutations_of_add_bodies() {
    // The bytes a mutation inserts or puts in place: JSON's punctuation, the starts of
    // escapes and numbers, and a few that are never valid.
    const ALPHABET: &[u8] = b"{}[],:\" \\\n\t0123456789-+.eEu\x00\x1fatrn/bfxd\xc3\xa9\xff";
    let mut rng = fastrand::Rng::with_seed(12);
    let (mut read, mut refused) = (0, 0);
    for _ in 0..3_000 {
        let mut body = an_add_body(&mut rng).into_bytes();
        for _ in 0..rng.usize(0..4) {
            let at = rng.usize(..body.len());
            let byte = ALPHABET[rng.usize(..ALPHABET.len())];
            match rng.u8(..3) {
                0 => body[at] = byte,
                1 => body.insert(at, byte),
                _ => {
                    body.remove(at);
                }
            }
        }
        if agrees(&body) {
            refused += 1;
        } else {
            read += 1;
        }
    }
    // Both kinds were seen plenty.
    assert!(
        read > 500 && refused > 500,
        "read {read}, refused {refused}"
    );
}

#[test]
fn skips_digits_eight_at_a_time_as_one_at_a_time() {
    let mut rng = fastrand::Rng::with_seed(8);
    for _ in 0..20_000 {
        let bytes: Vec<u8> = (0..rng.usize(0..24))
            .map(|_| match rng.u8(..4) {
                0 => rng.u8(..),
                _ => rng.u8(b'0'..=b'9'),
            })
            .collect();
        let pos = rng.usize(0..=bytes.len());
        let expected = pos
            + bytes[pos..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
        assert_eq!(skip_digits(&bytes, pos), expected, "{bytes:?} from {pos}");
    }
}
