//! The access API's contract (§8) on its own, with `tether-api` run
//! in-process on bulk-loaded image rows (contract §3 allows them): every bad
//! input is the error object with a sentence and the right status, never a
//! 500; an unreachable Postgres is 503; and the OpenAPI document describes
//! the responses the service really gives.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tether_api::ApiConfig;
use tether_shared::config::{LogFormat, StoresConfig};
use tether_shared::secrets::Secret;
use tether_tests::api::{free_port, API_TOKEN};
use tether_tests::{TestEnv, TEST_SECRETS_KEY};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A tether-api in this process; stops when dropped.
struct InProcess {
    base: String,
    metrics: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn config(database_url: &str, metrics_port: u16) -> ApiConfig {
    ApiConfig {
        addr: "127.0.0.1:0".parse().expect("addr"),
        tokens: Some(Secret::new(API_TOKEN)),
        public_url: Some("http://127.0.0.1:1".into()),
        sign_window_secs: 300,
        allowed_origins: String::new(),
        max_streams: 4,
        database_url: Secret::new(database_url),
        db_pool_size: 2,
        db_session: Default::default(),
        metrics_addr: Some(format!("127.0.0.1:{metrics_port}").parse().expect("addr")),
        secrets_key: Some(TEST_SECRETS_KEY.parse().expect("key")),
        previous_secrets_keys: Vec::new(),
        log_format: LogFormat::Text,
        sts_refresh_margin_secs: 900,
        sts_session_secs: 21_600,
        stores: StoresConfig {
            s3_force_path_style: true,
            storage_emulator_host: None,
            azure_blob_endpoint: "http://127.0.0.1:1/{account}".into(),
            gcs_allow_own_identity: false,
        },
        destination: None,
        google_application_credentials: None,
    }
}

async fn start(database_url: &str) -> InProcess {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let metrics_port = free_port();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let config = config(database_url, metrics_port);
    tokio::spawn(async move { tether_api::serve(config, listener, token).await.expect("tether-api serves") });
    InProcess {
        base,
        metrics: format!("http://127.0.0.1:{metrics_port}"),
        http: reqwest::Client::new(),
        stop,
    }
}

/// Bulk-loads `n` link images of workspace `ws-c` (no import needed for
/// proxy URLs).
async fn bulk_load(env: &TestEnv, n: usize) -> Vec<Uuid> {
    env.store.migrate().await.expect("migrations");
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        env.execute(
            "INSERT INTO tether.images (image_id, import_id, workspace_id, dataset_id, source_url, size_bytes, etag, storage)
             VALUES ($1::uuid, gen_random_uuid(), 'ws-c', 'bulk', 's3://bulk-bucket/' || $1::uuid::text || '.jpg', 10, 'e', 'link')",
            id,
        )
        .await;
    }
    ids
}

/// `POST /v1/workspaces/{workspace}/signed-urls` with the token and `body`.
fn sign(
    api: &InProcess,
    workspace: &str,
    content_type: Option<&str>,
    body: String,
) -> reqwest::RequestBuilder {
    let request = api
        .http
        .post(format!("{}/v1/workspaces/{workspace}/signed-urls", api.base))
        .bearer_auth(API_TOKEN)
        .body(body);
    match content_type {
        Some(ct) => request.header("content-type", ct),
        None => request,
    }
}

/// Asserts the contract's error object, and returns its message.
async fn error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status, "expected {code}");
    assert_eq!(response.headers()["content-type"], "application/json", "{code}");
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    let message = body["error"]["message"].as_str().expect("a message").to_owned();
    assert!(message.len() > 20 && !message.ends_with(' '), "a sentence: {message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_the_error_object_with_a_sentence() {
    let env = TestEnv::new().await;
    let ids = bulk_load(&env, 1).await;
    let api = start(&env.database_url).await;
    let url = format!("{}/v1/workspaces/ws-c/signed-urls", api.base);
    let post = |body: String, content_type: Option<&str>| sign(&api, "ws-c", content_type, body).send();
    let id = ids[0];
    let many: Vec<Uuid> = (0..1001).map(|_| Uuid::new_v4()).collect();
    let cases: Vec<(String, &str)> = vec![
        ("{\"image_ids\": [".into(), "not valid JSON"),
        ("[1, 2]".into(), "not a JSON object"),
        (
            json!({ "image_ids": [id], "deliver": "proxy" }).to_string(),
            "`deliver` is not part of the request",
        ),
        (json!({ "image_ids": ["123"] }).to_string(), "`image_ids[0]` is \"123\", not an image id"),
        (json!({ "image_ids": [id, id] }).to_string(), "`image_ids[1]` repeats"),
        (json!({ "image_ids": [] }).to_string(), "has 0 ids"),
        (json!({ "image_ids": many }).to_string(), "has 1001 ids"),
        (json!({}).to_string(), "`image_ids` is missing"),
        (json!({ "image_ids": [id], "expires_in_seconds": 59 }).to_string(), "`expires_in_seconds` is 59"),
        (
            json!({ "image_ids": [id], "expires_in_seconds": 43201 }).to_string(),
            "`expires_in_seconds` is 43201",
        ),
        (
            json!({ "image_ids": [id], "expires_in_seconds": "900" }).to_string(),
            "`expires_in_seconds` is \"900\"",
        ),
        (json!({ "image_ids": [id], "delivery": "cdn" }).to_string(), "`delivery` is \"cdn\""),
    ];
    for (body, sentence) in cases {
        let message = error(
            post(body.clone(), Some("application/json")).await.expect("answer"),
            400,
            "invalid_request",
        )
        .await;
        assert!(message.contains(sentence), "{body}: {message}");
    }
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let body = json!({ "image_ids": [id] }).to_string();
        let message =
            error(post(body, content_type).await.expect("answer"), 415, "unsupported_media_type").await;
        assert!(message.contains("application/json"), "{message}");
    }
    // A client of its own: the server closes a connection whose body it did
    // not read, which a pooled connection would then trip on.
    let huge = format!("{{\"image_ids\": [\"{}\"]}}", "x".repeat(1024 * 1024 + 10));
    let huge = reqwest::Client::new()
        .post(&url)
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("answer");
    error(huge, 413, "payload_too_large").await;
    // A workspace id that cannot be one.
    let bad = sign(&api, "-bad", Some("application/json"), json!({ "image_ids": [id] }).to_string());
    let bad = bad.send().await.expect("answer");
    assert!(error(bad, 400, "invalid_request").await.contains("workspace id"));
    // Wrong method, unknown paths.
    let wrong = api.http.get(&url).bearer_auth(API_TOKEN).send().await.expect("answer");
    assert!(wrong.headers().get("allow").is_some(), "405 says what is allowed");
    error(wrong, 405, "method_not_allowed").await;
    let wrong = api.http.delete(format!("{}/v1/content/{id}", api.base)).send().await.expect("answer");
    error(wrong, 405, "method_not_allowed").await;
    for path in ["/v1/workspaces/ws-c", "/v1/nothing/at/all", "/nothing"] {
        let response =
            api.http.get(format!("{}{path}", api.base)).bearer_auth(API_TOKEN).send().await.expect("answer");
        error(response, 404, "not_found").await;
    }
    // A good request still works after all that.
    let ok = post(json!({ "image_ids": [id], "delivery": "proxy" }).to_string(), Some("application/json"))
        .await
        .expect("answer");
    assert_eq!(ok.status(), 200);

    // Postgres unreachable: 503, and /readyz says so.
    let down = start("postgres://tether@127.0.0.1:1/none").await;
    let response = sign(&down, "ws-c", Some("application/json"), json!({ "image_ids": [id] }).to_string());
    let response = response.send().await.expect("answer");
    assert!(error(response, 503, "unavailable").await.contains("Postgres"));
    let ready = down.http.get(format!("{}/readyz", down.metrics)).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let ready = api.http.get(format!("{}/readyz", api.metrics)).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "readiness is about Postgres only (no RabbitMQ here)");
    let metrics = tether_tests::api::text(&format!("{}/metrics", api.metrics)).await;
    assert!(metrics.contains("tether_api_requests_total{route=\"/v1/workspaces/{workspace_id}/signed-urls\",status_class=\"4xx\"}"), "{metrics}");
    assert!(
        metrics.contains("tether_api_urls_signed_total{delivery=\"proxy\",provider=\"s3\"} 1"),
        "{metrics}"
    );
}

/// Checks `value` against a JSON schema of the document (the subset utoipa
/// writes: `$ref`, `type` (one or a list), `properties`, `required`,
/// `items`, `enum`, `format: uuid`); returns what does not fit.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return check(doc, &doc["components"]["schemas"][name], value, at, problems);
    }
    if let Some(options) = schema["oneOf"].as_array().or_else(|| schema["anyOf"].as_array()) {
        let fits = options.iter().any(|o| {
            let mut p = Vec::new();
            check(doc, o, value, at, &mut p);
            p.is_empty()
        });
        if !fits {
            problems.push(format!("{at}: {value} fits none of {schema}"));
        }
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let fits = types.is_empty() || types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !fits {
        problems.push(format!("{at}: {kind}, the document says {types:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            problems.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if schema["format"] == "uuid" && value.as_str().is_some_and(|s| Uuid::try_parse(s).is_err()) {
        problems.push(format!("{at}: {value} is not a uuid"));
    }
    if let Value::Object(fields) = value {
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !fields.contains_key(required) {
                problems.push(format!("{at}: `{required}` is missing"));
            }
        }
        for (name, field) in fields {
            match schema["properties"].get(name) {
                Some(property) => check(doc, property, field, &format!("{at}.{name}"), problems),
                None => problems.push(format!("{at}: `{name}` is not in the document")),
            }
        }
    }
    if let Value::Array(items) = value {
        for (i, item) in items.iter().enumerate() {
            check(doc, &schema["items"], item, &format!("{at}[{i}]"), problems);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_real_responses() {
    let env = TestEnv::new().await;
    let ids = bulk_load(&env, 2).await;
    let api = start(&env.database_url).await;
    let doc: Value = api
        .http
        .get(format!("{}/v1/openapi.json", api.base))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("JSON");
    assert!(doc["openapi"].as_str().unwrap_or_default().starts_with('3'), "OpenAPI 3: {}", doc["openapi"]);
    let sign_path = "/v1/workspaces/{workspace_id}/signed-urls";
    let content_path = "/v1/content/{image_id}";
    assert!(doc["paths"][sign_path]["post"]["security"].is_array(), "the bearer token is documented");
    assert!(doc["paths"][content_path]["get"].is_object() && doc["paths"][content_path]["head"].is_object());

    let post = |token: Option<&str>, content_type: &str, body: String| {
        let mut request = api
            .http
            .post(format!("{}/v1/workspaces/ws-c/signed-urls", api.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // Real responses: (path, method, response).
    let mut responses: Vec<(&str, &str, reqwest::Response)> = Vec::new();
    let mixed = json!({ "image_ids": [ids[0], Uuid::new_v4(), ids[1]], "delivery": "proxy" }).to_string();
    let proxied = post(Some(API_TOKEN), "application/json", mixed.clone()).await.expect("answer");
    let proxied: Value = proxied.json().await.expect("json");
    let content_url =
        proxied["urls"][0]["url"].as_str().expect("url").replace("http://127.0.0.1:1", &api.base);
    responses.push((
        sign_path,
        "post",
        post(Some(API_TOKEN), "application/json", mixed).await.expect("answer"),
    ));
    let direct = json!({ "image_ids": [ids[0]] }).to_string();
    responses.push((
        sign_path,
        "post",
        post(Some(API_TOKEN), "application/json", direct.clone()).await.expect("answer"),
    ));
    responses.push((
        sign_path,
        "post",
        post(Some(API_TOKEN), "application/json", "{".into()).await.expect("answer"),
    ));
    responses.push((
        sign_path,
        "post",
        post(None, "application/json", direct.clone()).await.expect("answer"),
    ));
    responses.push((sign_path, "post", post(Some(API_TOKEN), "text/plain", direct).await.expect("answer")));
    let forged = content_url.replace("sig=", "sig=A");
    responses.push((content_path, "get", api.http.get(&forged).send().await.expect("answer")));
    // The bulk-loaded bucket has no import: the store is not reachable.
    responses.push((content_path, "get", api.http.get(&content_url).send().await.expect("answer")));
    // Last: the server closes a connection whose body it did not read.
    responses.push((
        sign_path,
        "post",
        post(Some(API_TOKEN), "application/json", "x".repeat(2 << 20)).await.expect("answer"),
    ));

    let mut seen = BTreeMap::new();
    for (path, method, response) in responses {
        let status = response.status().as_u16().to_string();
        let operation = &doc["paths"][path][method];
        let documented = &operation["responses"][&status];
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which the document does not list"
        );
        let body: Value = response.json().await.expect("a JSON body");
        let schema = &documented["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {path} {status}: no JSON schema in the document");
        let mut problems = Vec::new();
        check(&doc, schema, &body, "body", &mut problems);
        assert!(
            problems.is_empty(),
            "{method} {path} {status} differs from the document: {problems:?}\n{body}"
        );
        *seen.entry(format!("{method} {status}")).or_insert(0) += 1;
    }
    for expected in ["post 200", "post 400", "post 401", "post 413", "post 415", "get 403", "get 502"] {
        assert!(seen.contains_key(expected), "no {expected} among {seen:?}");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
