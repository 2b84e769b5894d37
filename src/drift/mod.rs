//! Keeping state accurate: the signals that a state may no longer say what stands in the
//! cloud, or may not be the history it claims to be, computed from what the backend sees on
//! each write (the versions before and after, and what surrounds the write: its change, its
//! lock, its break-glass grant) and on each lock release; and the drift that a pipeline's
//! refresh-only plan reports. It owns [`Facts`] (what a state says of itself beyond attribute
//! values), the detectors in [`signals`] and the reading of a plan as drift in [`report`].
//!
//! Pure: no I/O, no store, no clock. A signal is raised after the fact, for a person to read:
//! nothing here ever refuses a write or a lock (the verdict does that, before), and nothing
//! here decides whether a signal is still open (its store does, from [`Severity`] and
//! [`Kind::is_condition`]).
//!
//! Text in a signal's evidence comes partly from state content and lock requests (addresses,
//! lineages, operation names), chosen by whoever sent them: it is capped in length here, and
//! every human renderer shows it through [`crate::text::printable`].

pub mod facts;
pub mod report;
pub mod signals;

pub use facts::Facts;
pub use report::{Drifted, Report};
pub use signals::{Kind, Severity, Signal};

/// `text`, or its first bytes up to a character boundary with `…` marking the cut, so that the
/// whole is at most `max` bytes (for a `max` of at least the mark's three bytes).
fn cut(mut text: String, max: usize) -> String {
    const MARK: &str = "…";
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1; // 0 is a boundary: this ends
    }
    text.truncate(end);
    text.push_str(MARK);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_a_character_and_stays_within_the_limit() {
        assert_eq!(cut("short".into(), 10), "short");
        assert_eq!(cut("abcdefghij".into(), 10), "abcdefghij");
        assert_eq!(cut("abcdefghijk".into(), 10), "abcdefg…");
        // "é" is two bytes: a cut inside it moves back to its start.
        let cut_text = cut("aaaaaééé".into(), 9);
        assert_eq!(cut_text, "aaaaa…");
        assert!(cut_text.len() <= 9);
        assert!(
            cut("ééééé".into(), 2).len() <= 3,
            "a limit below the mark keeps only it"
        );
    }
}
