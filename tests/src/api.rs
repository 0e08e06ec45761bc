//! The access API (`tether-api`) in tests: a real binary started on this
//! test's database with a free port, its log captured, and the requests the
//! tests make to it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::process::{self, Process};
use crate::{TestEnv, TEST_SECRETS_KEY};

/// The platform's bearer token, and a second one (a rotation).
pub const API_TOKEN: &str = "test-api-token-0123456789";
pub const API_TOKEN_2: &str = "second-api-token-abcdefghij";

/// A running `tether-api` process.
#[derive(Debug)]
pub struct Api {
    /// `http://127.0.0.1:PORT`, also its public URL.
    pub base: String,
    pub http: reqwest::Client,
    process: Process,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl TestEnv {
    /// Starts the real `tether-api` binary on this test's database, with
    /// both test tokens, the test secrets key and `settings` on top; waits
    /// until it answers.
    pub async fn spawn_api(&self, settings: &[(&str, String)]) -> Api {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut command = process::command("tether-api");
        command
            .env("TETHER_API_ADDR", format!("127.0.0.1:{port}"))
            .env("TETHER_API_PUBLIC_URL", &base)
            .env("TETHER_API_TOKENS", format!("{API_TOKEN}, {API_TOKEN_2}"))
            .env("TETHER_DATABASE_URL", &self.database_url)
            .env("TETHER_SECRETS_KEY", TEST_SECRETS_KEY)
            .env("TETHER_S3_FORCE_PATH_STYLE", "true")
            .env("TETHER_API_ALLOWED_ORIGINS", "https://app.example.com")
            .env("RUST_LOG", "info")
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())));
        let process = Process::spawn("tether-api", command);
        let api = Api { base, http: reqwest::Client::new(), process };
        api.wait_ready().await;
        api
    }

    /// source_url → image_id of every image of `dataset`.
    pub async fn image_ids(&self, dataset: &str) -> BTreeMap<String, Uuid> {
        self.query("SELECT source_url, image_id FROM tether.images WHERE dataset_id = $1", &[&dataset])
            .await
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

impl Api {
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/v1/openapi.json", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tether-api did not answer within 30 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything the process wrote so far.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    /// `POST /v1/workspaces/{workspace}/signed-urls` with the first token.
    pub async fn sign(&self, workspace: &str, ids: &[Uuid], delivery: &str, expires_in: u32) -> Value {
        let body = json!({ "image_ids": ids, "delivery": delivery, "expires_in_seconds": expires_in });
        let response = self.post(workspace, Some(API_TOKEN), &body.to_string()).await;
        assert_eq!(response.status(), 200, "signing failed");
        response.json().await.expect("a JSON answer")
    }

    /// The signed-urls endpoint with any token and body (as JSON).
    pub async fn post(&self, workspace: &str, token: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/workspaces/{workspace}/signed-urls", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("tether-api answers")
    }

    /// The URLs of an answer, in its order.
    pub fn urls(answer: &Value) -> Vec<String> {
        let urls = answer["urls"].as_array().unwrap_or_else(|| panic!("no urls in {answer}"));
        urls.iter().map(|u| u["url"].as_str().expect("a url").to_owned()).collect()
    }

    /// The one URL of a one-id answer.
    pub fn only_url(answer: &Value) -> String {
        assert_eq!(answer["errors"], json!([]), "{answer}");
        answer["urls"][0]["url"].as_str().expect("a url").to_owned()
    }
}

/// The body of a GET of `url` (the metrics, say), as text.
pub async fn text(url: &str) -> String {
    let response = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}
