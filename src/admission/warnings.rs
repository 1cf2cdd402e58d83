//! How long and how many: warnings and denial messages bounded as the API server takes them.

/// Most warnings in one answer; the last one then says how many more there were.
pub const MAX_WARNINGS: usize = 20;
/// Longest warning, in bytes (the API server cuts longer ones).
pub const MAX_WARNING_BYTES: usize = 256;
/// Longest denial message, in bytes.
pub const MAX_DENIAL_BYTES: usize = 2048;

/// At most [`MAX_WARNINGS`] warnings of at most [`MAX_WARNING_BYTES`] each, in order; when some
/// are left out the last one says how many.
pub fn bound_warnings(warnings: &[String]) -> Vec<String> {
    let all: Vec<String> = warnings.iter().flat_map(|w| split_warning(w)).collect();
    let mut out: Vec<String> = all.iter().take(MAX_WARNINGS).cloned().collect();
    if all.len() > MAX_WARNINGS {
        out.truncate(MAX_WARNINGS - 1);
        out.push(format!(
            "tagpin: {} more warnings not shown",
            all.len() - (MAX_WARNINGS - 1)
        ));
    }
    out
}

/// A warning longer than [`MAX_WARNING_BYTES`] as several that are not: cut after a `; ` where
/// one falls in the second half of the room, else at the last space (never inside a word
/// unless one word fills the room), each cut marked `...` at the end of one piece and the
/// start of the next. Pure.
pub fn split_warning(w: &str) -> Vec<String> {
    const MARK: &str = "...";
    let mut out = Vec::new();
    let mut rest = w;
    let mut first = true;
    loop {
        let prefix = if first { "" } else { "... " };
        if prefix.len() + rest.len() <= MAX_WARNING_BYTES {
            out.push(format!("{prefix}{rest}"));
            return out;
        }
        let room = MAX_WARNING_BYTES - prefix.len() - MARK.len();
        let mut cut = room;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        // Prefer to cut after a "; " separator, if one falls in the second half; else after
        // the last space; a single word longer than the room is cut where it must be.
        let at = match (rest[..cut].rfind("; "), rest[..cut].rfind(' ')) {
            (Some(i), _) if i + 2 > room / 2 => i + 2,
            (_, Some(i)) if i > 0 => i + 1,
            _ => cut,
        };
        out.push(format!("{prefix}{}{MARK}", &rest[..at]));
        rest = &rest[at..];
        first = false;
    }
}

/// `head` followed by as many `items` (each cut to [`MAX_WARNING_BYTES`]) as fit in
/// [`MAX_DENIAL_BYTES`], separated by `; `, then how many were left out.
pub(super) fn bounded_list(head: String, items: impl ExactSizeIterator<Item = String>) -> String {
    let total = items.len();
    let mut out = head;
    // Room for the "; and N more not shown" tail.
    let room = MAX_DENIAL_BYTES - 40;
    for (i, item) in items.enumerate() {
        let item = truncate(item, MAX_WARNING_BYTES);
        let sep = if i == 0 { "" } else { "; " };
        if out.len() + sep.len() + item.len() > room {
            out.push_str(&format!("; and {} more not shown", total - i));
            return out;
        }
        out.push_str(sep);
        out.push_str(&item);
    }
    out
}

/// The API server may cut long warnings; keep them whole-character and bounded.
pub(super) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
