//! The contract's failure codes (§3): what `tether.import_failures.code`
//! and the `objects_failed` metric's `code` label hold.

use std::fmt;

/// Why an object or a prefix failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    AccessDenied,
    NotFound,
    TooLarge,
    ChangedDuringCopy,
    ChecksumMismatch,
    Throttled,
    Unavailable,
    /// A key Tether cannot store or address: a NUL, or an Azure `.`/`..`
    /// path segment.
    UnsupportedKey,
}

impl FailureCode {
    pub const ALL: [FailureCode; 8] = [
        FailureCode::AccessDenied,
        FailureCode::NotFound,
        FailureCode::TooLarge,
        FailureCode::ChangedDuringCopy,
        FailureCode::ChecksumMismatch,
        FailureCode::Throttled,
        FailureCode::Unavailable,
        FailureCode::UnsupportedKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::AccessDenied => "access_denied",
            FailureCode::NotFound => "not_found",
            FailureCode::TooLarge => "too_large",
            FailureCode::ChangedDuringCopy => "changed_during_copy",
            FailureCode::ChecksumMismatch => "checksum_mismatch",
            FailureCode::Throttled => "throttled",
            FailureCode::Unavailable => "unavailable",
            FailureCode::UnsupportedKey => "unsupported_key",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why Tether cannot take a key as it is (contract §2), if it cannot: a NUL
/// cannot be stored as text; an Azure blob URL cannot address a `.` or `..`
/// path segment (URL parsers, and the service, normalise it away).
pub fn unsupported_key(key: &str, azure: bool) -> Option<&'static str> {
    if key.contains('\0') {
        return Some("its key holds a NUL character, which Tether cannot store: rename the object");
    }
    if azure && key.split('/').any(|segment| segment == "." || segment == "..") {
        return Some(
            "its key has a `.` or `..` path segment, which an Azure blob URL cannot address: rename the blob",
        );
    }
    None
}

/// A URL or key as Tether can store it: each NUL written as `%00`.
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "%00").into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in FailureCode::ALL {
            assert_eq!(FailureCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(FailureCode::parse("nope"), None);
    }

    #[test]
    fn unsupported_keys() {
        assert!(unsupported_key("a\0b.jpg", false).is_some());
        assert!(unsupported_key("a/../b.jpg", true).is_some());
        assert!(unsupported_key("./b.jpg", true).is_some());
        assert!(unsupported_key("a/../b.jpg", false).is_none());
        assert!(unsupported_key("a/..b/c..jpg", true).is_none());
        assert_eq!(storable("a\0b"), "a%00b");
    }
}
