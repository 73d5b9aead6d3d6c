//! The ids of a record write's body, read without building a parse tree.
//!
//! An add or upsert is mirrored with the body the client sent (see `record_writes.rs`), so
//! the write path needs only its `ids` and the certainty that the journal can read the body
//! back. A `serde_json::Value` of a large add costs one to two times the body's size (floats
//! as 16-byte numbers, every string its own allocation), and even a parse that keeps nothing
//! converts every float (most of an add's bytes). This reads the body once with a byte
//! scanner, keeping nothing but the ids, and accepts exactly what a parse into `Value` accepts:
//! valid UTF-8, JSON's grammar (no leading zeros, no trailing commas, no control characters in
//! strings), valid escapes (no lone surrogates), numbers in range, at most 127 levels of
//! nesting, nothing after the value. Numbers are not converted: one whose magnitude is below
//! 10^300 (its integer digits plus its exponent, read from its text) is in range, and only a
//! number past that bound is handed to serde_json to decide; likewise a string with escapes
//! is decoded by serde_json only where its value is needed (a top-level key, an id). The tests
//! hold the two side by side, on chosen bodies and on random mutations of them.

use std::borrow::Cow;

use serde::de::Error as _;

/// How many containers serde_json lets a value open, one inside the other, before it refuses
/// it ("recursion limit exceeded"): its `remaining_depth` starts at 128 and the container
/// that brings it to 0 is refused.
const MAX_DEPTH: usize = 127;

/// A number whose integer digits plus exponent stay within this is finite as an f64 (whose
/// largest value is about 1.8e308) however serde_json rounds it; past it, serde_json decides.
const SURELY_FINITE_MAGNITUDE: i64 = 300;

/// What a byte is to the scan of a string's inside.
const STRING_PLAIN: u8 = 0;
const STRING_STOP: u8 = 1;

/// The bytes that end a run of plain string bytes: the closing quote, an escape, a control
/// character (which a string may not hold).
static STRING_CLASS: [u8; 256] = {
    let mut table = [STRING_PLAIN; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = STRING_STOP;
        byte += 1;
    }
    table[b'"' as usize] = STRING_STOP;
    table[b'\\' as usize] = STRING_STOP;
    table
};

/// The strings of the top-level `ids` array (the last one, if the key repeats; none when the
/// body is no object or `ids` no array), as [`crate::mirror::ids_of`] reads them from a parse
/// tree; or why the body is not JSON the proxy can read.
pub fn record_ids(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    // A `Value` parse checks UTF-8 only inside strings, where any byte above 0x7f must be
    // (outside them such a byte is a syntax error either way): checking the whole body at
    // once is the same check, and lets the scan below see bytes only.
    let text = std::str::from_utf8(body).map_err(|e| {
        serde_json::Error::custom(format!(
            "invalid UTF-8 at byte {} of the body",
            e.valid_up_to()
        ))
    })?;
    let mut scan = Scan { text, pos: 0 };
    scan.whitespace();
    let ids = if scan.peek() == Some(b'{') {
        scan.top_object()?
    } else {
        scan.value(0)?;
        Vec::new()
    };
    scan.whitespace();
    if scan.pos != body.len() {
        return Err(scan.error("trailing characters"));
    }
    Ok(ids)
}

/// A position in the body, which is valid UTF-8.
struct Scan<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    #[cold]
    #[inline(never)]
    fn error(&self, what: &str) -> serde_json::Error {
        serde_json::Error::custom(format!("{what} at byte {} of the body", self.pos))
    }

    /// Skips what serde_json takes for whitespace.
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `byte`, after whitespace, or refuses the body.
    fn expect(&mut self, byte: u8, what: &str) -> Result<(), serde_json::Error> {
        self.whitespace();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    /// Enters the container at the position (`{` or `[`), `depth` containers deep already.
    fn enter(&mut self, depth: usize) -> Result<usize, serde_json::Error> {
        if depth + 1 > MAX_DEPTH {
            return Err(self.error("recursion limit exceeded"));
        }
        self.pos += 1;
        Ok(depth + 1)
    }

    /// The top-level object: checked, and the value of its last `ids` key read.
    fn top_object(&mut self) -> Result<Vec<String>, serde_json::Error> {
        let depth = self.enter(0)?;
        let mut ids = Vec::new();
        self.items(b'}', |scan| {
            let key = scan.key()?;
            let is_ids = scan.decoded(key)? == "ids";
            scan.expect(b':', "expected `:`")?;
            scan.whitespace();
            if is_ids {
                ids = scan.ids(depth)?;
            } else {
                scan.value(depth)?;
            }
            Ok(())
        })?;
        Ok(ids)
    }

    /// The value of `ids` at the position: its strings when it is an array.
    fn ids(&mut self, depth: usize) -> Result<Vec<String>, serde_json::Error> {
        if self.peek() != Some(b'[') {
            self.value(depth)?;
            return Ok(Vec::new());
        }
        let depth = self.enter(depth)?;
        let mut ids = Vec::new();
        self.items(b']', |scan| {
            if scan.peek() == Some(b'"') {
                let id = scan.string()?;
                ids.push(scan.decoded(id)?.into_owned());
                Ok(())
            } else {
                scan.value(depth)
            }
        })?;
        Ok(ids)
    }

    /// Checks the value at the position, inside `depth` containers. Inlined into the loops
    /// of arrays and objects, so that a number (most of an add) costs no call of its own.
    #[inline(always)]
    fn value(&mut self, depth: usize) -> Result<(), serde_json::Error> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => self.array(depth),
            Some(b'{') => self.object(depth),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(_) => Err(self.error("expected value")),
            None => Err(self.error("EOF while parsing a value")),
        }
    }

    /// The array at the position, inside `depth` containers.
    #[inline(never)]
    fn array(&mut self, depth: usize) -> Result<(), serde_json::Error> {
        let depth = self.enter(depth)?;
        self.items(b']', |scan| scan.value(depth))
    }

    /// The object at the position, inside `depth` containers.
    #[inline(never)]
    fn object(&mut self, depth: usize) -> Result<(), serde_json::Error> {
        let depth = self.enter(depth)?;
        self.items(b'}', |scan| {
            scan.key()?;
            scan.expect(b':', "expected `:`")?;
            scan.whitespace();
            scan.value(depth)
        })
    }

    /// The items of an array or object whose opening bracket was consumed, each read by
    /// `item` at its first byte, up to and including the `close` bracket.
    #[inline(always)]
    fn items(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), serde_json::Error>,
    ) -> Result<(), serde_json::Error> {
        self.whitespace();
        if self.peek() == Some(close) {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.whitespace();
            item(self)?;
            self.whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(byte) if byte == close => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or the closing bracket")),
            }
        }
    }

    /// The key of an object's member at the position, checked and consumed.
    fn key(&mut self) -> Result<Quoted, serde_json::Error> {
        if self.peek() != Some(b'"') {
            return Err(self.error("key must be a string"));
        }
        self.string()
    }

    fn literal(&mut self, word: &str) -> Result<(), serde_json::Error> {
        if self.bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected value"))
        }
    }

    /// The string at the position (its opening quote), checked and consumed.
    fn string(&mut self) -> Result<Quoted, serde_json::Error> {
        let bytes = self.bytes();
        let start = self.pos + 1;
        let mut pos = start;
        let mut escaped = false;
        loop {
            while let Some(&byte) = bytes.get(pos) {
                if STRING_CLASS[byte as usize] != STRING_PLAIN {
                    break;
                }
                pos += 1;
            }
            match bytes.get(pos) {
                Some(b'"') => {
                    self.pos = pos + 1;
                    return Ok(Quoted {
                        start,
                        end: pos,
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.pos = pos + 1;
                    self.escape()?;
                    pos = self.pos;
                }
                Some(_) => {
                    self.pos = pos;
                    return Err(self.error("control character (\\u0000-\\u001F) in a string"));
                }
                None => {
                    self.pos = pos;
                    return Err(self.error("EOF while parsing a string"));
                }
            }
        }
    }

    /// The escape after a backslash, checked as serde_json checks it when it decodes a string:
    /// a `\u` escape of a surrogate must be a leading one followed by a trailing one.
    fn escape(&mut self) -> Result<(), serde_json::Error> {
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                self.pos += 1;
                let unit = self.hex4()?;
                if (0xDC00..=0xDFFF).contains(&unit) {
                    return Err(self.error("lone surrogate in hex escape"));
                }
                if (0xD800..=0xDBFF).contains(&unit) {
                    if !self.bytes()[self.pos..].starts_with(b"\\u") {
                        return Err(self.error("unexpected end of hex escape"));
                    }
                    self.pos += 2;
                    if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                        return Err(self.error("lone surrogate in hex escape"));
                    }
                }
                Ok(())
            }
            _ => Err(self.error("invalid escape")),
        }
    }

    /// The four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Result<u32, serde_json::Error> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|byte| (byte as char).to_digit(16))
                .ok_or_else(|| self.error("invalid hex escape"))?;
            unit = unit * 16 + digit;
            self.pos += 1;
        }
        Ok(unit)
    }

    /// A string's value: its text, or decoded by serde_json when it holds escapes.
    fn decoded(&self, quoted: Quoted) -> Result<Cow<'a, str>, serde_json::Error> {
        if quoted.escaped {
            serde_json::from_str(&self.text[quoted.start - 1..quoted.end + 1]).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(&self.text[quoted.start..quoted.end]))
        }
    }

    /// The number at the position (`-` or a digit), checked against JSON's grammar without
    /// converting it; only one past [`SURELY_FINITE_MAGNITUDE`] is converted, by serde_json,
    /// which refuses it if it is out of an f64's range.
    #[inline(always)]
    fn number(&mut self) -> Result<(), serde_json::Error> {
        let bytes = self.bytes();
        let start = self.pos;
        let mut pos = start;
        let digits = |pos: &mut usize| {
            let from = *pos;
            *pos = skip_digits(bytes, from);
            *pos - from
        };
        if bytes[pos] == b'-' {
            pos += 1;
        }
        let integer_digits = match bytes.get(pos) {
            Some(b'0') => {
                pos += 1;
                if let Some(b'0'..=b'9') = bytes.get(pos) {
                    self.pos = pos;
                    return Err(self.error("invalid number (a leading zero)"));
                }
                1
            }
            Some(b'1'..=b'9') => digits(&mut pos),
            _ => {
                self.pos = pos;
                return Err(self.error("invalid number"));
            }
        };
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.error("invalid number (no digit after the point)"));
            }
        }
        let mut exponent: i64 = 0;
        if let Some(b'e' | b'E') = bytes.get(pos) {
            pos += 1;
            let negative = match bytes.get(pos) {
                Some(b'-') => {
                    pos += 1;
                    true
                }
                Some(b'+') => {
                    pos += 1;
                    false
                }
                _ => false,
            };
            let from = pos;
            while let Some(&digit @ b'0'..=b'9') = bytes.get(pos) {
                // Saturated: far past any bound that matters, and no overflow.
                exponent = (exponent * 10 + i64::from(digit - b'0')).min(1 << 32);
                pos += 1;
            }
            if pos == from {
                self.pos = pos;
                return Err(self.error("invalid number (no digit in the exponent)"));
            }
            if negative {
                exponent = -exponent;
            }
        }
        self.pos = pos;
        if integer_digits as i64 + exponent > SURELY_FINITE_MAGNITUDE {
            serde_json::from_str::<serde_json::Value>(&self.text[start..pos])
                .map_err(|e| self.error(&format!("number {e}")))?;
        }
        Ok(())
    }
}

/// The position of the first byte at or after `pos` that is not an ASCII digit (or the end).
/// Eight bytes at a time: a byte `b` is a digit when `t = b ^ 0x30` is at most 9, and
/// `(t + 0x76) | t` has its high bit set exactly when it is not. An addition may carry into
/// the next byte only from a byte that is not a digit, so the lowest flagged byte is the
/// first that is not.
#[inline(always)]
fn skip_digits(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(chunk) = bytes.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let t = word ^ 0x3030_3030_3030_3030;
        let not_digits = (t.wrapping_add(0x7676_7676_7676_7676) | t) & 0x8080_8080_8080_8080;
        if not_digits != 0 {
            return pos + (not_digits.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while let Some(b'0'..=b'9') = bytes.get(pos) {
        pos += 1;
    }
    pos
}

/// Where a string's inside is in the body, and whether it holds escapes.
#[derive(Clone, Copy)]
struct Quoted {
    start: usize,
    end: usize,
    escaped: bool,
}

#[cfg(test)]
#[path = "body_ids_tests.rs"]
mod tests;
