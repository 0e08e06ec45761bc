//! Parallel listing. A listing task lists its prefix with the delimiter, and
//! the sub-prefixes a page meets become listing tasks of their own, so a
//! wide bucket is listed by every worker at once (each task still pages on
//! with its own continuation token). Sub-prefixes of one delimited listing
//! are disjoint, and disjoint from the objects it lists, so every object is
//! still listed by exactly one task.
//!
//! The fan-out is bounded by a cap on an import's listing tasks
//! (`TETHER_LIST_MAX_TASKS`). A page whose new sub-prefixes do not all fit
//! switches its task to a recursive listing (no delimiter) from a key `K`:
//! the page commits only what lies before `K` and the sub-prefixes before
//! `K`, and the task then lists every key from `K` on. Nothing is lost or
//! listed twice, because everything before `K` is on this page or an
//! earlier one, or under a sub-prefix that has its task, and no sub-prefix
//! with a task reaches `K` or beyond. `K` is the first sub-prefix without
//! room, or the page's last object if that comes first (listed again, as
//! the page does not commit it; a position never holds a NUL):
//! stores do not all place prefixes alike (fake-gcs-server returns every
//! prefix on the first page, beyond the objects listed so far).

use tether_shared::storage::ListPage;
use tether_shared::task::{FanOut, ListBudget};

/// What a delimited page adds, given the import's `budget` and `cap`.
pub(crate) fn plan(page: &ListPage, budget: &ListBudget, cap: i64) -> FanOut {
    let mut new: Vec<&String> = page.prefixes.iter().filter(|p| !budget.existing.contains(*p)).collect();
    new.sort_unstable();
    new.dedup();
    let room = usize::try_from(cap.saturating_sub(budget.list_tasks)).unwrap_or(0);
    // A sub-prefix with a NUL cannot be a task's prefix (Postgres refuses
    // it): from there on the task lists recursively, and each of its keys
    // fails alone.
    let stop = new.iter().position(|p| p.contains('\0')).map_or(room, |i| i.min(room));
    let Some(&first_without_room) = new.get(stop) else {
        return FanOut {
            sub_prefixes: new.into_iter().cloned().collect(),
            recursive_from: None,
            cap: Some(cap),
            split_at: Vec::new(),
        };
    };
    let mut from = before_nul(first_without_room);
    if page.next.is_some() {
        if let Some(last) = page.objects.iter().map(|o| before_nul(&o.key)).max() {
            // Listing again from `last` itself (not just after it): the page
            // commits only what lies before `from`, so nothing is counted
            // twice, and the position never needs a NUL.
            if last < from {
                from = last;
            }
        }
    }
    let relisted = |p: &String| p.as_str() >= from.as_str() || from.starts_with(p.as_str());
    if page.prefixes.iter().any(|p| budget.existing.contains(p) && relisted(p)) {
        // A store that repeats, beyond `from`, prefixes that have their task
        // already: switching would list them twice. Going past the cap is the
        // lesser harm.
        return FanOut {
            sub_prefixes: new.into_iter().cloned().collect(),
            recursive_from: None,
            cap: None,
            split_at: Vec::new(),
        };
    }
    FanOut {
        sub_prefixes: new.into_iter().filter(|p| !relisted(p)).cloned().collect(),
        recursive_from: Some(from),
        cap: Some(cap),
        split_at: Vec::new(),
    }
}

/// `key` up to its first NUL: a position Postgres can store, at or before
/// `key`.
fn before_nul(key: &str) -> String {
    key.split('\0').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use tether_shared::storage::ObjectMeta;

    use super::*;

    fn page(objects: &[&str], prefixes: &[&str], next: bool) -> ListPage {
        ListPage {
            objects: objects
                .iter()
                .map(|k| ObjectMeta { key: (*k).to_owned(), size: 1, etag: None, last_modified: None })
                .collect(),
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            next: next.then(|| "token".to_owned()),
        }
    }

    fn budget(list_tasks: i64, existing: &[&str]) -> ListBudget {
        ListBudget { list_tasks, existing: existing.iter().map(|p| (*p).to_owned()).collect() }
    }

    #[test]
    fn within_the_cap_every_new_sub_prefix_becomes_a_task() {
        let p = page(&["t/a.jpg"], &["t/c/", "t/b/", "t/b/"], true);
        let plan = plan(&p, &budget(1, &["t/b/"]), 10);
        assert_eq!(
            plan,
            FanOut {
                sub_prefixes: vec!["t/c/".into()],
                recursive_from: None,
                cap: Some(10),
                split_at: Vec::new()
            }
        );
    }

    #[test]
    fn past_the_cap_the_task_goes_on_recursively_from_the_first_sub_prefix_without_room() {
        // S3: prefixes count toward the page; the page is one key range.
        let p = page(&["t/a.jpg", "t/d.jpg"], &["t/b/", "t/c/"], true);
        let plan = plan(&p, &budget(4, &[]), 5);
        assert_eq!(plan.sub_prefixes, ["t/b/"]);
        assert_eq!(plan.recursive_from.as_deref(), Some("t/c/"));
        assert_eq!(plan.cap, Some(5));
        // No room at all: only the objects before the first sub-prefix stay.
        let plan = super::plan(&p, &budget(5, &[]), 5);
        assert!(plan.sub_prefixes.is_empty());
        assert_eq!(plan.recursive_from.as_deref(), Some("t/b/"));
    }

    #[test]
    fn prefixes_beyond_the_listed_objects_are_left_to_the_recursive_listing() {
        // fake-gcs-server: every prefix on the first page, objects paged.
        let p = page(&["t/a.jpg"], &["t/b/", "t/d/", "t/e/"], true);
        let plan = plan(&p, &budget(1, &[]), 2);
        assert!(plan.sub_prefixes.is_empty());
        assert_eq!(plan.recursive_from.as_deref(), Some("t/a.jpg"));
        // On the last page, the objects end nowhere before the prefixes.
        let p = page(&["t/a.jpg", "t/f.jpg"], &["t/b/", "t/d/"], false);
        let plan = super::plan(&p, &budget(1, &[]), 2);
        assert_eq!(
            (plan.sub_prefixes, plan.recursive_from.as_deref()),
            (vec!["t/b/".to_owned()], Some("t/d/"))
        );
    }

    #[test]
    fn a_sub_prefix_with_a_nul_is_listed_recursively_and_no_position_holds_a_nul() {
        let p = page(&["t/a.jpg"], &["t/b\0x/", "t/c/"], false);
        let plan = plan(&p, &budget(1, &[]), 100);
        assert!(plan.sub_prefixes.is_empty());
        assert_eq!(plan.recursive_from.as_deref(), Some("t/b"));
        let p = page(&["t/a\0.jpg"], &["t/b/"], true);
        let plan = super::plan(&p, &budget(1, &[]), 1);
        assert_eq!(plan.recursive_from.as_deref(), Some("t/a"));
    }

    #[test]
    fn a_repeated_prefix_beyond_the_switch_keeps_the_task_delimited() {
        let p = page(&["t/a.jpg"], &["t/b/", "t/c/", "t/d/"], false);
        let plan = plan(&p, &budget(3, &["t/d/"]), 3);
        assert_eq!(plan.sub_prefixes, ["t/b/", "t/c/"]);
        assert_eq!((plan.recursive_from, plan.cap), (None, None));
    }
}
