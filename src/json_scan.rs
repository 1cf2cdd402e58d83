//! A JSON reader for the common case, faster than serde_json's generic deserializer where every
//! value goes through a visitor: the admission review's envelope and its pruned object
//! (`crate::admission::review`, `crate::prune`) read with it first. Pure.
//!
//! It reads a subset of what serde_json reads, and reads it the same way. What it is not sure
//! of, it gives up on (`None`), and the caller reads the whole text again with serde_json, whose
//! answer (a value or an error message) is then the one given. It gives up on:
//! * anything serde_json refuses (so serde_json's error is the one a person reads);
//! * a `\u` escape of a UTF-16 surrogate that is not half of a pair, in a string that is read;
//! * in a value that is read (not skipped), a number with an exponent or with more than
//!   [`MAX_INTEGER_DIGITS`] digits before its point (serde_json can find those out of range);
//! * nesting deeper than [`MAX_DEPTH`] (below serde_json's own limit of 128, so a text it reads
//!   is never one serde_json would refuse for its depth; this also bounds the reader's stack).
//!
//! Strings read with [`Scanner::string`] are checked as serde_json checks strings it reads;
//! skipped ones ([`Scanner::skip`]) as it checks values it ignores (a `\u` escape needs only its
//! four hex digits). `tests/json_props.rs` holds the two readers together on generated and
//! damaged texts.

use std::borrow::Cow;

use crate::json_str::plain_prefix;

/// Deepest nesting of maps and lists read (serde_json refuses past 128).
pub const MAX_DEPTH: usize = 100;

/// Most digits before the point of a number in a value that is read: far below the 309 at which
/// serde_json's reading can overflow a float.
pub const MAX_INTEGER_DIGITS: usize = 300;

/// A position in a JSON text.
pub struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

/// Where the run of plain string bytes of `b` from `from` ends: at a quote, a backslash or a
/// control character (eight bytes at a time, [`plain_prefix`]).
#[inline]
fn plain_run(b: &[u8], from: usize) -> usize {
    from + b.get(from..).map_or(0, plain_prefix)
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Self {
        Scanner {
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte after whitespace, not taken.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(&c) = b.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(c);
            }
            self.pos += 1;
        }
        None
    }

    /// True when nothing but whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    /// Takes `null`: true, or false (nothing taken) when the next value is something else.
    pub fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        (self.bytes().get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A `true` or `false`.
    pub fn bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
            _ => None,
        }
    }

    /// Reads a map: `value` is called with each key (read as [`Scanner::string`] reads, its
    /// colon taken) to read that key's value.
    pub fn map(
        &mut self,
        mut value: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>,
    ) -> Option<()> {
        self.items(b'{', b'}', |s| {
            let key = s.string()?;
            s.eat(b':')?;
            value(s, key)
        })
    }

    /// Reads a list: `element` is called to read each element.
    pub fn list(&mut self, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.items(b'[', b']', element)
    }

    /// The items of a map or a list between `open` and `close`, separated by commas, each read
    /// by `item`; no deeper than [`MAX_DEPTH`].
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.eat(open)?;
        self.depth += 1;
        let mut first = true;
        loop {
            let c = self.peek()?;
            if c == close {
                self.pos += 1;
                self.depth -= 1;
                return Some(());
            }
            if !std::mem::take(&mut first) {
                if c != b',' {
                    return None;
                }
                self.pos += 1;
            }
            item(self)?;
        }
    }

    /// A string, read as serde_json reads one: borrowed from the text unless it has escapes.
    #[inline]
    pub fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.pos;
        let end = plain_run(self.bytes(), start);
        if *self.bytes().get(end)? == b'"' {
            self.pos = end + 1;
            return self.text.get(start..end).map(Cow::Borrowed);
        }
        self.escaped(start, end)
    }

    /// The rest of a string from `start` that has an escape (or a control character) at `end`.
    #[inline(never)]
    fn escaped(&mut self, start: usize, end: usize) -> Option<Cow<'a, str>> {
        let mut out = String::with_capacity(end - start + 8);
        out.push_str(self.text.get(start..end)?);
        self.pos = end;
        loop {
            match *self.bytes().get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    self.pos += 1;
                    out.push(self.escape()?);
                }
                // A control character.
                c if c < 0x20 => return None,
                _ => {
                    let end = plain_run(self.bytes(), self.pos);
                    out.push_str(self.text.get(self.pos..end)?);
                    self.pos = end;
                }
            }
        }
    }

    /// The character an escape (after its backslash) stands for.
    fn escape(&mut self) -> Option<char> {
        let c = *self.bytes().get(self.pos)?;
        self.pos += 1;
        Some(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = self.hex4()?;
                match n {
                    0xD800..=0xDBFF => {
                        self.literal(b"\\u")?;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        char::from_u32(0x10000 + ((n - 0xD800) << 10) + (low - 0xDC00))?
                    }
                    0xDC00..=0xDFFF => return None,
                    n => char::from_u32(n)?,
                }
            }
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let end = self.pos.checked_add(4)?;
        let digits = self.bytes().get(self.pos..end)?;
        let mut n = 0u32;
        for &d in digits {
            n = n * 16 + char::from(d).to_digit(16)?;
        }
        self.pos = end;
        Some(n)
    }

    /// Skips a string as serde_json skips one it ignores.
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.pos = plain_run(self.bytes(), self.pos);
            match *self.bytes().get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(());
                }
                b'\\' => {
                    let c = *self.bytes().get(self.pos + 1)?;
                    self.pos += 2;
                    match c {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            self.hex4()?;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    /// A number; `read` when its value is read (not skipped), see the module docs.
    pub fn number(&mut self, read: bool) -> Option<()> {
        self.peek()?;
        let b = self.bytes();
        if b.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let digits = |pos: &mut usize| {
            let from = *pos;
            while b.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos - from
        };
        match b.get(self.pos)? {
            b'0' => {
                self.pos += 1;
                if b.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                if digits(&mut self.pos) > MAX_INTEGER_DIGITS && read {
                    return None;
                }
            }
            _ => return None,
        }
        if b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if digits(&mut self.pos) == 0 {
                return None;
            }
        }
        if matches!(b.get(self.pos), Some(b'e' | b'E')) {
            if read {
                return None;
            }
            self.pos += 1;
            if matches!(b.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(&mut self.pos) == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Skips a value as serde_json skips one it ignores.
    pub fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            // Keys of a skipped map are skipped too (serde_json does not decode them).
            b'{' => self.items(b'{', b'}', |s| {
                s.skip_string()?;
                s.eat(b':')?;
                s.skip()
            }),
            b'[' => self.list(Self::skip),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(text: &str) -> Option<Cow<'_, str>> {
        let mut s = Scanner::new(text);
        let v = s.string()?;
        s.at_end().then_some(v)
    }

    fn skipped(text: &str) -> bool {
        let mut s = Scanner::new(text);
        s.skip().is_some() && s.at_end()
    }

    #[test]
    fn runs_of_plain_bytes_end_where_byte_by_byte_they_end() {
        // Every byte at every place of a run longer than a word, among plain ASCII and UTF-8
        // bytes: the word-at-a-time search stops where the byte-by-byte one does.
        let naive = |b: &[u8], from: usize| {
            (from..b.len())
                .find(|&i| b[i] < 0x20 || b[i] == b'"' || b[i] == b'\\')
                .unwrap_or(b.len())
        };
        for filler in [b'a', 0xC3, 0x7F, 0x80, 0xFF, 0x21, 0x5D] {
            for len in 0..20 {
                for at in 0..len {
                    for c in 0..=255u8 {
                        let mut b = vec![filler; len];
                        b[at] = c;
                        for from in [0, 1, 3].into_iter().filter(|&f| f <= len) {
                            assert_eq!(plain_run(&b, from), naive(&b, from), "{b:?} from {from}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed_and_escapes_are_decoded() {
        assert!(matches!(
            string(r#""nginx:1""#),
            Some(Cow::Borrowed("nginx:1"))
        ));
        let decoded = string(r#""a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\ud83d\ude00""#);
        assert_eq!(
            decoded.as_deref(),
            Some("a\"b\\c/d\u{8}\u{c}\n\r\tA\u{e9}\u{1F600}")
        );
        assert_eq!(string(r#""caf√©""#).as_deref(), Some("caf√©"));
    }

    #[test]
    fn what_serde_json_refuses_in_a_string_is_given_up_on() {
        for bad in [
            "\"tab\there\"",
            r#""\x""#,
            r#""\u12""#,
            r#""\ud83d""#,
            r#""\ud83dx""#,
            r#""\ud83d\u0041""#,
            r#""\ude00""#,
            r#""open"#,
            r#""\"#,
        ] {
            assert_eq!(string(bad), None, "{bad}");
        }
    }

    #[test]
    fn skipped_strings_need_only_four_hex_digits_after_u() {
        // As serde_json ignores a value: a lone surrogate is not looked at.
        assert!(skipped(r#""\ud83d""#));
        assert!(skipped(r#"{"a\ude00":["\u0041"]}"#));
        assert!(!skipped(r#""\u12x4""#));
        assert!(!skipped("\"a\u{1}\""));
        assert!(!skipped(r#""\q""#));
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        for good in ["0", "-0", "12", "-12.5", "0.25", "1e5", "1E+5", "2.5e-3"] {
            assert!(skipped(good), "{good}");
        }
        for bad in ["01", "-", "1.", ".5", "+1", "1e", "1e+", "--1", "0x1"] {
            assert!(!skipped(bad), "{bad}");
        }
    }

    #[test]
    fn numbers_that_are_read_give_up_where_serde_json_could_overflow() {
        let read = |t: &str| {
            let mut s = Scanner::new(t);
            s.number(true).is_some() && s.at_end()
        };
        assert!(read("-12.5"));
        assert!(read(&"9".repeat(MAX_INTEGER_DIGITS)));
        assert!(!read(&"9".repeat(MAX_INTEGER_DIGITS + 1)));
        assert!(!read("1e5"));
        assert!(skipped(&"9".repeat(400)));
    }

    #[test]
    fn maps_and_lists_refuse_stray_and_trailing_commas() {
        assert!(skipped(
            r#" { "a" : [ 1 , true , null , "x" ] , "b" : { } } "#
        ));
        for bad in [
            "[1,]",
            "[,1]",
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            "[1 2]",
            r#"{"a" 1}"#,
            r#"{"a":1"b":2}"#,
            "[",
            "{",
            "nul",
            "truex",
        ] {
            assert!(!skipped(bad), "{bad}");
        }
    }

    #[test]
    fn nesting_past_the_limit_is_given_up_on_without_recursing_further() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(skipped(&ok));
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(!skipped(&too_deep));
        // Far deeper than any stack could recurse: given up on at the limit.
        let abyss = "[".repeat(10_000_000);
        assert!(!skipped(&abyss));
    }
}
