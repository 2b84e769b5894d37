//! Time as bulkhead keeps and decides on it: a [`Timestamp`] (one instant, stored and shown as
//! RFC 3339 in UTC with microseconds, so that text order is time order) and the [`Clock`] every
//! decision and every stored time reads.
//!
//! Nothing else calls the wall clock for a time that is stored or decided on: a test that must
//! see an approval expire or a lease run out moves its server's clock with a [`Shift`] instead
//! of sleeping. This module is pure apart from reading the system clock.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// One instant, to the microsecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

/// A time that is not RFC 3339.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a time: write it as RFC 3339, e.g. 2026-12-02T10:00:00Z")]
pub struct BadTimestamp {
    pub text: String,
}

impl Timestamp {
    /// Reads RFC 3339 with any offset; the instant is kept in UTC.
    pub fn parse(text: &str) -> Result<Timestamp, BadTimestamp> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Timestamp::from(t.with_timezone(&Utc)))
            .map_err(|_| BadTimestamp {
                text: crate::text::printable(text).chars().take(64).collect(),
            })
    }

    /// The form bulkhead stores and shows: `2026-12-02T10:00:00.000000Z`.
    pub fn stored(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// To the second, for sentences people read: `2026-12-02T10:00:00Z`.
    pub fn to_seconds(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// `self + d`, or `None` past the end of representable time.
    pub fn plus(&self, d: Duration) -> Option<Timestamp> {
        let d = chrono::Duration::from_std(d).ok()?;
        self.0.checked_add_signed(d).map(Timestamp)
    }

    /// `self - d`, or `None` before the start of representable time.
    pub fn minus(&self, d: Duration) -> Option<Timestamp> {
        let d = chrono::Duration::from_std(d).ok()?;
        self.0.checked_sub_signed(d).map(Timestamp)
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn since(&self, earlier: Timestamp) -> Duration {
        (self.0 - earlier.0).to_std().unwrap_or(Duration::ZERO)
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }
}

impl From<DateTime<Utc>> for Timestamp {
    /// Truncated to the microsecond, the precision it is stored with, so that a timestamp and
    /// its stored text compare alike.
    fn from(t: DateTime<Utc>) -> Timestamp {
        let micros = t.timestamp_micros();
        Timestamp(DateTime::from_timestamp_micros(micros).unwrap_or(t))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stored())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.stored())
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The time every decision reads. The server runs on [`Clock::system`]; a test server runs on
/// [`Clock::shifted`], whose [`Shift`] moves it forward.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Microseconds added to the system clock; `None` for the system clock itself, which
    /// nothing can move.
    shift: Option<Arc<AtomicI64>>,
}

/// Moves a [`Clock::shifted`] clock (and every clone of it) forward.
#[derive(Clone, Debug)]
pub struct Shift(Arc<AtomicI64>);

impl Clock {
    pub fn system() -> Clock {
        Clock { shift: None }
    }

    /// A clock that starts at the system time and that the returned [`Shift`] moves forward.
    pub fn shifted() -> (Clock, Shift) {
        let shift = Arc::new(AtomicI64::new(0));
        (
            Clock {
                shift: Some(shift.clone()),
            },
            Shift(shift),
        )
    }

    pub fn now(&self) -> Timestamp {
        let now = Timestamp::from(Utc::now());
        match &self.shift {
            None => now,
            Some(shift) => {
                let micros = shift.load(Ordering::SeqCst);
                let by = chrono::Duration::microseconds(micros);
                now.0.checked_add_signed(by).map(Timestamp).unwrap_or(now)
            }
        }
    }
}

impl Shift {
    /// Moves the clock forward by `d` (saturating at about 292,000 years).
    pub fn advance(&self, d: Duration) {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(micros))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_orders_as_time_and_reads_back_the_same_instant() {
        let a = Timestamp::parse("2026-12-02T10:00:00.5+01:00").unwrap();
        assert_eq!(a.stored(), "2026-12-02T09:00:00.500000Z");
        assert_eq!(Timestamp::parse(&a.stored()).unwrap(), a);
        let b = a.plus(Duration::from_micros(1)).unwrap();
        assert!(a < b && a.stored() < b.stored());
        assert_eq!(b.since(a), Duration::from_micros(1));
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!(a.to_seconds(), "2026-12-02T09:00:00Z");
    }

    #[test]
    fn text_that_is_not_a_time_is_refused_with_a_sentence() {
        let e = Timestamp::parse("yesterday").unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }

    #[test]
    fn a_shift_moves_its_clock_and_its_clones_but_never_the_system_clock() {
        let (clock, shift) = Clock::shifted();
        let copy = clock.clone();
        let before = clock.now();
        shift.advance(Duration::from_secs(3600));
        assert!(copy.now().since(before) >= Duration::from_secs(3600));
        assert!(Clock::system().now().since(before) < Duration::from_secs(3600));
    }
}
