//! Turns one listed page into what gets committed: folder markers dropped,
//! the extension filter and the size limit applied, keys that Tether cannot
//! take (a NUL; for Azure a `.`/`..` segment) failed as `unsupported_key`,
//! URLs formed.

use tether_shared::contract::{ImportRequest, Source};
use tether_shared::model::failure::{storable, unsupported_key};
use tether_shared::model::FailureCode;
use tether_shared::storage::ListPage;
use tether_shared::task::{FailureRow, ImageRow, PageResult};

/// The page's objects before `until` (all of them if `None`): from `until`
/// on, the task lists again recursively (see [`crate::fanout`]).
pub(crate) fn build(request: &ImportRequest, page: &ListPage, until: Option<&str>) -> PageResult {
    let mut result = PageResult {
        next: page.next.clone(),
        images: Vec::with_capacity(page.objects.len()),
        ..PageResult::default()
    };
    let max = request.filter.max_object_bytes;
    for object in &page.objects {
        if object.key.ends_with('/') || until.is_some_and(|until| object.key.as_str() >= until) {
            continue; // a folder marker, or listed again later
        }
        result.listed += 1;
        if !request.filter.matches(&object.key) {
            result.filtered += 1;
            continue;
        }
        if let Some(why) = unsupported_key(&object.key, matches!(request.source, Source::Azure(_))) {
            let source_url = storable(&request.source.url(&object.key)).into_owned();
            result.failures.push(FailureRow {
                message: format!("{source_url} cannot be imported: {why}"),
                source_url,
                code: FailureCode::UnsupportedKey,
                attempts: 1,
                object: None,
            });
            continue;
        }
        let source_url = request.source.url(&object.key);
        if object.size > max {
            result.failures.push(FailureRow {
                message: format!(
                    "{source_url} is {} bytes, more than filter.max_object_bytes ({max}): raise the limit to import it",
                    object.size
                ),
                source_url,
                code: FailureCode::TooLarge,
                attempts: 1,
                object: None,
            });
            continue;
        }
        result.images.push(ImageRow {
            source_url,
            size_bytes: i64::try_from(object.size).unwrap_or(i64::MAX),
            etag: object.etag.clone(),
            last_modified: object.last_modified,
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use tether_shared::contract::{parse_request, ValidationOptions};
    use tether_shared::storage::ObjectMeta;

    use super::*;

    fn azure_request() -> ImportRequest {
        let body = br#"{"version":1,"import_id":"3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e10","workspace_id":"w","dataset_id":"d","mode":"link",
          "source":{"provider":"azure","account":"acmestorage","container":"images","sas_token":"sv=1&sig=x"}}"#;
        parse_request(body, Some("application/json"), ValidationOptions::default()).expect("valid").request
    }

    #[test]
    fn azure_dot_segments_and_nuls_fail_alone_as_unsupported_keys() {
        let page = ListPage {
            objects: ["a/../b.jpg", "./c.jpg", "d\0.jpg", "a/..b/ok.jpg", "ok.jpg"]
                .iter()
                .map(|k| ObjectMeta { key: (*k).to_owned(), size: 1, etag: None, last_modified: None })
                .collect(),
            prefixes: Vec::new(),
            next: None,
        };
        let result = build(&azure_request(), &page, None);
        assert_eq!(result.listed, 5);
        assert_eq!(result.images.len(), 2);
        assert_eq!(result.failures.len(), 3);
        assert!(result.failures.iter().all(|f| f.code == FailureCode::UnsupportedKey));
        assert!(result.failures.iter().all(|f| !f.source_url.contains('\0')));
    }
}
