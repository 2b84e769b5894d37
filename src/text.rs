//! Text that came from a request or a plan, made safe to show a person at a terminal.
//!
//! Plan addresses, titles, reasons, user agents, lock operations and names taken from URLs are
//! chosen by whoever sent them. Printed raw, a control character or an escape sequence can
//! clear the screen, move the cursor and redraw a summary ("0 to destroy"), and a bidi override
//! can show text in another order than it is stored. Every human renderer passes such text
//! through [`printable`]; JSON output stays exact, since JSON escapes C0 controls itself.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1: ESC and so every escape sequence
/// included) and every bidi control written as a visible escape: `\x1b`, `\u{202e}`.
/// Everything else, backslashes included, is shown as it is.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !hidden(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// [`printable`] for text of several lines: each line escaped, the line breaks kept.
pub fn printable_lines(text: &str) -> String {
    text.split('\n')
        .map(printable)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A control character, or a character of Unicode's Bidi_Control set (the embeddings and
/// overrides U+202A–U+202E, the isolates U+2066–U+2069, and the marks U+061C, U+200E, U+200F).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}')
}

/// The first `shown` of `items` joined with `, `, and how many more there are: a list of a
/// request's making (a state's addresses, a plan's) is bounded before a person reads it or a
/// record keeps it.
pub fn first_of<T: std::fmt::Display>(items: &[T], shown: usize) -> String {
    let mut out: Vec<String> = items.iter().take(shown).map(ToString::to_string).collect();
    if items.len() > shown {
        out.push(format!("and {} more", items.len() - shown));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_shown_as_it_is() {
        let text = r#"module.net.aws_subnet.a["eu-west-1\\b"] — ünïcode"#;
        assert!(matches!(printable(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn controls_escapes_and_bidi_overrides_are_made_visible() {
        assert_eq!(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(
            printable("\x1b]0;title\x07x"),
            "\\x1b]0;title\\x07x",
            "an OSC sequence and its BEL"
        );
        assert_eq!(printable("tab\there\r\n"), "tab\\x09here\\x0d\\x0a");
        assert_eq!(printable("\x00\x7f"), "\\x00\\x7f");
        assert_eq!(
            printable("\u{9b}2J\u{85}"),
            "\\u{9b}2J\\u{85}",
            "C1 controls"
        );
        assert_eq!(
            printable("safe\u{202e}yortsed\u{202c}"),
            "safe\\u{202e}yortsed\\u{202c}"
        );
        for c in ['\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}', '\u{200f}'] {
            assert!(printable(&c.to_string()).starts_with("\\u{"), "{c:?}");
        }
    }

    #[test]
    fn lines_keep_their_breaks() {
        assert_eq!(printable_lines("one\x1b[A\ntwo\r"), "one\\x1b[A\ntwo\\x0d");
    }
}
