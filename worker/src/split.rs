//! Flat prefixes in parallel. A prefix of a million objects and no
//! sub-prefix (the most common layout: one folder of images) is one chain
//! of pages, each waiting for the last, however many workers there are.
//! When a task's first page is full and holds no sub-prefix, the rest of
//! its key range is split: candidate keys are made from the page's last
//! key (the next values of its last varying characters, so zero-padded
//! numbers, hex names and words split alike), a one-key probe listing at
//! each tells which parts hold objects, and each non-empty part becomes a
//! listing task of its own ([`tether_shared::task::FanOut::split_at`]).
//! A part's own first page splits it again when it is still long, so a
//! chain of N pages becomes about log(N) rounds of parallel chains.
//!
//! Every object is still listed exactly once: the parts are disjoint key
//! ranges that cover what the task had left, and a split key holds no
//! delimiter after the prefix, so no sub-prefix reaches across one. Azure's
//! List Blobs cannot start at a key, so Azure prefixes are not split.

use futures_util::{stream, StreamExt};
use tether_shared::storage::{ListPage, ListQuery, ObjectSource, StorageError};

/// A first page shorter than this is not split: its chain is short enough,
/// or its pages too small for probes to pay.
pub(crate) const MIN_PAGE: usize = 16;
/// Candidate keys one split probes at most.
const MOST_PROBES: usize = 24;
/// Probe listings in flight at once.
const PROBES_AT_ONCE: usize = 8;
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
    if keys.len() > MOST_PROBES {
        let step = keys.len() as f64 / MOST_PROBES as f64;
        keys = (0..MOST_PROBES).map(|i| keys[(i as f64 * step) as usize].clone()).collect();
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

/// The candidates that start a part holding at least one entry, found by
/// a one-key listing from each (in `[candidate, end)`).
pub(crate) async fn split_keys(
    source: &dyn ObjectSource,
    query: ListQuery<'_>,
    candidates: Vec<String>,
) -> Result<Vec<String>, StorageError> {
    let probes: Vec<(String, Result<ListPage, StorageError>)> = stream::iter(candidates)
        .map(|candidate| async move {
            let probe = ListQuery { token: None, max_keys: 1, start_at: Some(&candidate), ..query };
            let page = source.list_page(probe).await;
            (candidate, page)
        })
        .buffered(PROBES_AT_ONCE)
        .collect()
        .await;
    let mut firsts = Vec::with_capacity(probes.len());
    for (candidate, page) in probes {
        let page = page?;
        let first = page.objects.iter().map(|o| o.key.clone()).chain(page.prefixes).min();
        firsts.push((candidate, first));
    }
    // A part [c_i, c_i+1) holds something if the first entry from c_i lies
    // before c_i+1.
    let ends: Vec<Option<String>> =
        firsts.iter().skip(1).map(|(c, _)| Some(c.clone())).chain([None]).collect();
    Ok(firsts
        .into_iter()
        .zip(ends)
        .filter(|((_, first), end)| match (first, end) {
            (Some(first), Some(end)) => first < end,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .map(|((candidate, _), _)| candidate)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn zero_padded_numbers_split_at_their_next_digits() {
        let keys = candidates("flat/", "flat/000000.jpg", "flat/000999.jpg", None);
        for expected in ["flat/001", "flat/009", "flat/01", "flat/09"] {
            assert!(keys.contains(&expected.to_owned()), "{expected} in {keys:?}");
        }
        assert!(keys.len() <= super::MOST_PROBES);
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
