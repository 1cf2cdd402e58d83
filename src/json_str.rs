//! Strings written as JSON, escaped exactly as `serde_json` escapes them, for the answers
//! written straight into a buffer (the admission answer and its JSON Patch). Pure.
//!
//! Most strings written (uids, images, pointers, base64) need no escape at all: they are
//! checked eight bytes at a time and copied whole.

/// `s` as a JSON string, quotes included.
pub fn write(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape(out, s);
    out.push(b'"');
}

/// The inside of `s` as a JSON string: `"` and `\` escaped, the control characters with a
/// short form (`\b \t \n \f \r`) by it and the others as `\u00xx`; everything else, non-ASCII
/// included, as it is.
pub fn escape(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    loop {
        let plain = start + plain_prefix(&bytes[start..]);
        out.extend_from_slice(&bytes[start..plain]);
        let Some(&b) = bytes.get(plain) else {
            return;
        };
        start = plain + 1;
        let short = match b {
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                continue;
            }
            _ => b,
        };
        out.push(b'\\');
        out.push(short);
    }
}

/// The inside of `s` as a JSON string, escaped, and that escaped again: how a string inside a
/// JSON document is written when the document is itself a JSON string (the `tagpin.io/pinned`
/// record in a patch). A string that needs no escape is the same after both.
pub fn escape_twice(out: &mut Vec<u8>, s: &str) {
    if plain_prefix(s.as_bytes()) == s.len() {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let mut once = Vec::with_capacity(s.len() + 8);
    escape(&mut once, s);
    // Only escapes were added to a string: still UTF-8.
    escape(out, std::str::from_utf8(&once).unwrap_or_default());
}

/// True for the bytes a JSON string escapes: `"`, `\` and the control characters.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// How many bytes at the start of `bytes` need no escape (where a JSON string's reader stops
/// too, `crate::json_scan`): eight at a time, a word's first byte to escape found from its bits,
/// then byte by byte for the last few.
pub(crate) fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // The high bit of each byte of `x` below `n` (n <= 0x80). Exact up to the lowest such byte:
    // a borrow only reaches the bytes above it.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut i = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Bytes below 0x20, and bytes equal to `"` or `\` (zero once xor-ed with it).
        let special = below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1);
        if special != 0 {
            // Little-endian: the lowest set bit is the first byte.
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + bytes[i..].iter().take_while(|&&b| !needs_escape(b)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = [
            "",
            "plain",
            "\"",
            "\\",
            "\u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}",
            "ü€😀~/",
            "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ]
        .map(String::from)
        .into();
        // Every byte that needs an escape (and its neighbours) at every offset of a word.
        for b in (0u8..0x20).chain([b'"', b'\\', 0x1f, 0x20, 0x21, 0x5b, 0x5d, 0x7f]) {
            for at in 0..17 {
                let mut s = "a".repeat(at);
                s.push(char::from(b));
                s.push_str(&"é".repeat(at % 5));
                cases.push(s.clone());
                // After non-ASCII bytes, and with more to escape after it.
                cases.push(format!("{}{s}\"x\\{}", "ü".repeat(at % 7), char::from(b)));
            }
        }
        for s in &cases {
            let mut ours = Vec::new();
            write(&mut ours, s);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(s).unwrap()
            );
            // Twice: the string inside a JSON document written as a JSON string.
            let mut twice = b"\"".to_vec();
            escape_twice(&mut twice, s);
            twice.push(b'"');
            let once = serde_json::to_string(s).unwrap();
            let inner = &once[1..once.len() - 1];
            assert_eq!(
                String::from_utf8(twice).unwrap(),
                serde_json::to_string(inner).unwrap(),
                "{s:?}"
            );
        }
    }
}
