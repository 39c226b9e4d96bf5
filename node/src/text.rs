//! Cutting text to size, on character boundaries: the one place that does it.
//!
//! - [`head`] and [`tail`]: the first or last bytes of a text, with a marker where it was cut.
//! - [`preview`]: a short, one-line look at a text of any size, with its size in bytes, for
//!   logs, tracing fields and error messages (a prompt is never logged whole).

/// The marker put where text was cut.
pub const CUT: &str = "[…]";

/// How many bytes of a text [`preview`] shows.
pub const PREVIEW_BYTES: usize = 80;

/// The longest prefix of `text` of at most `limit` bytes that ends on a character boundary.
pub fn prefix(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    // A UTF-8 character is at most 4 bytes, so this steps back at most 3 times.
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The longest suffix of `text` of at most `limit` bytes that starts on a character boundary.
pub fn suffix(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The first `limit` bytes of `text` (cut at a character boundary) followed by [`CUT`], or
/// all of it when it fits.
pub fn head(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    format!("{}{CUT}", prefix(text, limit))
}

/// [`CUT`] followed by the last `limit` bytes of `text` (cut at a character boundary), or all
/// of it when it fits.
pub fn tail(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    format!("{CUT}{}", suffix(text, limit))
}

/// A one-line look at `text` for a log line: its first [`PREVIEW_BYTES`] bytes with line breaks
/// shown as `⏎`, and, when that is not all of it, [`CUT`] and its size in bytes.
pub fn preview(text: &str) -> String {
    let shown = prefix(text, PREVIEW_BYTES).replace(['\r', '\n'], "⏎");
    if text.len() <= PREVIEW_BYTES {
        return shown;
    }
    format!("{shown}{CUT} ({} bytes)", text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_cut_at_character_boundaries() {
        assert_eq!(head("short", 10), "short");
        assert_eq!(head("aaaébbbb", 4), "aaa[…]");
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("aaaaébbbb", 5), "[…]bbbb");
        assert_eq!(prefix("é", 1), "");
        assert_eq!(suffix("é", 1), "");
    }

    #[test]
    fn preview_is_one_short_line_with_the_size_of_what_it_leaves_out() {
        assert_eq!(preview("fix the bug\nnow"), "fix the bug⏎now");
        let long = format!("{}\n{}", "a".repeat(100), "b".repeat(1_000_000));
        let shown = preview(&long);
        assert_eq!(shown, format!("{}[…] (1000101 bytes)", "a".repeat(80)));
        assert!(!preview(&"x\n".repeat(1000)).contains('\n'));
    }
}
