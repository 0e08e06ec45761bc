//! The signing window (contract §8): with `W` = `TETHER_SIGN_WINDOW_SECS`
//! and `w0` = `floor(now / W) * W`, a URL is signed as of `w0` and expires
//! at `w0 + W + expires_in_seconds`. So it lasts at least what was asked,
//! and the same image asked for again within a window gets the same URL,
//! which browsers and caches then keep.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tether_shared::signing::Validity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    seconds: i64,
}

impl Window {
    pub(crate) fn new(length: Duration) -> Self {
        Self { seconds: i64::try_from(length.as_secs()).unwrap_or(i64::MAX).max(1) }
    }

    pub(crate) fn seconds(self) -> i64 {
        self.seconds
    }

    /// When a URL asked for at `now`, for `expires_in` seconds, is valid.
    pub(crate) fn validity(self, now: DateTime<Utc>, expires_in: u32) -> Validity {
        let w0 = now.timestamp().div_euclid(self.seconds) * self.seconds;
        let start = Utc.timestamp_opt(w0, 0).single().unwrap_or(now);
        let expires_at = start + chrono::Duration::seconds(self.seconds + i64::from(expires_in));
        Validity { start, expires_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").to_utc()
    }

    #[test]
    fn urls_are_signed_as_of_the_windows_start_and_last_at_least_what_was_asked() {
        let window = Window::new(Duration::from_secs(300));
        let first = window.validity(at("2026-11-28T10:01:00Z"), 900);
        assert_eq!(first.start, at("2026-11-28T10:00:00Z"));
        assert_eq!(first.expires_at, at("2026-11-28T10:20:00Z"));
        assert_eq!(window.validity(at("2026-11-28T10:04:59Z"), 900), first, "same window, same validity");
        let next = window.validity(at("2026-11-28T10:05:00Z"), 900);
        assert_eq!(next.start, at("2026-11-28T10:05:00Z"));
        for now in ["2026-11-28T10:00:00Z", "2026-11-28T10:04:59Z"] {
            assert!(window.validity(at(now), 60).expires_at - at(now) >= chrono::Duration::seconds(60));
        }
    }
}
