//! The access API end to end, through the real `tether-api` binary on
//! images that real imports brought in: direct and proxy URLs for S3, GCS
//! and Azure links and for copies, tokens, workspace scoping, the signing
//! window, Range / 304 / CORS on proxied content, forged signatures, and
//! sources that changed or vanished.
//!
//! moto runs with auth off: it serves presigned URLs without checking their
//! signature, so fetching a direct S3 URL proves the URL's shape (path,
//! bucket, key) and the test reads the SigV4 parameters itself; the GCS
//! signature is checked cryptographically with the test key's public half.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tether_tests::api::{Api, API_TOKEN, API_TOKEN_2};
use tether_tests::TestEnv;
use uuid::Uuid;

/// The query parameters of a URL.
fn params(url: &str) -> std::collections::BTreeMap<String, String> {
    reqwest::Url::parse(url)
        .expect("a URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn expires_at(entry: &Value) -> DateTime<Utc> {
    let text = entry["expires_at"].as_str().expect("expires_at");
    assert!(text.ends_with('Z') && !text.contains('.'), "RFC 3339 UTC whole seconds: {text}");
    DateTime::parse_from_rfc3339(text).expect("RFC 3339").to_utc()
}

/// A test's environment with its S3 images imported (see [`s3_images`]),
/// and the `s3://` destination of their copies.
async fn s3_env() -> (TestEnv, String, String) {
    let env = TestEnv::new().await;
    let dest = env.destination_bucket().await;
    let destination = format!("s3://{dest}/copies");
    s3_images(&env, &destination).await;
    (env, dest, destination)
}

/// Imports `keys` of the test's S3 bucket as links into `dataset`, and a
/// copy into `copies`, with the workers writing copies to `destination`.
async fn s3_images(env: &TestEnv, destination: &str) {
    for (key, body) in [
        ("p/a.jpg", &b"jpeg bytes of a"[..]),
        ("p/b.png", b"png bytes of b"),
        ("p/page.html", b"<script>alert(1)</script>"),
    ] {
        env.put(key, body).await;
    }
    let mut worker = env.worker_config();
    worker.destination = Some(destination.to_owned());
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let mut link = env.request("links", &["p/"]);
    link["workspace_id"] = json!("ws-a");
    link["filter"] = json!({ "extensions": ["*"] });
    let mut copy = link.clone();
    copy["import_id"] = json!(Uuid::new_v4());
    copy["dataset_id"] = json!("copies");
    copy["mode"] = json!("copy");
    for request in [link, copy] {
        let status = env.wait_final(env.submit(&request).await).await;
        assert_eq!(status["state"], "succeeded", "{status}");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_links_and_copies_direct_and_proxied() {
    let (env, dest, destination) = s3_env().await;
    let api = env.spawn_api(&[("TETHER_DESTINATION", destination.clone())]).await;
    let links = env.image_ids("links").await;
    let copies = env.image_ids("copies").await;
    let a = links[&format!("s3://{}/p/a.jpg", env.bucket)];
    let b = links[&format!("s3://{}/p/b.png", env.bucket)];
    let page = links[&format!("s3://{}/p/page.html", env.bucket)];
    let a_copy = copies[&format!("s3://{}/p/a.jpg", env.bucket)];

    // Direct: presigned GETs, in the order asked, fetched from the store.
    let before = Utc::now();
    let answer = api.sign("ws-a", &[b, a, a_copy], "direct", 900).await;
    assert_eq!(answer["errors"], json!([]), "{answer}");
    let urls = answer["urls"].as_array().expect("urls");
    let ids: Vec<&str> = urls.iter().map(|u| u["image_id"].as_str().expect("id")).collect();
    assert_eq!(ids, [b.to_string(), a.to_string(), a_copy.to_string()]);
    for (entry, body) in urls.iter().zip([&b"png bytes of b"[..], b"jpeg bytes of a", b"jpeg bytes of a"]) {
        assert_eq!(entry["delivery"], "direct");
        let url = entry["url"].as_str().expect("url");
        let p = params(url);
        assert_eq!(p["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        // Signed as of the window's start, for W + expires_in at most.
        let signed = chrono::NaiveDateTime::parse_from_str(&p["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            .expect("date")
            .and_utc();
        assert_eq!(signed.timestamp() % 300, 0, "X-Amz-Date is the window's start");
        let expiry = expires_at(entry);
        assert_eq!(signed + chrono::Duration::seconds(p["X-Amz-Expires"].parse().expect("n")), expiry);
        assert!(expiry >= before + chrono::Duration::seconds(900) - chrono::Duration::seconds(1));
        assert!(expiry <= before + chrono::Duration::seconds(1200 + 1));
        let fetched = api.http.get(url).send().await.expect("the store answers");
        assert_eq!(fetched.status(), 200, "{url}");
        assert_eq!(fetched.bytes().await.expect("body").as_ref(), body);
    }
    assert!(
        urls[0]["url"].as_str().unwrap_or_default().contains("X-Amz-Security-Token"),
        "a link is signed with the role's session"
    );
    assert!(
        urls[2]["url"].as_str().unwrap_or_default().contains(&format!("/{dest}/copies/")),
        "a copy is signed for the destination"
    );

    // The window: the same URLs again.
    let again = api.sign("ws-a", &[b, a, a_copy], "direct", 900).await;
    assert_eq!(again["urls"], answer["urls"], "the same URL within a window");

    // Proxy: tether-api's own URLs.
    let proxy = api.sign("ws-a", &[a, page, a_copy], "proxy", 60).await;
    let proxied = Api::urls(&proxy);
    assert!(proxied[0].starts_with(&format!("{}/v1/content/{a}?expires=", api.base)), "{}", proxied[0]);
    assert_eq!(
        api.sign("ws-a", &[a, page, a_copy], "proxy", 60).await,
        proxy,
        "every process agrees within a window"
    );
    let got = api.http.get(&proxied[0]).send().await.expect("content");
    assert_eq!(got.status(), 200);
    let headers = got.headers().clone();
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["content-length"], "15");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-security-policy"], "sandbox; default-src 'none'");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(headers.get("content-disposition").is_none());
    let cache = headers["cache-control"].to_str().expect("ascii");
    let max_age: i64 =
        cache.strip_prefix("private, max-age=").expect("private, max-age").parse().expect("seconds");
    assert!((60..=360).contains(&max_age), "{cache}");
    let etag = headers["etag"].to_str().expect("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    assert_eq!(got.bytes().await.expect("body").as_ref(), b"jpeg bytes of a");
    // Not an image type: an attachment.
    let html = api.http.get(&proxied[1]).send().await.expect("content");
    assert_eq!(html.headers()["content-type"], "application/octet-stream");
    assert_eq!(html.headers()["content-disposition"], "attachment");
    // A copy, through the proxy.
    let copy = api.http.get(&proxied[2]).send().await.expect("content");
    assert_eq!(copy.status(), 200);
    assert_eq!(copy.bytes().await.expect("body").as_ref(), b"jpeg bytes of a");

    // Range: one range is 206; past the end 416.
    let part = api.http.get(&proxied[0]).header("range", "bytes=5-9").send().await.expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 5-9/15");
    assert_eq!(part.headers()["content-length"], "5");
    assert_eq!(part.bytes().await.expect("body").as_ref(), b"bytes");
    let tail = api.http.get(&proxied[2]).header("range", "bytes=-4").send().await.expect("range");
    assert_eq!(
        (tail.status(), tail.bytes().await.expect("body").to_vec()),
        (StatusCode::PARTIAL_CONTENT, b"of a".to_vec())
    );
    let past = api.http.get(&proxied[0]).header("range", "bytes=15-").send().await.expect("range");
    assert_eq!(past.status(), 416);
    assert_eq!(past.headers()["content-range"], "bytes */15");
    assert_eq!(past.json::<Value>().await.expect("error")["error"]["code"], "range_not_satisfiable");
    // HEAD: the same headers, no body.
    let head = api.http.head(&proxied[0]).send().await.expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "15");
    assert_eq!(head.headers()["etag"], etag.as_str());
    // If-None-Match: 304 without a body.
    let cached = api.http.get(&proxied[0]).header("if-none-match", &etag).send().await.expect("304");
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"], etag.as_str());

    // CORS: exact origins only; the preflight needs no token or signature.
    let path = proxied[0].split('?').next().expect("path");
    let preflight = api
        .http
        .request(reqwest::Method::OPTIONS, path)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range, if-none-match")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    let methods = h["access-control-allow-methods"].to_str().expect("ascii").to_ascii_uppercase();
    assert!(methods.contains("GET") && methods.contains("HEAD") && !methods.contains("POST"), "{methods}");
    let allowed = h["access-control-allow-headers"].to_str().expect("ascii").to_ascii_lowercase();
    assert!(allowed.contains("range") && allowed.contains("if-none-match"), "{allowed}");
    assert!(h.get("access-control-allow-credentials").is_none());
    let cors =
        api.http.get(&proxied[0]).header("origin", "https://app.example.com").send().await.expect("cors");
    let h = cors.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(h["vary"].to_str().expect("ascii").to_ascii_lowercase().contains("origin"));
    let exposed = h["access-control-expose-headers"].to_str().expect("ascii").to_ascii_lowercase();
    for name in ["etag", "content-range", "accept-ranges", "content-length"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    let other =
        api.http.get(&proxied[0]).header("origin", "https://evil.example.com").send().await.expect("cors");
    assert!(other.headers().get("access-control-allow-origin").is_none(), "another origin is not allowed");

    // Forged, extended and reused signatures are 403.
    let p = params(&proxied[0]);
    let (expires, kid, sig) = (&p["expires"], &p["kid"], &p["sig"]);
    let forged_sig = format!("{}A", &sig[..sig.len() - 1]);
    let later = expires.parse::<i64>().expect("unix") + 60;
    for (what, url) in [
        ("forged", format!("{}/v1/content/{a}?expires={expires}&kid={kid}&sig={forged_sig}", api.base)),
        ("extended", format!("{}/v1/content/{a}?expires={later}&kid={kid}&sig={sig}", api.base)),
        ("another image", format!("{}/v1/content/{b}?expires={expires}&kid={kid}&sig={sig}", api.base)),
        ("unknown key", format!("{}/v1/content/{a}?expires={expires}&kid=other&sig={sig}", api.base)),
        ("no signature", format!("{}/v1/content/{a}?expires={expires}&kid={kid}", api.base)),
        ("nothing", format!("{}/v1/content/{a}", api.base)),
        ("not an id", format!("{}/v1/content/not-an-id?expires={expires}&kid={kid}&sig={sig}", api.base)),
    ] {
        let refused = api.http.get(&url).send().await.expect("answer");
        assert_eq!(refused.status(), 403, "{what}");
        let body: Value = refused.json().await.expect("error object");
        assert_eq!(body["error"]["code"], "forbidden", "{what}");
    }

    // The source changed, or is gone: 410; a copy that is gone: 410 too.
    env.put("p/a.jpg", b"a new version").await;
    env.delete("p/b.png").await;
    let proxy_b = Api::only_url(&api.sign("ws-a", &[b], "proxy", 60).await);
    for (url, code) in [(&proxied[0], "source_changed"), (&proxy_b, "source_missing")] {
        let gone = api.http.get(url.as_str()).send().await.expect("answer");
        assert_eq!(gone.status(), 410, "{code}");
        assert_eq!(gone.json::<Value>().await.expect("error")["error"]["code"], code);
    }
    let copied: Vec<(String, Option<String>)> =
        env.stored("copies").await.into_values().map(|(_, s)| (String::new(), s)).collect();
    let stored =
        copied.iter().find_map(|(_, s)| s.clone().filter(|s| s.ends_with(".jpg"))).expect("the jpg's copy");
    let key = stored.strip_prefix(&format!("s3://{dest}/")).expect("in the destination");
    env.s3.delete_object().bucket(&dest).key(key).send().await.expect("delete the copy");
    let gone = api.http.get(&proxied[2]).send().await.expect("answer");
    assert_eq!(gone.status(), 410);
    assert_eq!(gone.json::<Value>().await.expect("error")["error"]["code"], "copy_missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_and_workspaces_scope_every_answer() {
    let (env, _, _) = s3_env().await;
    let api = env.spawn_api(&[]).await;
    let a = env.image_ids("links").await[&format!("s3://{}/p/a.jpg", env.bucket)];
    let body = json!({ "image_ids": [a] }).to_string();

    for (token, what) in
        [(None, "no token"), (Some("wrong-token-0123456789"), "a wrong token"), (Some(""), "an empty token")]
    {
        let refused = api.post("ws-a", token, &body).await;
        assert_eq!(refused.status(), 401, "{what}");
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        assert_eq!(refused.json::<Value>().await.expect("error")["error"]["code"], "unauthorized");
    }
    // Both tokens of a rotation work; direct is the default delivery.
    for token in [API_TOKEN, API_TOKEN_2] {
        let answer: Value = api.post("ws-a", Some(token), &body).await.json().await.expect("json");
        assert_eq!(answer["urls"][0]["delivery"], "direct", "{answer}");
    }
    // Another workspace's image, and an id that is nobody's: not_found,
    // each id in exactly one list, in the order asked.
    let unknown = Uuid::new_v4();
    for workspace in ["ws-b", "ws-a"] {
        let answer = api.sign(workspace, &[unknown, a], "proxy", 60).await;
        let errors = answer["errors"].as_array().expect("errors");
        assert_eq!(errors[0]["image_id"], unknown.to_string());
        assert_eq!(errors[0]["code"], "not_found");
        assert!(errors[0]["message"].as_str().unwrap_or_default().ends_with("workspace"), "{answer}");
        if workspace == "ws-b" {
            assert_eq!(errors.len(), 2, "another workspace's image is not found: {answer}");
            assert_eq!(errors[1]["code"], "not_found");
            assert_eq!(answer["urls"], json!([]));
        } else {
            assert_eq!(errors.len(), 1);
            assert_eq!(answer["urls"][0]["image_id"], a.to_string());
        }
    }
    // The content needs no token; the OpenAPI document neither.
    let proxy = Api::only_url(&api.sign("ws-a", &[a], "proxy", 60).await);
    assert_eq!(api.http.get(&proxy).send().await.expect("content").status(), 200);
    assert_eq!(
        api.http.get(format!("{}/v1/openapi.json", api.base)).send().await.expect("doc").status(),
        200
    );
    // Unknown paths under /v1/ need a token before they are 404.
    let unknown_path = api.http.get(format!("{}/v1/nothing", api.base)).send().await.expect("answer");
    assert_eq!(unknown_path.status(), 401);
    let unknown_path =
        api.http.get(format!("{}/v1/nothing", api.base)).bearer_auth(API_TOKEN).send().await.expect("answer");
    assert_eq!(unknown_path.status(), 404);
    assert_eq!(unknown_path.json::<Value>().await.expect("error")["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_session_caps_direct_urls() {
    let (env, _, _) = s3_env().await;
    // Sessions of 1,000 s, renewed 900 s before they end: a URL asked for
    // 900 s (up to 1,200 s with the window) must end with its session.
    let api = env
        .spawn_api(&[
            ("TETHER_STS_SESSION_SECS", "1000".into()),
            ("TETHER_STS_REFRESH_MARGIN_SECS", "900".into()),
        ])
        .await;
    let a = env.image_ids("links").await[&format!("s3://{}/p/a.jpg", env.bucket)];
    let before = Utc::now();
    let answer = api.sign("ws-a", &[a], "direct", 900).await;
    let entry = &answer["urls"][0];
    let expiry = expires_at(entry);
    let session_end = before + chrono::Duration::seconds(1000);
    assert!(
        expiry <= session_end - chrono::Duration::seconds(59),
        "{expiry} outlives the session ending {session_end}"
    );
    assert!(expiry >= before + chrono::Duration::seconds(900), "asked 900 s, the session had 1000: {expiry}");
    let p = params(entry["url"].as_str().expect("url"));
    let signed =
        chrono::NaiveDateTime::parse_from_str(&p["X-Amz-Date"], "%Y%m%dT%H%M%SZ").expect("date").and_utc();
    assert_eq!(
        signed + chrono::Duration::seconds(p["X-Amz-Expires"].parse().expect("n")),
        expiry,
        "the URL says what expires_at says"
    );
    // Asked for 12 hours: capped at the session's end, never beyond.
    let long = api.sign("ws-a", &[a], "direct", 43_200).await;
    assert!(expires_at(&long["urls"][0]) <= session_end, "{long}");
    // Proxy URLs do not depend on a session.
    let proxy = api.sign("ws-a", &[a], "proxy", 43_200).await;
    assert!(expires_at(&proxy["urls"][0]) >= before + chrono::Duration::seconds(43_200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tether_api_refuses_to_start_without_what_it_needs() {
    let binary = tether_tests::process::binary("tether-api");
    let good = [
        ("TETHER_API_TOKENS", "aaaaaaaaaaaaaaaaaaaa"),
        ("TETHER_API_PUBLIC_URL", "http://127.0.0.1:1"),
        ("TETHER_SECRETS_KEY", tether_tests::TEST_SECRETS_KEY),
        ("TETHER_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        ("TETHER_API_ADDR", "127.0.0.1:0"),
    ];
    let cases: [(&str, Option<&str>, &str); 7] = [
        ("TETHER_API_TOKENS", None, "TETHER_API_TOKENS is unset"),
        ("TETHER_API_TOKENS", Some("aaaaaaaaaaaaaaaaaaaa,,"), "empty entry"),
        ("TETHER_API_TOKENS", Some("aaaaaaaaaaaaaaaaaaaa, short-one"), "shorter than 16"),
        ("TETHER_SECRETS_KEY", None, "TETHER_SECRETS_KEY is unset"),
        ("TETHER_API_PUBLIC_URL", None, "TETHER_API_PUBLIC_URL is unset"),
        (
            "TETHER_API_ALLOWED_ORIGINS",
            Some("https://a.example.com,*"),
            "TETHER_API_ALLOWED_ORIGINS holds `*`",
        ),
        ("TETHER_SIGN_WINDOW_SECS", Some("0"), "TETHER_SIGN_WINDOW_SECS is 0"),
    ];
    for (name, value, sentence) in cases {
        let mut command = tokio::process::Command::new(&binary);
        command.env_clear().envs(good.iter().filter(|(k, _)| *k != name).map(|(k, v)| (*k, *v)));
        if let Some(value) = value {
            command.env(name, value);
        }
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("exits at once")
            .expect("runs");
        let stderr =
            format!("{}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
        assert!(!output.status.success(), "{name}={value:?} started");
        assert!(stderr.contains(sentence), "{name}={value:?}: {stderr}");
        assert!(
            !stderr.contains("short-one") && !stderr.contains("aaaaaaaaaaaaaaaaaaaa"),
            "a token was printed: {stderr}"
        );
    }
}

/// A service-account key made for this test by openssl: the JSON file
/// tether-api reads, and the public half that verifies its signatures.
struct TestKey {
    json: std::path::PathBuf,
    public: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl TestKey {
    fn new(env: &TestEnv) -> Self {
        let dir = std::env::temp_dir().join(format!("tether-gcs-key-{}", env.id));
        std::fs::create_dir_all(&dir).expect("key directory");
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem"]);
        openssl(&["pkey", "-in", "key.pem", "-pubout", "-out", "public.pem"]);
        let pem = std::fs::read_to_string(dir.join("key.pem")).expect("key.pem");
        let json = json!({
            "type": "service_account", "project_id": "tether-test", "private_key_id": "test",
            "private_key": pem, "client_email": "tether@tether-test.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:1/token",
        });
        std::fs::write(dir.join("key.json"), json.to_string()).expect("key.json");
        Self { json: dir.join("key.json"), public: dir.join("public.pem"), dir }
    }

    /// Checks a V4 signed URL the way GCS does: rebuilds the canonical
    /// request and string-to-sign from the URL alone (Google's V4 process,
    /// written again here), and verifies the signature with the public key.
    fn verify(&self, url: &str) {
        let parsed = reqwest::Url::parse(url).expect("a URL");
        let p = params(url);
        assert_eq!(p["X-Goog-Algorithm"], "GOOG4-RSA-SHA256");
        assert_eq!(p["X-Goog-SignedHeaders"], "host");
        let host = match parsed.port() {
            Some(port) => format!("{}:{port}", parsed.host_str().expect("host")),
            None => parsed.host_str().expect("host").to_owned(),
        };
        const UNRESERVED: &percent_encoding::AsciiSet =
            &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
        let query: Vec<String> = p
            .iter()
            .filter(|(k, _)| *k != "X-Goog-Signature")
            .map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, UNRESERVED)))
            .collect();
        let canonical =
            format!("GET\n{}\n{}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD", parsed.path(), query.join("&"));
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        let scope = p["X-Goog-Credential"].split_once('/').expect("email/scope").1;
        let to_sign = format!("GOOG4-RSA-SHA256\n{}\n{scope}\n{}", p["X-Goog-Date"], hex(digest.as_ref()));
        let signature: Vec<u8> = (0..p["X-Goog-Signature"].len() / 2)
            .map(|i| u8::from_str_radix(&p["X-Goog-Signature"][2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        std::fs::write(self.dir.join("signed.txt"), to_sign).expect("write");
        std::fs::write(self.dir.join("signature.bin"), signature).expect("write");
        let verified = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&self.public)
            .args(["-signature", "signature.bin", "signed.txt"])
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs");
        assert!(
            verified.status.success(),
            "the signature of {url} does not verify: {}",
            String::from_utf8_lossy(&verified.stdout)
        );
    }
}

impl Drop for TestKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcs_links_and_copies_are_signed_verifiably() {
    let env = TestEnv::new().await;
    let key = TestKey::new(&env);
    let source = env.bucket(tether_tests::stores::Provider::Gcs).await;
    source.put("g/one photo.jpg", b"gcs bytes one").await;
    source.put("g/two.png", b"gcs bytes two").await;
    env.put("s/copied.jpg", b"copied to gcs").await;
    let platform = format!("tether-p-{}", env.id);
    let created = reqwest::Client::new()
        .post(format!("{}/storage/v1/b", tether_tests::service_var("STORAGE_EMULATOR_HOST")))
        .json(&json!({ "name": platform }))
        .send()
        .await
        .expect("fake-gcs-server answers");
    assert!(created.status().is_success(), "create the platform's GCS bucket");
    let destination = format!("gs://{platform}/copies");
    let mut scheduler = env.scheduler_config();
    scheduler.gcs_allow_own_identity = true;
    let mut worker = env.worker_config();
    worker.destination = Some(destination.clone());
    let fleet = env.start(vec![scheduler], vec![worker]).await;
    // A link import on Tether's own identity (no impersonated account).
    let mut link = source.request(&env, "gcs-links", &["g/"]);
    link["source"].as_object_mut().expect("source").remove("impersonate_service_account");
    let mut copy = env.request("gcs-copies", &["s/"]);
    copy["mode"] = json!("copy");
    for request in [&link, &copy] {
        let status = env.wait_final(env.submit(request).await).await;
        assert_eq!(status["state"], "succeeded", "{status}");
    }
    fleet.stop().await;

    let api = env
        .spawn_api(&[
            ("GOOGLE_APPLICATION_CREDENTIALS", key.json.display().to_string()),
            ("TETHER_DESTINATION", destination),
        ])
        .await;
    let links = env.image_ids("gcs-links").await;
    let one = links[&source.url("g/one photo.jpg")];
    let two = links[&source.url("g/two.png")];
    let copied = env.image_ids("gcs-copies").await[&format!("s3://{}/s/copied.jpg", env.bucket)];
    let answer = api.sign("ws-test", &[one, two, copied], "direct", 600).await;
    assert_eq!(answer["errors"], json!([]), "{answer}");
    let urls = Api::urls(&answer);
    for url in &urls {
        key.verify(url);
        let p = params(url);
        assert!(p["X-Goog-Credential"].starts_with("tether@tether-test.iam.gserviceaccount.com/"), "{url}");
        let signed = chrono::NaiveDateTime::parse_from_str(&p["X-Goog-Date"], "%Y%m%dT%H%M%SZ")
            .expect("date")
            .and_utc();
        assert_eq!(signed.timestamp() % 300, 0, "signed as of the window's start");
    }
    assert!(urls[0].contains(&format!("/{}/g/one%20photo.jpg?", source.name)), "{}", urls[0]);
    assert!(
        urls[2].contains(&format!("/{platform}/copies/")),
        "a copy is signed for the destination: {}",
        urls[2]
    );
    // The emulator serves path-style URLs to the Host of GCS only; it checks
    // no signature, so this shows the URL names the right object.
    for (url, body) in urls.iter().zip([&b"gcs bytes one"[..], b"gcs bytes two", b"copied to gcs"]) {
        let fetched = api
            .http
            .get(url.as_str())
            .header("host", "storage.googleapis.com")
            .send()
            .await
            .expect("emulator");
        assert_eq!(fetched.status(), 200, "{url}");
        assert_eq!(fetched.bytes().await.expect("body").as_ref(), body);
    }
    // Signatures are kept for their window: the same URLs again.
    assert_eq!(api.sign("ws-test", &[one, two, copied], "direct", 600).await, answer);
    // A longer life is a new signature.
    let longer = Api::only_url(&api.sign("ws-test", &[one], "direct", 900).await);
    assert_ne!(longer, urls[0]);
    key.verify(&longer);

    // Proxy: the link with its generation as ETag, and the copy.
    let proxy = api.sign("ws-test", &[one, copied], "proxy", 60).await;
    let proxied = Api::urls(&proxy);
    let got = api.http.get(&proxied[0]).header("range", "bytes=4-8").send().await.expect("content");
    assert_eq!(got.status(), 206);
    assert_eq!(got.headers()["content-range"], "bytes 4-8/13");
    assert_eq!(got.bytes().await.expect("body").as_ref(), b"bytes");
    let got = api.http.get(&proxied[1]).send().await.expect("content");
    assert_eq!(got.bytes().await.expect("body").as_ref(), b"copied to gcs");
    // A new generation of the object is a changed source.
    source.put("g/one photo.jpg", b"replaced").await;
    let gone = api.http.get(&proxied[0]).send().await.expect("content");
    assert_eq!(gone.status(), 410);
    assert_eq!(gone.json::<Value>().await.expect("error")["error"]["code"], "source_changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_links_and_file_copies_are_proxied_only_and_streams_are_bounded() {
    let env = TestEnv::new().await;
    let container = env.bucket(tether_tests::stores::Provider::Azure).await;
    let big: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    container.put("z/small.webp", b"azure bytes").await;
    container.put("z/big.jpg", &big).await;
    let dir = env.destination_dir();
    let destination = format!("file://{}", dir.display());
    let mut worker = env.worker_config();
    worker.destination = Some(destination.clone());
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let link = container.request(&env, "azure-links", &["z/"]);
    let mut copy = container.request(&env, "azure-copies", &["z/"]);
    copy["mode"] = json!("copy");
    for request in [&link, &copy] {
        let status = env.wait_final(env.submit(request).await).await;
        assert_eq!(status["state"], "succeeded", "{status}");
    }
    fleet.stop().await;
    let api =
        env.spawn_api(&[("TETHER_DESTINATION", destination), ("TETHER_API_MAX_STREAMS", "1".into())]).await;
    let links = env.image_ids("azure-links").await;
    let copies = env.image_ids("azure-copies").await;
    let small = links[&container.url("z/small.webp")];
    let big_link = links[&container.url("z/big.jpg")];
    let small_copy = copies[&container.url("z/small.webp")];

    // Direct: never for Azure links (the SAS stays secret) nor file copies.
    let direct = api.sign("ws-test", &[small, small_copy], "direct", 60).await;
    assert_eq!(direct["urls"], json!([]));
    for error in direct["errors"].as_array().expect("errors") {
        assert_eq!(error["code"], "not_signable", "{direct}");
        assert!(error["message"].as_str().unwrap_or_default().contains("proxy"), "{direct}");
    }
    // Proxy: both served.
    let proxy = api.sign("ws-test", &[small, small_copy, big_link], "proxy", 60).await;
    let proxied = Api::urls(&proxy);
    for url in &proxied[..2] {
        let got = api.http.get(url).send().await.expect("content");
        assert_eq!(got.status(), 200, "{url}");
        assert_eq!(got.headers()["content-type"], "image/webp");
        assert_eq!(got.bytes().await.expect("body").as_ref(), b"azure bytes");
    }
    let part = api.http.get(&proxied[0]).header("range", "bytes=0-4").send().await.expect("range");
    assert_eq!(
        (part.status(), part.bytes().await.expect("body").to_vec()),
        (StatusCode::PARTIAL_CONTENT, b"azure".to_vec())
    );

    // One stream at a time: a client that does not read holds its stream
    // (and only its own); once it goes away, the next is served.
    let holder = api.http.get(&proxied[2]).send().await.expect("headers");
    assert_eq!(holder.status(), 200);
    assert_eq!(holder.headers()["content-length"], big.len().to_string());
    let busy = api.http.get(&proxied[0]).send().await.expect("answer");
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.json::<Value>().await.expect("error")["error"]["code"], "unavailable");
    drop(holder);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = api.http.get(&proxied[2]).send().await.expect("answer");
        if next.status() == 200 {
            let body = next.bytes().await.expect("the whole body");
            assert!(body.as_ref() == big.as_slice(), "16 MiB streamed intact");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the vanished client's stream was never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // file:// copies are read only inside the destination directory.
    let outside = std::env::temp_dir().join(format!("tether-outside-{}", env.id));
    std::fs::write(&outside, b"not a copy").expect("write");
    let link_inside = dir.join("link-to-outside.webp");
    std::os::unix::fs::symlink(&outside, &link_inside).expect("symlink");
    for stored in [
        format!("file://{}", outside.display()),
        format!("file://{}/../{}", dir.display(), outside.file_name().expect("name").to_string_lossy()),
        format!("file://{}", link_inside.display()),
    ] {
        env.execute(
            &format!("UPDATE tether.images SET stored_url = '{stored}' WHERE image_id = $1"),
            &small_copy,
        )
        .await;
        let refused = api.http.get(&proxied[1]).send().await.expect("answer");
        assert_eq!(refused.status(), 410, "{stored}");
        assert_eq!(
            refused.json::<Value>().await.expect("error")["error"]["code"],
            "copy_missing",
            "{stored}"
        );
    }
    let _ = std::fs::remove_file(&outside);

    // The source changed, then vanished: 410 each time.
    container.put("z/small.webp", b"new azure bytes").await;
    let changed = api.http.get(&proxied[0]).send().await.expect("answer");
    assert_eq!(
        (changed.status(), changed.json::<Value>().await.expect("error")["error"]["code"].clone()),
        (StatusCode::GONE, json!("source_changed"))
    );
    container.delete("z/small.webp").await;
    let missing = api.http.get(&proxied[0]).send().await.expect("answer");
    assert_eq!(
        (missing.status(), missing.json::<Value>().await.expect("error")["error"]["code"].clone()),
        (StatusCode::GONE, json!("source_missing"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
