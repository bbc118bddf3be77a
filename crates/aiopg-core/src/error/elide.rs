//! Keeping error messages to a size a log can take, whatever the input.

use std::fmt;

use super::MESSAGE_MAX;

/// The most characters of one piece of user-supplied text that an error message quotes.
pub const ECHO_MAX: usize = 200;

/// User-supplied text (a host name, a socket path, a user name) as an error message should
/// quote it: at most [`ECHO_MAX`] characters, cut on a character boundary, then `…` and the
/// full length, so that a mistake such as a megabyte pasted into a host name is visible in
/// the message without flooding it.
///
/// `Display` shows the text as it is; `Debug` quotes and escapes it as `str`'s `Debug` does.
///
/// ```
/// use aiopg_core::error::elide;
///
/// assert_eq!(elide("db1.internal").to_string(), "db1.internal");
/// assert_eq!(format!("{:?}", elide("db1")), "\"db1\"");
///
/// let host = "é".repeat(1_000_000);
/// let shown = elide(&host).to_string();
/// assert_eq!(shown.chars().count(), 200 + "… (2000000 bytes)".chars().count());
/// assert!(shown.ends_with("é… (2000000 bytes)"));
/// ```
pub fn elide(text: &str) -> Elided<'_> {
    Elided {
        shown: prefix(text, ECHO_MAX),
        len: text.len(),
    }
}

/// Text cut for an error message; see [`elide`].
#[derive(Clone, Copy)]
pub struct Elided<'a> {
    shown: &'a str,
    /// The whole text's length in bytes.
    len: usize,
}

impl Elided<'_> {
    fn is_cut(&self) -> bool {
        self.shown.len() < self.len
    }
}

impl fmt::Display for Elided<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown)?;
        if self.is_cut() {
            write!(f, "… ({} bytes)", self.len)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Elided<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.shown, f)?;
        if self.is_cut() {
            write!(f, "… ({} bytes)", self.len)?;
        }
        Ok(())
    }
}

/// The first `max` characters of `text`.
fn prefix(text: &str, max: usize) -> &str {
    // Fewer bytes than `max` means fewer characters: no need to walk the text.
    if text.len() <= max {
        return text;
    }
    match text.char_indices().nth(max) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// `message`, cut to [`MESSAGE_MAX`] characters (and an ellipsis) if it is longer.
pub(super) fn bound(mut message: String) -> String {
    let keep = prefix(&message, MESSAGE_MAX).len();
    if keep < message.len() {
        message.truncate(keep);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_shown_whole() {
        assert_eq!(elide("").to_string(), "");
        let exact = "x".repeat(ECHO_MAX);
        assert_eq!(elide(&exact).to_string(), exact);
        assert_eq!(format!("{:?}", elide("a\"b")), r#""a\"b""#);
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        // Multi-byte characters straddle every byte count but the right one.
        let text = "日本".repeat(1000);
        let shown = elide(&text).to_string();
        let expected = format!("{}… (6000 bytes)", "日本".repeat(ECHO_MAX / 2));
        assert_eq!(shown, expected);
        assert_eq!(
            format!("{:?}", elide(&text)),
            format!("{:?}… (6000 bytes)", "日本".repeat(ECHO_MAX / 2))
        );
    }

    #[test]
    fn messages_are_bounded() {
        assert_eq!(bound("short".into()), "short");
        let long = "ü".repeat(MESSAGE_MAX + 10);
        let cut = bound(long);
        assert_eq!(cut.chars().count(), MESSAGE_MAX + 1);
        assert!(cut.ends_with("ü…"));
        let exact = "a".repeat(MESSAGE_MAX);
        assert_eq!(bound(exact.clone()), exact);
    }
}
