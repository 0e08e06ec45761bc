//! The JSON Schemas of `docs/schemas/` (draft 2020-12) against real
//! messages: the ImportRequests the test suite sends, the contract's own
//! examples, and the FinishedEvents a running fleet publishes for link and
//! copy imports that succeed, partly succeed and fail. A table of requests
//! also holds the schema to Tether's own validation: where the schema can
//! say a rule, both accept or both refuse.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jsonschema::Validator;
use serde_json::{json, Value};
use tether_shared::contract::{parse_request, ValidationOptions};
use tether_tests::stores::Provider;
use tether_tests::TestEnv;

/// A schema of `docs/schemas/`, itself checked against the draft 2020-12
/// meta-schema, validating formats (`uuid`, `date-time`) too.
fn schema(name: &str) -> Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
    if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("{name} is not a valid draft 2020-12 schema: {error}");
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
}

fn request_schema() -> Validator {
    schema("import-request.schema.json")
}

fn event_schema() -> Validator {
    schema("finished-event.schema.json")
}

/// Every way `instance` breaks `schema`, one line each (empty: valid).
fn violations(schema: &Validator, instance: &Value) -> Vec<String> {
    schema.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

fn assert_valid(schema: &Validator, what: &str, instance: &Value) {
    let found = violations(schema, instance);
    assert!(found.is_empty(), "{what} breaks its schema: {found:#?}\n{instance:#}");
}

/// Tether's own verdict on a request body (the operator's GCS option off).
fn tether_accepts(request: &Value) -> Result<(), String> {
    parse_request(request.to_string().as_bytes(), Some("application/json"), ValidationOptions::default())
        .map(|_| ())
        .map_err(|r| r.reason)
}

/// Takes `field` out of the object `value`.
fn remove(value: &mut Value, field: &str) {
    if let Some(object) = value.as_object_mut() {
        object.remove(field);
    }
}

const ID: &str = "3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e10";

/// The contract's example request (§2), and its other two sources.
fn contract_examples() -> Vec<(&'static str, Value)> {
    let s3 = json!({
        "version": 1, "import_id": ID, "workspace_id": "acme", "dataset_id": "street-scenes", "mode": "link",
        "source": {
            "provider": "s3", "bucket": "acme-images", "region": "eu-central-1",
            "prefixes": ["2024/06/", "2024/07/"],
            "role_arn": "arn:aws:iam::111122223333:role/platform-import",
            "external_id": "7ed6d782-58b9-4b82-9f7e-a7d53c26e7f8"
        },
        "filter": { "extensions": ["jpg", "jpeg", "png"], "max_object_bytes": 104857600 }
    });
    let with_source = |source: Value| {
        let mut request = s3.clone();
        request["source"] = source;
        request
    };
    let gcs = with_source(json!({ "provider": "gcs", "bucket": "acme-images", "prefixes": ["raw/"],
        "impersonate_service_account": "importer@acme.iam.gserviceaccount.com" }));
    let azure = with_source(json!({ "provider": "azure", "account": "acmestorage", "container": "images",
        "prefixes": [""], "sas_token": "sv=2022-11-02&ss=b&srt=co&sp=rl&sig=..." }));
    vec![("contract s3", s3), ("contract gcs", gcs), ("contract azure", azure)]
}

#[test]
fn the_contract_examples_match_the_schemas() {
    let requests = request_schema();
    for (name, request) in contract_examples() {
        assert_valid(&requests, name, &request);
        tether_accepts(&request).unwrap_or_else(|reason| panic!("{name}: Tether refuses it: {reason}"));
    }
    let event = json!({ "version": 1, "import_id": ID, "revision": 1, "workspace_id": "acme",
        "dataset_id": "street-scenes", "state": "partially_succeeded", "objects_listed": 1200,
        "objects_imported": 1180, "objects_skipped": 15, "objects_failed": 5, "bytes_copied": 0,
        "error": null, "finished_at": "2026-11-28T10:00:00Z" });
    assert_valid(&event_schema(), "contract event", &event);
}

/// Changes to the contract's S3 example, and whether the contract allows
/// the result. The schema and Tether must both agree with the table.
#[test]
fn the_request_schema_and_tether_agree_on_what_is_valid() {
    type Change = fn(&mut Value);
    let cases: Vec<(&str, Change, bool)> = vec![
        ("as it is", |_| {}, true),
        ("no filter", |r| remove(r, "filter"), true),
        ("no prefixes", |r| remove(&mut r["source"], "prefixes"), true),
        ("no region", |r| remove(&mut r["source"], "region"), true),
        ("every extension", |r| r["filter"]["extensions"] = json!(["*"]), true),
        ("upper-case extensions", |r| r["filter"]["extensions"] = json!(["JPG", "Png"]), true),
        ("copy mode", |r| r["mode"] = json!("copy"), true),
        ("odd prefixes", |r| r["source"]["prefixes"] = json!(["a/../b", "a//b", "x y/", "é/", ""]), true),
        ("a 128-character id", |r| r["dataset_id"] = json!("d".repeat(128)), true),
        ("missing import_id", |r| remove(r, "import_id"), false),
        ("missing version", |r| remove(r, "version"), false),
        ("missing mode", |r| remove(r, "mode"), false),
        ("missing source", |r| remove(r, "source"), false),
        ("missing workspace_id", |r| remove(r, "workspace_id"), false),
        ("missing role_arn", |r| remove(&mut r["source"], "role_arn"), false),
        ("missing external_id", |r| remove(&mut r["source"], "external_id"), false),
        ("missing provider", |r| remove(&mut r["source"], "provider"), false),
        ("a misspelt field", |r| r["prefix"] = json!("2024/"), false),
        ("a misspelt source field", |r| r["source"]["prefix"] = json!("2024/"), false),
        ("another provider's field", |r| r["source"]["sas_token"] = json!("sig=x"), false),
        ("an unknown filter field", |r| r["filter"]["min_object_bytes"] = json!(1), false),
        ("version 2", |r| r["version"] = json!(2), false),
        ("version as text", |r| r["version"] = json!("1"), false),
        ("import_id not a UUID", |r| r["import_id"] = json!("import-1"), false),
        ("mode move", |r| r["mode"] = json!("move"), false),
        ("provider ftp", |r| r["source"]["provider"] = json!("ftp"), false),
        ("workspace_id starting with a dot", |r| r["workspace_id"] = json!(".acme"), false),
        ("a 129-character id", |r| r["dataset_id"] = json!("d".repeat(129)), false),
        ("empty prefixes", |r| r["source"]["prefixes"] = json!([]), false),
        ("1001 prefixes", |r| r["source"]["prefixes"] = json!(vec!["p/"; 1001]), false),
        ("a control character in a prefix", |r| r["source"]["prefixes"] = json!(["a\tb/"]), false),
        ("a prefix of 1025 characters", |r| r["source"]["prefixes"] = json!(["p".repeat(1025)]), false),
        ("a null region", |r| r["source"]["region"] = Value::Null, false),
        ("an upper-case bucket", |r| r["source"]["bucket"] = json!("Acme-Images"), false),
        ("a bucket with ..", |r| r["source"]["bucket"] = json!("acme..images"), false),
        ("an IP address as bucket", |r| r["source"]["bucket"] = json!("192.168.1.1"), false),
        ("a role ARN of another service", |r| r["source"]["role_arn"] = json!("arn:aws:s3:::acme"), false),
        ("an ExternalId with a space", |r| r["source"]["external_id"] = json!("ext 1"), false),
        ("no extensions", |r| r["filter"]["extensions"] = json!([]), false),
        ("an extension with its dot", |r| r["filter"]["extensions"] = json!([".jpg"]), false),
        ("max_object_bytes 0", |r| r["filter"]["max_object_bytes"] = json!(0), false),
        ("max_object_bytes negative", |r| r["filter"]["max_object_bytes"] = json!(-1), false),
        ("a body that is an array", |r| *r = json!([1]), false),
    ];
    let schema = request_schema();
    for (name, change, valid) in cases {
        let mut request = contract_examples().remove(0).1;
        change(&mut request);
        let found = violations(&schema, &request);
        assert_eq!(found.is_empty(), valid, "{name}: the schema says {found:#?}");
        let tether = tether_accepts(&request);
        assert_eq!(tether.is_ok(), valid, "{name}: Tether says {tether:?}");
    }
}

/// The same for the other two providers' sources.
#[test]
fn gcs_and_azure_sources_are_held_to_their_own_rules() {
    let cases: Vec<(&str, Value, bool)> = vec![
        ("gcs without a service account", json!({"provider": "gcs", "bucket": "acme-images"}), true),
        ("gcs, a bucket with dots", json!({"provider": "gcs", "bucket": "images.acme.example"}), true),
        ("gcs, a 63-character bucket", json!({"provider": "gcs", "bucket": "b".repeat(63)}), true),
        ("gcs, a 64-character bucket", json!({"provider": "gcs", "bucket": "b".repeat(64)}), false),
        (
            "gcs, a dotted bucket with a 64-character part",
            json!({"provider": "gcs", "bucket": format!("{}.acme", "b".repeat(64))}),
            false,
        ),
        (
            "gcs, an appspot account",
            json!({"provider": "gcs", "bucket": "acme-images", "impersonate_service_account": "acme-prod@appspot.gserviceaccount.com"}),
            true,
        ),
        (
            "gcs, a compute account",
            json!({"provider": "gcs", "bucket": "acme-images", "impersonate_service_account": "123456789-compute@developer.gserviceaccount.com"}),
            true,
        ),
        (
            "gcs, a personal email",
            json!({"provider": "gcs", "bucket": "acme-images", "impersonate_service_account": "importer@evil.com"}),
            false,
        ),
        (
            "gcs, an account name too short",
            json!({"provider": "gcs", "bucket": "acme-images", "impersonate_service_account": "x@acme.iam.gserviceaccount.com"}),
            false,
        ),
        (
            "gcs, a look-alike domain",
            json!({"provider": "gcs", "bucket": "acme-images", "impersonate_service_account": "importer@acme.iam.gserviceaccount.com.evil.com"}),
            false,
        ),
        (
            "gcs with role_arn",
            json!({"provider": "gcs", "bucket": "acme-images", "role_arn": "arn:aws:iam::111122223333:role/r"}),
            false,
        ),
        (
            "azure, a token with its ?",
            json!({"provider": "azure", "account": "acmestorage", "container": "images", "sas_token": "?sv=1&sp=rl&sig=abc"}),
            true,
        ),
        (
            "azure without sas_token",
            json!({"provider": "azure", "account": "acmestorage", "container": "images"}),
            false,
        ),
        (
            "azure, a token without sig=",
            json!({"provider": "azure", "account": "acmestorage", "container": "images", "sas_token": "sv=1&sp=rl"}),
            false,
        ),
        (
            "azure, a token with a newline",
            json!({"provider": "azure", "account": "acmestorage", "container": "images", "sas_token": "sv=1&sig=x\n"}),
            false,
        ),
        (
            "azure, a container with --",
            json!({"provider": "azure", "account": "acmestorage", "container": "my--images", "sas_token": "sig=x"}),
            false,
        ),
        (
            "azure, an upper-case account",
            json!({"provider": "azure", "account": "AcmeStorage", "container": "images", "sas_token": "sig=x"}),
            false,
        ),
        (
            "azure with bucket",
            json!({"provider": "azure", "account": "acmestorage", "container": "images", "bucket": "x", "sas_token": "sig=x"}),
            false,
        ),
    ];
    let schema = request_schema();
    for (name, source, valid) in cases {
        let mut request = contract_examples().remove(0).1;
        request["source"] = source;
        let found = violations(&schema, &request);
        assert_eq!(found.is_empty(), valid, "{name}: the schema says {found:#?}");
        // Tether asks for a service account unless the operator allows its own identity.
        let options = ValidationOptions { gcs_allow_own_identity: true, destination_root: None };
        let tether = parse_request(request.to_string().as_bytes(), Some("application/json"), options);
        assert_eq!(tether.is_ok(), valid, "{name}: Tether says {:?}", tether.err());
    }
}

#[test]
fn the_event_schema_refuses_what_the_contract_does_not_allow() {
    let event = json!({ "version": 1, "import_id": ID, "revision": 1, "workspace_id": "acme",
        "dataset_id": "d", "state": "succeeded", "objects_listed": 1, "objects_imported": 1,
        "objects_skipped": 0, "objects_failed": 0, "bytes_copied": 0, "error": null,
        "finished_at": "2026-11-28T10:00:00.123456Z" });
    let schema = event_schema();
    assert_valid(&schema, "an event", &event);
    let mut more = event.clone();
    more["new_field"] = json!(1);
    assert_valid(&schema, "an event with a field the contract may add", &more);
    type Change = fn(&mut Value);
    let broken: Vec<(&str, Change)> = vec![
        ("no revision", |e| remove(e, "revision")),
        ("no error", |e| remove(e, "error")),
        ("no finished_at", |e| remove(e, "finished_at")),
        ("a state that is not final", |e| e["state"] = json!("running")),
        ("revision 0", |e| e["revision"] = json!(0)),
        ("a negative count", |e| e["objects_failed"] = json!(-1)),
        ("a count as text", |e| e["objects_listed"] = json!("1")),
        ("finished_at not a time", |e| e["finished_at"] = json!("yesterday")),
        ("import_id not a UUID", |e| e["import_id"] = json!("x")),
    ];
    for (name, change) in broken {
        let mut event = event.clone();
        change(&mut event);
        assert!(!violations(&schema, &event).is_empty(), "{name}: the schema takes {event}");
    }
}

/// The requests the suite's helpers build (`TestEnv::request`, and each
/// provider's `TestBucket::request`) are what the platform may send.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_requests_the_tests_send_match_the_schema() {
    let env = TestEnv::new().await;
    let schema = request_schema();
    let mut requests = vec![("TestEnv::request".to_owned(), env.request("d", &["a/", "b/"]))];
    let mut copy = env.request("d", &["a/"]);
    copy["mode"] = json!("copy");
    copy["filter"] = json!({"extensions": ["*"], "max_object_bytes": 200_000});
    requests.push(("a copy request with a filter".to_owned(), copy));
    for provider in [Provider::S3, Provider::Gcs, Provider::Azure] {
        let bucket = env.bucket(provider).await;
        requests.push((format!("{provider:?} TestBucket::request"), bucket.request(&env, "d", &["x/"])));
    }
    for (name, request) in &requests {
        assert_valid(&schema, name, request);
        tether_accepts(request).unwrap_or_else(|reason| panic!("{name}: Tether refuses it: {reason}"));
    }
}

/// A fleet's FinishedEvents, for link and copy imports that succeed, partly
/// succeed and fail, and for a refused request, all match the schema and
/// say what the status row says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_finished_events_a_fleet_publishes_match_the_schema() {
    let env = TestEnv::new().await;
    env.put_many(["ok/a.jpg", "ok/b.png", "ok/notes.txt"].map(String::from)).await;
    env.put("mixed/small.jpg", b"small").await;
    env.put("mixed/big.jpg", &[7u8; 4096]).await;
    let destination = env.destination_bucket().await;
    let mut worker = env.worker_config();
    worker.destination = Some(format!("s3://{destination}/copies"));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;

    let request = |dataset: &str, prefix: &str, mode: &str, max_object_bytes: u64| {
        let mut r = env.request(dataset, &[prefix]);
        r["mode"] = json!(mode);
        r["filter"] = json!({ "max_object_bytes": max_object_bytes });
        r
    };
    let imports = [
        ("link, succeeded", request("link-ok", "ok/", "link", 1000), "succeeded"),
        ("link, partially succeeded", request("link-mixed", "mixed/", "link", 1000), "partially_succeeded"),
        ("copy, succeeded", request("copy-ok", "ok/", "copy", 1000), "succeeded"),
        ("copy, partially succeeded", request("copy-mixed", "mixed/", "copy", 1000), "partially_succeeded"),
        ("copy, failed", request("copy-failed", "mixed/", "copy", 1), "failed"),
        ("link, nothing found", request("link-empty", "none/", "link", 1000), "failed"),
    ];
    let mut expected = BTreeMap::new();
    for (name, request, state) in &imports {
        expected.insert(env.submit(request).await, (*name, *state));
    }
    // Refused, with a readable import_id: a failed import and its event.
    let mut refused = env.request("refused", &["ok/"]);
    refused["workspace_id"] = json!("not a workspace!");
    expected.insert(env.submit(&refused).await, ("refused request", "failed"));

    for (id, (name, state)) in &expected {
        let status = env.wait_final_within(*id, Duration::from_secs(60)).await;
        assert_eq!(status["state"], *state, "{name}: {status}");
    }
    let events = env.finished_events(expected.len()).await;
    assert_eq!(events.len(), expected.len(), "{events:#?}");
    let schema = event_schema();
    for event in &events {
        let id = event["import_id"].as_str().and_then(|s| s.parse().ok()).expect("an import_id");
        let (name, state) = expected[&id];
        assert_valid(&schema, name, event);
        let status = env.status(id).await.expect("a status row");
        assert_eq!(event["state"], state, "{name}: {event}");
        for field in ["objects_listed", "objects_imported", "objects_failed", "bytes_copied", "error"] {
            assert_eq!(event[field], status[field], "{name}: {field} differs from the status row");
        }
    }
    let copied = events.iter().find(|e| e["dataset_id"] == "copy-ok").expect("the copy's event");
    assert_eq!(copied["bytes_copied"], json!(2 * "ok/a.jpg".len()), "{copied}");
    fleet.stop().await;
}
