//! The outcome rules end to end, in milliseconds: the objects of a bucket
//! held in memory go through the worker's own page building (filter, size
//! limit, unsupported keys) and copying (ranged or whole reads, verified on
//! the way into a destination held in memory, each failure classified), and
//! what became of them decides the import's state and sentence (contract
//! §2, §3). What the SQL adds (idempotent commits, counting in the import
//! row) is the integration tests' business.

use std::collections::BTreeMap;
use std::sync::Arc;

use tether_shared::contract::{parse_request, ImportRequest, Mode, ValidationOptions};
use tether_shared::destination::memory::MemoryDestination;
use tether_shared::model::state::Tally;
use tether_shared::model::ImportState;
use tether_shared::storage::memory::{MemorySource, Read};
use tether_shared::storage::ranged::RangedReads;
use tether_shared::storage::{ListQuery, ObjectSource, StorageError};
use tether_shared::task::CopyItem;

use crate::copying::Copier;
use crate::page;

fn request(mode: &str, provider: &str, max_object_bytes: u64) -> ImportRequest {
    let source = match provider {
        "azure" => {
            r#"{"provider":"azure","account":"acmestorage","container":"images","sas_token":"sp=rl&sig=x"}"#
        }
        _ => {
            r#"{"provider":"s3","bucket":"acme-images","role_arn":"arn:aws:iam::111122223333:role/r","external_id":"ext-1"}"#
        }
    };
    let body = format!(
        r#"{{"version":1,"import_id":"3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e10","workspace_id":"w","dataset_id":"d",
            "mode":"{mode}","source":{source},"filter":{{"max_object_bytes":{max_object_bytes}}}}}"#
    );
    parse_request(body.as_bytes(), Some("application/json"), ValidationOptions::default())
        .expect("valid")
        .request
}

/// Objects of 64 bytes and more are read in 16-byte ranges, two at once.
fn ranged() -> RangedReads {
    RangedReads {
        from_bytes: 64,
        range_bytes: 16,
        parallel: 2,
        budget: Arc::new(tokio::sync::Semaphore::new(4)),
    }
}

/// Lists `source` in pages of 2, builds each page, copies what copy mode
/// copies, and tallies the outcome as the import row would.
async fn import(source: MemorySource, request: &ImportRequest, destination: Arc<MemoryDestination>) -> Tally {
    let source: Arc<dyn ObjectSource> = Arc::new(source);
    // One attempt per object: a transient failure fails it at once here.
    let copier = Copier::new(destination, 4, 1, ranged());
    let mut tally = Tally::default();
    let mut codes = BTreeMap::<&str, i64>::new();
    let mut token: Option<String> = None;
    loop {
        let query = ListQuery {
            prefix: "",
            token: token.as_deref(),
            max_keys: 2,
            delimiter: None,
            start_at: None,
            end_before: None,
        };
        let listed = source.list_page(query).await.expect("a listed page");
        let page = page::build(request, &listed, None);
        tally.listed += page.listed;
        tally.filtered += page.filtered;
        let mut failures: Vec<_> = page.failures.iter().map(|f| f.code).collect();
        if request.mode == Mode::Copy {
            let source_prefix = request.source.url("");
            let items: Vec<CopyItem> = page
                .images
                .iter()
                .map(|image| CopyItem {
                    key: image
                        .source_url
                        .strip_prefix(&source_prefix)
                        .unwrap_or(&image.source_url)
                        .to_owned(),
                    size: image.size_bytes,
                    etag: image.etag.clone(),
                    last_modified: image.last_modified,
                })
                .collect();
            match copier.copy_all(&source, request, &items).await {
                Ok(outcomes) => {
                    failures.extend(outcomes.iter().filter_map(|o| o.result.as_ref().err()).map(|f| f.code))
                }
                Err(error) => tally.import_error = Some(error.to_string()),
            }
        }
        if tally.import_error.is_some() {
            break; // the import fails as a whole: nothing more is listed
        }
        tally.failed += failures.len() as i64;
        for code in failures {
            *codes.entry(code.as_str()).or_default() += 1;
        }
        token = page.next;
        if token.is_none() {
            break;
        }
    }
    tally.object_failures = codes.into_iter().map(|(code, n)| (code.to_owned(), n)).collect();
    tally
}

fn gone(key: &str) -> StorageError {
    StorageError::ObjectNotFound(format!("{key} was deleted"))
}

fn denied(key: &str) -> StorageError {
    StorageError::AccessDenied(format!("{key} may not be read"))
}

fn no_bucket(_: &str) -> StorageError {
    StorageError::BucketNotFound("The bucket acme-images no longer exists".into())
}

fn down(_: &str) -> StorageError {
    StorageError::Unavailable("the store answered 503".into())
}

struct Case {
    name: &'static str,
    mode: &'static str,
    provider: &'static str,
    max_object_bytes: u64,
    source: MemorySource,
    state: ImportState,
    copied: &'static [&'static str],
    error: Option<&'static str>,
}

#[tokio::test]
async fn per_object_outcomes_decide_the_import_state() {
    let good = || {
        MemorySource::default()
            .with("a.jpg", b"aaaa")
            .with("b.png", b"bb")
            .with("notes.txt", b"n")
            .with("dir/", b"")
            .with("large.jpg", &[9; 100])
    };
    let case = |name, mode, max_object_bytes, source, state, copied, error| Case {
        name,
        mode,
        provider: "s3",
        max_object_bytes,
        source,
        state,
        copied,
        error,
    };
    let all: &[&str] = &["a.jpg", "b.png", "large.jpg"];
    let cases = vec![
        case("link, all imported", "link", 1000, good(), ImportState::Succeeded, &[], None),
        case("copy, all copied (one in ranges)", "copy", 1000, good(), ImportState::Succeeded, all, None),
        case(
            "one too large",
            "copy",
            50,
            good(),
            ImportState::PartiallySucceeded,
            &["a.jpg", "b.png"],
            Some("1 of 3 matching objects failed (too_large: 1)"),
        ),
        case(
            "all too large",
            "link",
            1,
            good(),
            ImportState::Failed,
            &[],
            Some("Every matching object failed (too_large: 3)"),
        ),
        case(
            "deleted after listing",
            "copy",
            1000,
            good().with_read("c.jpg", b"c", Read::Fails(gone)),
            ImportState::PartiallySucceeded,
            all,
            Some("not_found: 1"),
        ),
        case(
            "fewer bytes than listed",
            "copy",
            1000,
            good().with_read("c.jpg", b"cccc", Read::Other(b"cc")),
            ImportState::PartiallySucceeded,
            all,
            Some("changed_during_copy: 1"),
        ),
        case(
            "a range that changed",
            "copy",
            1000,
            good().with_read("c.jpg", &[1; 80], Read::Other(&[2; 81])),
            ImportState::PartiallySucceeded,
            all,
            Some("changed_during_copy: 1"),
        ),
        case(
            "denied, and a NUL key",
            "copy",
            1000,
            good().with_read("c.jpg", b"c", Read::Fails(denied)).with("d\0.jpg", b"d"),
            ImportState::PartiallySucceeded,
            all,
            Some("2 of 5 matching objects failed (access_denied: 1, unsupported_key: 1)"),
        ),
        case(
            "an outage outlasting the attempts",
            "copy",
            1000,
            good().with_read("c.jpg", b"c", Read::Fails(down)),
            ImportState::PartiallySucceeded,
            all,
            Some("unavailable: 1"),
        ),
        case(
            "the bucket vanished",
            "copy",
            1000,
            good().with_read("a0.jpg", b"c", Read::Fails(no_bucket)),
            ImportState::Failed,
            &["a.jpg"],
            Some("no longer exists"),
        ),
        case(
            "only filtered objects",
            "link",
            1000,
            MemorySource::default().with("notes.txt", b"n"),
            ImportState::Failed,
            &[],
            Some("matched the filter"),
        ),
        case(
            "an empty bucket",
            "copy",
            1000,
            MemorySource::default(),
            ImportState::Failed,
            &[],
            Some("Nothing was found"),
        ),
        Case {
            provider: "azure",
            ..case(
                "Azure dot segments",
                "link",
                1000,
                good().with("x/../c.jpg", b"c").with("./d.jpg", b"d"),
                ImportState::PartiallySucceeded,
                &[],
                Some("2 of 5 matching objects failed (unsupported_key: 2)"),
            )
        },
    ];
    for Case { name, mode, provider, max_object_bytes, source, state, copied, error } in cases {
        let request = request(mode, provider, max_object_bytes);
        let destination = Arc::new(MemoryDestination::default());
        let tally = import(source, &request, Arc::clone(&destination)).await;
        let (decided, sentence) = tally.decide(&request);
        assert_eq!(decided, state, "{name}: {sentence:?}");
        match error {
            None => assert_eq!(sentence, None, "{name}"),
            Some(words) => {
                assert!(sentence.as_deref().unwrap_or_default().contains(words), "{name}: {sentence:?}")
            }
        }
        // Only whole, verified copies are kept, each byte for byte.
        let copies = destination.copies();
        assert_eq!(copies.len(), copied.len(), "{name}: {:?}", copies.keys());
        for key in copied {
            let at = tether_shared::destination::object_key("w", "d", &request.source.url(key));
            assert!(copies.contains_key(&at), "{name}: {key} was not copied");
        }
    }
}
