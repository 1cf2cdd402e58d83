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

/// True for the bytes a JSON string escapes: `"`, `\` and the control characters.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// How many bytes at the start of `bytes` need no escape. Eight at a time while none does (a
/// word holds a byte below 0x20, or equal to `"` or `\`, exactly when these bit tests say so),
/// then byte by byte.
fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Some byte of `x` is zero.
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut i = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word);
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
        if control
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            break;
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
                cases.push(s);
            }
        }
        for s in &cases {
            let mut ours = Vec::new();
            write(&mut ours, s);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
