//! Flat prefixes in parallel. A prefix of a million objects and no
//! sub-prefix (the most common layout: one folder of images) is one chain
//! of pages, each waiting for the last, however many workers there are.
//! When a task's first page is full and holds no sub-prefix, the rest of
//! its key range is split: candidate keys are made from the page's last
//! key (the next values of its last varying characters, so zero-padded
//! numbers, hex names and words split alike), and each part becomes a
//! listing task of its own ([`tether_shared::task::FanOut::split_at`]).
//! A part's own first page splits it again when it is still long, so a
//! chain of N pages becomes about log(N) rounds of parallel chains.
//!
//! Splitting costs requests: each part ends with one listing past its end
//! (S3 has no end key), and an empty part costs a listing of its own. So
//! parts are kept to [`MIN_PART_PAGES`] pages or more, as estimated from
//! the page itself (its keys' density, [`thin`]); probing each candidate
//! with a one-key listing would cost as many requests as the parts save
//! on a store that answers one request at a time (moto: 100,000 flat
//! objects listed at 0.3x rclone with probes at every split).
//!
//! Every object is still listed exactly once: the parts are disjoint key
//! ranges that cover what the task had left, and a split key holds no
//! delimiter after the prefix, so no sub-prefix reaches across one. Azure's
//! List Blobs cannot start at a key, so Azure prefixes are not split.

/// A first page shorter than this is not split: its chain is short enough,
/// or its pages too small to estimate parts from.
pub(crate) const MIN_PAGE: usize = 16;
/// Candidate keys one split considers at most.
const MOST_CANDIDATES: usize = 24;
/// A part is made only where it is estimated to hold this many pages.
pub(crate) const MIN_PART_PAGES: f64 = 4.0;
/// Bytes of a key that [`thin`]'s estimate reads (an `f64` holds about 6).
const WINDOW: usize = 6;
/// Split keys are made of these characters, in byte order: a key holding
/// no delimiter, and one that stores order alike.
const ALPHABET: &[u8] = b"-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// Candidate split keys after `last`, the last key of a full first page
/// of which `first` is an earlier key, within `prefix` and before `end`: at the
/// last two characters where the page's keys vary, each larger value of
/// that character's class (digits, capitals, small letters), and the first
/// value of each larger class.
pub(crate) fn candidates(prefix: &str, first: &str, last: &str, end: Option<&str>) -> Vec<String> {
    let last_bytes = last.as_bytes();
    let varying = first.bytes().zip(last_bytes).take_while(|(a, b)| a == *b).count();
    let mut keys = Vec::new();
    for at in (prefix.len()..varying.min(last_bytes.len())).rev().take(2) {
        if !last.is_char_boundary(at) {
            continue;
        }
        let current = last_bytes[at];
        let same = ALPHABET.contains(&current).then(|| class_of(current));
        let mut classes_seen = Vec::new();
        for &c in ALPHABET.iter().filter(|&&c| c > current) {
            let take = if Some(class_of(c)) == same {
                true
            } else if class_of(c) == OTHER || classes_seen.contains(&class_of(c)) {
                false
            } else {
                classes_seen.push(class_of(c));
                true
            };
            if take {
                keys.push(format!("{}{}", &last[..at], c as char));
            }
        }
    }
    keys.retain(|k| k.as_str() > last && end.is_none_or(|end| k.as_str() < end));
    keys.sort_unstable();
    keys.dedup();
    if keys.len() > MOST_CANDIDATES {
        let step = keys.len() as f64 / MOST_CANDIDATES as f64;
        keys = (0..MOST_CANDIDATES).map(|i| keys[(i as f64 * step) as usize].clone()).collect();
    }
    keys
}

/// Punctuation: split at only where the page's own key has it.
const OTHER: u8 = 3;

fn class_of(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => 0,
        b'A'..=b'Z' => 1,
        b'a'..=b'z' => 2,
        _ => OTHER,
    }
}

/// The candidates that start a part of at least `min_keys` keys, as the
/// page's second half (`middle` to `last`, `keys` apart) says the keys are
/// spread. A key is read as a number from where the page's keys start to
/// vary, each character a digit in the radix of its class in `last` (10
/// for digits, 26 for letters), so zero-padded numbers count as numbers;
/// a part holds about the page's density times its width. Where the page's
/// keys do not spread, every candidate is kept. The estimate only chooses
/// split points: any subset of the candidates still tiles the range.
pub(crate) fn thin(
    candidates: Vec<String>,
    middle: &str,
    last: &str,
    keys: usize,
    min_keys: f64,
) -> Vec<String> {
    let base = middle.bytes().zip(last.bytes()).take_while(|(a, b)| a == b).count().saturating_sub(2);
    let shape: Vec<u8> = last.bytes().skip(base).chain(std::iter::repeat(b'.')).take(WINDOW).collect();
    let value = |key: &str| {
        let bytes = key.bytes().skip(base).chain(std::iter::repeat(0)).take(WINDOW);
        bytes.zip(&shape).fold(0.0, |v, (b, &like)| {
            let (digit, radix) = digit(b, like);
            v * radix + digit
        })
    };
    let spread = value(last) - value(middle);
    if spread <= 0.0 || keys == 0 {
        return candidates;
    }
    let density = keys as f64 / spread;
    let mut from = value(last);
    let mut kept = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let at = value(&candidate);
        if (at - from) * density >= min_keys {
            kept.push(candidate);
            from = at;
        }
    }
    kept
}

/// `b` as a digit in the radix of `like`'s class, and that radix: a byte
/// of another class counts as one past the class's last digit if it sorts
/// after `like`, else as 0.
fn digit(b: u8, like: u8) -> (f64, f64) {
    let (first, radix) = match class_of(like) {
        0 => (b'0', 10),
        1 => (b'A', 26),
        2 => (b'a', 26),
        _ => (0, 256),
    };
    let digit = if class_of(b) == class_of(like) {
        b - first
    } else if b > like {
        u8::try_from(radix).unwrap_or(u8::MAX)
    } else {
        0
    };
    (f64::from(digit), f64::from(radix))
}

#[cfg(test)]
mod tests {
    use super::{candidates, thin};

    #[test]
    fn parts_hold_several_pages_as_the_page_estimates() {
        // 1,000 keys a page, 100,000 in all: parts of at least 4,000 keys.
        let keys = candidates("flat/", "flat/img_000500.jpg", "flat/img_000999.jpg", None);
        let kept = thin(keys, "flat/img_000500.jpg", "flat/img_000999.jpg", 499, 4000.0);
        assert!(kept.contains(&"flat/img_005".to_owned()), "{kept:?}");
        assert!(!kept.contains(&"flat/img_001".to_owned()), "a part of 1,000 keys: {kept:?}");
        assert!(kept.contains(&"flat/img_09".to_owned()), "{kept:?}");
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "sorted: {kept:?}");
        // A range of 10,000 keys splits again in a few parts, not ten.
        let keys = candidates("flat/", "flat/img_020500.jpg", "flat/img_020999.jpg", Some("flat/img_03"));
        let kept = thin(keys, "flat/img_020500.jpg", "flat/img_020999.jpg", 499, 4000.0);
        assert!((1..=3).contains(&kept.len()), "{kept:?}");
        // Keys that do not spread keep every candidate.
        let all = vec!["k/b".to_owned(), "k/c".to_owned()];
        assert_eq!(thin(all.clone(), "k/a", "k/a", 10, 4000.0), all);
    }

    #[test]
    fn zero_padded_numbers_split_at_their_next_digits() {
        let keys = candidates("flat/", "flat/000000.jpg", "flat/000999.jpg", None);
        for expected in ["flat/001", "flat/009", "flat/01", "flat/09"] {
            assert!(keys.contains(&expected.to_owned()), "{expected} in {keys:?}");
        }
        assert!(keys.len() <= super::MOST_CANDIDATES);
        assert!(keys.iter().all(|k| k.as_str() > "flat/000999.jpg" && !k[5..].contains('/')), "{keys:?}");
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted: {keys:?}");
    }

    #[test]
    fn hex_names_reach_the_letters_and_an_end_bounds_the_keys() {
        let keys = candidates("h/", "h/0a1f", "h/0fe2", None);
        assert!(keys.contains(&"h/0a".to_owned()) || keys.contains(&"h/1".to_owned()), "{keys:?}");
        assert!(keys.iter().any(|k| k.as_str() >= "h/a"), "the letters: {keys:?}");
        let bounded = candidates("h/", "h/0a1f", "h/0fe2", Some("h/3"));
        assert!(!bounded.is_empty() && bounded.iter().all(|k| k.as_str() < "h/3"), "{bounded:?}");
    }

    #[test]
    fn nothing_to_split_within_the_prefix_or_beyond_a_multibyte_character() {
        assert!(candidates("same/", "same/", "same/", None).is_empty());
        let keys = candidates("u/", "u/ä1", "u/ä9", None);
        assert!(keys.iter().all(|k| k.is_char_boundary(k.len())), "{keys:?}");
    }
}
