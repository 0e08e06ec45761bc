//! Every kind of invalid request ends in `tether.rejected` with a reason that
//! names the field; where the request names a readable new import_id, a
//! `failed` import says the same. The fleet keeps running.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tether_tests::TestEnv;
use uuid::Uuid;

struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    /// Words the reason (and the import's error) must contain.
    mentions: &'static str,
    /// The id whose failed import must exist, if the id is readable.
    import_id: Option<Uuid>,
}

fn case(name: &'static str, request: Value, mentions: &'static str) -> Case {
    let import_id = request["import_id"].as_str().and_then(|s| s.parse().ok());
    Case {
        name,
        body: request.to_string().into_bytes(),
        content_type: Some("application/json"),
        mentions,
        import_id,
    }
}

fn cases(env: &TestEnv) -> Vec<Case> {
    let valid = || env.request("rejections", &["a/"]);
    let with = |path: &[&str], value: Value| {
        let mut r = valid();
        let mut target = &mut r;
        for p in &path[..path.len() - 1] {
            target = &mut target[*p];
        }
        target[path[path.len() - 1]] = value;
        r
    };
    let without = |path: &[&str]| {
        let mut r = valid();
        let mut target = &mut r;
        for p in &path[..path.len() - 1] {
            target = &mut target[*p];
        }
        if let Some(map) = target.as_object_mut() {
            map.remove(path[path.len() - 1]);
        }
        r
    };
    let id = || Uuid::new_v4().to_string();
    vec![
        Case {
            name: "not JSON",
            body: b"{\"version\": 1, oops".to_vec(),
            content_type: Some("application/json"),
            mentions: "not valid JSON",
            import_id: None,
        },
        Case {
            name: "wrong content type",
            body: valid().to_string().into_bytes(),
            content_type: Some("text/plain"),
            mentions: "content_type",
            import_id: None, // set below: the id is readable
        },
        case("wrong version", with(&["version"], json!(2)), "`version`"),
        case("bad mode", with(&["mode"], json!("mirror")), "`mode`"),
        case("bad import_id", with(&["import_id"], json!("not-a-uuid")), "`import_id`"),
        case("bad workspace_id", with(&["workspace_id"], json!("-starts-with-dash")), "`workspace_id`"),
        case("dataset_id too long", with(&["dataset_id"], json!("d".repeat(129))), "`dataset_id`"),
        case("missing role_arn", without(&["source", "role_arn"]), "`source.role_arn`"),
        case("missing external_id", without(&["source", "external_id"]), "`source.external_id`"),
        case("misspelt prefixes", with(&["source", "prefix"], json!(["a/"])), "`source.prefix`"),
        case(
            "a GCS field on S3",
            with(&["source", "impersonate_service_account"], json!("x@y.iam.gserviceaccount.com")),
            "`source.impersonate_service_account`",
        ),
        case("empty prefixes", with(&["source", "prefixes"], json!([])), "`source.prefixes`"),
        case("unknown provider", with(&["source", "provider"], json!("ftp")), "`source.provider`"),
        case(
            "control character in a prefix",
            with(&["source", "prefixes"], json!(["a/\u{7}b"])),
            "`source.prefixes[0]`",
        ),
        case(
            "GCS without impersonate_service_account",
            json!({"version": 1, "import_id": id(), "workspace_id": "w", "dataset_id": "d", "mode": "link",
                   "source": {"provider": "gcs", "bucket": "acme-images", "prefixes": ["raw/"]}}),
            "`source.impersonate_service_account`",
        ),
        case(
            "Azure without sas_token",
            json!({"version": 1, "import_id": id(), "workspace_id": "w", "dataset_id": "d", "mode": "copy",
                   "source": {"provider": "azure", "account": "acmestorage", "container": "images"}}),
            "`source.sas_token`",
        ),
        case("unknown top-level field", with(&["priority"], json!("high")), "`priority`"),
        case(
            "bad filter extension",
            with(&["filter"], json!({"extensions": [".jpg"]})),
            "`filter.extensions[0]`",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_are_rejected_with_a_reason_and_the_fleet_keeps_running() {
    let env = TestEnv::new().await;
    env.put("a/ok.jpg", b"ok").await;
    let fleet = env.start_default(1).await;
    let mut cases = cases(&env);
    cases[1].import_id = serde_json::from_slice::<Value>(&cases[1].body)
        .ok()
        .and_then(|v| v["import_id"].as_str().and_then(|s| s.parse().ok()));
    for c in &cases {
        env.publish_raw("import.request", &c.body, c.content_type).await;
    }
    // A valid import right after the bad ones still runs.
    let good = env.submit(&env.request("rejections", &["a/"])).await;

    let rejected = env.rejected(cases.len()).await;
    assert_eq!(rejected.len(), cases.len(), "one rejection per bad request");
    let reasons: BTreeMap<&[u8], &str> =
        rejected.iter().map(|r| (r.body.as_slice(), r.reason.as_str())).collect();
    let mut readable = 0;
    for c in &cases {
        let reason =
            reasons.get(c.body.as_slice()).unwrap_or_else(|| panic!("{}: not in tether.rejected", c.name));
        assert!(reason.contains(c.mentions), "{}: reason {reason:?} does not mention {}", c.name, c.mentions);
        if let Some(id) = c.import_id {
            readable += 1;
            let status = env.wait_final(id).await;
            assert_eq!(status["state"], "failed", "{}", c.name);
            let error = status["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(c.mentions),
                "{}: error {error:?} does not mention {}",
                c.name,
                c.mentions
            );
        }
    }
    let status = env.wait_final(good).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    // One failed import per readable id, plus the good one.
    assert_eq!(env.import_count().await, readable + 1);
    let events = env.finished_events(readable as usize + 1).await;
    assert_eq!(events.len(), readable as usize + 1);
    fleet.assert_running();
    fleet.stop().await;
}
