//! Every kind of invalid request ends in `tether.rejected` with a reason that
//! names the field; where the request names a readable new import_id, a
//! `failed` import says the same. The fleet keeps running.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tether_shared::model::rejection;
use tether_tests::TestEnv;
use uuid::Uuid;

struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    /// Words the reason (and the import's error) must contain.
    mentions: &'static str,
}

fn case(name: &'static str, request: Value, mentions: &'static str) -> Case {
    Case { name, body: request.to_string().into_bytes(), content_type: Some("application/json"), mentions }
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
        },
        Case {
            name: "wrong content type",
            body: valid().to_string().into_bytes(),
            content_type: Some("text/plain"),
            mentions: "content_type",
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
        // Hostile and malformed inputs.
        Case {
            name: "not UTF-8",
            body: b"{\"version\": 1, \"import_id\": \"\xff\xfe\"}".to_vec(),
            content_type: Some("application/json"),
            mentions: "not valid JSON",
        },
        Case {
            name: "over 1 MiB",
            body: format!("{{\"pad\": \"{}\"}}", "x".repeat(1_100_000)).into_bytes(),
            content_type: Some("application/json"),
            mentions: "1 MiB",
        },
        Case {
            name: "empty body",
            body: Vec::new(),
            content_type: Some("application/json"),
            mentions: "not valid JSON",
        },
        Case {
            name: "a JSON array",
            body: b"[1, 2]".to_vec(),
            content_type: Some("application/json"),
            mentions: "not a JSON object",
        },
        Case {
            name: "no content type",
            body: valid().to_string().into_bytes(),
            content_type: None,
            mentions: "content_type is missing",
        },
        case("version as a string", with(&["version"], json!("1")), "`version`"),
        case("mode as a number", with(&["mode"], json!(1)), "`mode` must be a string"),
        case("import_id as a number", with(&["import_id"], json!(42)), "`import_id` must be a string"),
        case(
            "import_id with a control character",
            with(&["import_id"], json!("3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e1\u{0}")),
            "`import_id`",
        ),
        case(
            "workspace_id with a control character",
            with(&["workspace_id"], json!("acme\nevil")),
            "`workspace_id`",
        ),
        case("dataset_id with a slash", with(&["dataset_id"], json!("../etc")), "`dataset_id`"),
        case("empty workspace_id", with(&["workspace_id"], json!("")), "`workspace_id`"),
        case("source as a string", with(&["source"], json!("s3://bucket")), "`source` is not an object"),
        case("missing source", without(&["source"]), "`source` is missing"),
        case("bucket with upper case", with(&["source", "bucket"], json!("Acme_Images")), "`source.bucket`"),
        case(
            "role_arn of another service",
            with(&["source", "role_arn"], json!("arn:aws:s3:::bucket")),
            "`source.role_arn`",
        ),
        case(
            "prefixes not a list",
            with(&["source", "prefixes"], json!("a/")),
            "`source.prefixes` must be an array",
        ),
        case(
            "1001 prefixes",
            with(&["source", "prefixes"], json!((0..1001).map(|i| format!("p{i}/")).collect::<Vec<_>>())),
            "`source.prefixes` has 1001 entries",
        ),
        case(
            "a prefix over 1024 bytes",
            with(&["source", "prefixes"], json!(["é".repeat(600)])),
            "`source.prefixes[0]` is 1200 bytes",
        ),
        case(
            "a prefix that is a number",
            with(&["source", "prefixes"], json!([7])),
            "`source.prefixes[0]` must be a string",
        ),
        case(
            "negative max_object_bytes",
            with(&["filter"], json!({"max_object_bytes": -5})),
            "`filter.max_object_bytes`",
        ),
        case("filter as a list", with(&["filter"], json!(["jpg"])), "`filter` must be an object"),
        case("unknown filter field", with(&["filter"], json!({"extension": ["jpg"]})), "`filter.extension`"),
        case("sas_token on S3", with(&["source", "sas_token"], json!("sig=abc")), "`source.sas_token`"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_are_rejected_with_a_reason_and_the_fleet_keeps_running() {
    let env = TestEnv::new().await;
    env.put("a/ok.jpg", b"ok").await;
    let fleet = env.start_default(1).await;
    let cases = cases(&env);
    assert!(cases.len() >= 30, "at least 30 malformed or hostile requests");
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
        // The kept copy is the body with its secrets redacted.
        let kept = rejection::kept_body(&c.body);
        let reason =
            reasons.get(kept.as_slice()).unwrap_or_else(|| panic!("{}: not in tether.rejected", c.name));
        assert!(reason.contains(c.mentions), "{}: reason {reason:?} does not mention {}", c.name, c.mentions);
        // A readable import_id that no import has: a failed import says why.
        let claimed: Option<Uuid> = serde_json::from_slice::<Value>(&c.body)
            .ok()
            .and_then(|v| v["import_id"].as_str().and_then(|s| s.parse().ok()));
        if let Some(id) = claimed {
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
