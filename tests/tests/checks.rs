//! Connection checks (contract §9) against real stores: S3 on the moto that
//! enforces signatures and trust policies (each test with its own IAM user
//! as Tether's identity, its own role and bucket), Azure Blob on Azurite,
//! GCS on fake-gcs-server; a store that accepts connections and never
//! answers; and `tetherctl check` and `tetherctl setup aws`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether_shared::checks::setup::AwsSetup;
use tether_shared::checks::{CheckRequest, Checker, Report, Status};
use tether_shared::config::StoresConfig;
use tether_shared::contract::ValidationOptions;
use tether_tests::moto_auth::AwsAccount;
use tether_tests::stores::Provider;
use tether_tests::{captured_logs, service_var, TestEnv};
use uuid::Uuid;

const ORIGIN: &str = "https://app.example.com";
const EXTERNAL_ID: &str = "ws-7ed6d782";

fn stores() -> StoresConfig {
    StoresConfig {
        s3_force_path_style: true,
        storage_emulator_host: Some(service_var("STORAGE_EMULATOR_HOST")),
        azure_blob_endpoint: service_var("TETHER_AZURE_BLOB_ENDPOINT"),
        gcs_allow_own_identity: false,
    }
}

fn checker(sdk: &aws_config::SdkConfig) -> Checker {
    Checker::new(sdk, &stores(), &[ORIGIN.to_owned()], Arc::default()).expect("a checker")
}

/// Runs a check of `body` (a connection-check body) and prints its report.
async fn run(checker: &Checker, body: Value) -> Report {
    let request = CheckRequest::from_body(&body, ValidationOptions::default()).expect("a valid check");
    let report = checker.run(&request).await;
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    report
}

fn statuses(report: &Report) -> Vec<(&'static str, Status)> {
    report.checks.iter().map(|c| (c.name, c.status)).collect()
}

fn message<'a>(report: &'a Report, name: &str) -> &'a str {
    report.checks.iter().find(|c| c.name == name).map_or("", |c| c.message.as_str())
}

/// A customer's bucket and role on the auth moto, set up with the policies
/// `tetherctl setup aws` prints; `external_id_condition: false` leaves the
/// ExternalId condition out of the trust policy, `bucket_exists: false`
/// makes the role but not its bucket.
struct Customer {
    account: AwsAccount,
    bucket: String,
    role_arn: String,
    /// What `setup aws` printed for it.
    policies: Value,
}

impl Customer {
    async fn new(external_id_condition: bool, bucket_exists: bool) -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let account = AwsAccount::new(&id).await;
        let bucket = format!("tether-c-{id}");
        let setup = AwsSetup::new(&bucket, None, EXTERNAL_ID, Some(ORIGIN), None).expect("valid set-up");
        let mut policies = setup.policies_for_tether(&account.tether).await.expect("Tether's principal");
        assert_eq!(policies["trust_policy"]["Statement"][0]["Principal"]["AWS"], account.tether_arn.as_str());
        if !external_id_condition {
            policies["trust_policy"]["Statement"][0]
                .as_object_mut()
                .expect("a statement")
                .remove("Condition");
        }
        let role_arn = account
            .role(&format!("customer-{id}"), &policies["trust_policy"], &policies["permission_policy"])
            .await;
        if bucket_exists {
            account.bucket(&bucket, "eu-central-1").await;
            account.put(&bucket, "img/0001.jpg", b"first image").await;
            account.put(&bucket, "img/0002.jpg", b"second image").await;
        }
        Self { account, bucket, role_arn, policies }
    }

    /// Puts the CORS rules the set-up printed for `origin`.
    async fn allow_origin(&self, origin: &str) {
        let rule = aws_sdk_s3::types::CorsRule::builder()
            .allowed_origins(origin)
            .allowed_methods("GET")
            .allowed_methods("HEAD")
            .build()
            .expect("a rule");
        let rules = aws_sdk_s3::types::CorsConfiguration::builder().cors_rules(rule).build().expect("rules");
        self.account
            .s3
            .put_bucket_cors()
            .bucket(&self.bucket)
            .cors_configuration(rules)
            .send()
            .await
            .expect("put the CORS rules");
    }

    /// Checks `source` with Tether's identity.
    async fn check(&self, body: Value) -> Report {
        run(&checker(&self.account.tether), body).await
    }

    fn source(&self, prefixes: &[&str]) -> Value {
        json!({ "provider": "s3", "bucket": self.bucket, "prefixes": prefixes,
                "role_arn": self.role_arn, "external_id": EXTERNAL_ID })
    }
}

#[tokio::test]
async fn a_well_configured_s3_bucket_passes_every_check() {
    let customer = Customer::new(true, true).await;
    customer.allow_origin("https://*.example.com").await;
    let report = customer.check(json!({ "source": customer.source(&["img/"]) })).await;
    let every =
        ["assume_role", "session_duration", "external_id_required", "bucket_region", "list", "read", "cors"];
    assert_eq!(statuses(&report), every.map(|name| (name, Status::Pass)).to_vec());
    assert!(report.ok);
    assert_eq!(report.region.as_deref(), Some("eu-central-1"));
    assert!(message(&report, "read").contains("img/0001.jpg"), "{}", message(&report, "read"));
    assert!(message(&report, "cors").contains("rule 1"), "{}", message(&report, "cors"));
}

#[tokio::test]
async fn a_trust_policy_without_the_external_id_condition_fails() {
    let customer = Customer::new(false, true).await;
    let report = customer.check(json!({ "source": customer.source(&["img/"]) })).await;
    assert!(!report.ok);
    assert_eq!(report.checks[0].status, Status::Pass, "moto lets the role be assumed");
    assert_eq!(report.checks[2].name, "external_id_required");
    assert_eq!(report.checks[2].status, Status::Fail);
    let why = &report.checks[2].message;
    assert!(
        why.contains("sts:ExternalId") && why.contains(EXTERNAL_ID) && why.contains("trust policy"),
        "{why}"
    );
    assert!(why.contains(&customer.account.tether_arn), "names Tether's principal: {why}");
}

#[tokio::test]
async fn a_wrong_external_id_fails_assume_role_naming_what_to_fix() {
    let customer = Customer::new(true, true).await;
    let mut source = customer.source(&["img/"]);
    source["external_id"] = json!("another-workspace");
    let report = customer.check(json!({ "source": source })).await;
    assert!(!report.ok);
    assert_eq!(report.checks.len(), 7);
    assert_eq!(report.checks[0].status, Status::Fail);
    let why = &report.checks[0].message;
    assert!(why.contains("trust policy") && why.contains("another-workspace"), "{why}");
    assert!(why.contains(&customer.account.tether_arn), "names Tether's principal: {why}");
    assert!(report.checks[1..].iter().all(|c| c.status == Status::Skipped), "{report:?}");
}

#[tokio::test]
async fn an_empty_prefix_a_wrong_region_and_no_cors_rules_warn_without_failing() {
    let customer = Customer::new(true, true).await;
    let mut source = customer.source(&["img/", "nothing-here/"]);
    source["region"] = json!("us-west-2");
    let report = customer.check(json!({ "source": source, "mode": "link" })).await;
    assert!(report.ok, "warnings only");
    let region = message(&report, "bucket_region");
    assert!(region.contains("us-west-2") && region.contains("set source.region to eu-central-1"), "{region}");
    let list = message(&report, "list");
    assert!(
        list.contains(&format!("s3://{}/nothing-here/", customer.bucket)) && !list.contains("img/"),
        "{list}"
    );
    assert!(message(&report, "cors").contains("no CORS rules"), "{}", message(&report, "cors"));
    let warned = ["bucket_region", "list", "cors"];
    for (name, status) in statuses(&report) {
        let expected = if warned.contains(&name) { Status::Warn } else { Status::Pass };
        assert_eq!(status, expected, "{name}");
    }
    // An origin no rule allows warns too; copy mode does not care.
    customer.allow_origin("https://other.example.org").await;
    let report = customer.check(json!({ "source": customer.source(&["img/"]) })).await;
    assert_eq!(report.checks[6].status, Status::Warn);
    assert!(report.checks[6].message.starts_with("No CORS rule of the bucket allows GET"), "{report:?}");
    let body = json!({ "source": customer.source(&["img/"]), "mode": "copy" });
    assert_eq!(customer.check(body).await.checks[6].status, Status::Skipped);
}

#[tokio::test]
async fn a_role_that_may_not_read_the_buckets_region_or_cors_warns_and_skips() {
    let customer = Customer::new(true, true).await;
    // The set-up's policy without its first statement (GetBucketLocation, GetBucketCORS).
    let mut permissions = customer.policies["permission_policy"].clone();
    permissions["Statement"].as_array_mut().expect("statements").remove(0);
    let narrow = customer
        .account
        .role(&format!("narrow-{}", customer.bucket), &customer.policies["trust_policy"], &permissions)
        .await;
    let mut source = customer.source(&["img/"]);
    source["role_arn"] = json!(narrow);
    let report = customer.check(json!({ "source": source })).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checks[3].status, Status::Warn);
    assert!(report.checks[3].message.contains("s3:GetBucketLocation"), "{report:?}");
    assert_eq!((report.checks[4].status, report.checks[5].status), (Status::Pass, Status::Pass));
    assert_eq!(report.checks[6].status, Status::Skipped);
    assert!(report.checks[6].message.contains("s3:GetBucketCORS"), "{report:?}");
}

#[tokio::test]
async fn a_missing_bucket_fails_naming_it() {
    let customer = Customer::new(true, false).await;
    let report = customer.check(json!({ "source": customer.source(&["img/"]) })).await;
    assert!(!report.ok);
    assert_eq!(report.checks[0].status, Status::Pass, "{report:?}");
    for name in ["bucket_region", "list"] {
        let check = report.checks.iter().find(|c| c.name == name).expect("the check");
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.message.contains(&format!("s3://{} does not exist", customer.bucket)), "{check:?}");
    }
}

#[tokio::test]
async fn azure_tokens_without_l_or_r_expired_or_ending_in_link_mode_say_what_to_fix() {
    let env = TestEnv::new().await;
    let bucket = env.bucket(Provider::Azure).await;
    bucket.put("p/1.jpg", b"one").await;
    let checker = checker(&env.sdk);
    let check = |sas: String, mode: &str| {
        let mut source = bucket.source_named(&bucket.name, &["p/"]);
        source["sas_token"] = json!(sas);
        json!({ "source": source, "mode": mode })
    };
    let mut tokens = Vec::new();
    let mut token = |permissions: &str, valid_for: chrono::Duration| {
        let sas = bucket.sas(permissions, valid_for);
        tokens.push(sas.clone());
        sas
    };
    let names = ["sas_permissions", "sas_expiry", "list", "read"];
    let mut reports = Vec::new();
    let mut expect = |report: &Report, expected: [Status; 4]| {
        reports.push(serde_json::to_string(report).expect("JSON"));
        assert_eq!(statuses(report), names.into_iter().zip(expected).collect::<Vec<_>>());
        assert_eq!(report.ok, !expected.contains(&Status::Fail));
        assert_eq!(report.region, None);
    };
    use Status::{Fail, Pass, Skipped, Warn};

    // Valid for 30 days, copy mode: all pass.
    let report = run(&checker, check(token("rl", chrono::Duration::days(30)), "copy")).await;
    expect(&report, [Pass, Pass, Pass, Pass]);
    // The same in link mode: the links die with the token.
    let report = run(&checker, check(token("rl", chrono::Duration::days(30)), "link")).await;
    expect(&report, [Pass, Warn, Pass, Pass]);
    assert!(message(&report, "sas_expiry").contains("links stop working"), "{report:?}");
    // Without l: nothing can be listed.
    let report = run(&checker, check(token("r", chrono::Duration::days(30)), "copy")).await;
    expect(&report, [Fail, Pass, Skipped, Skipped]);
    assert!(message(&report, "sas_permissions").contains("l (list)"), "{report:?}");
    // Without r: listed, not read.
    let report = run(&checker, check(token("l", chrono::Duration::days(30)), "copy")).await;
    expect(&report, [Fail, Pass, Pass, Skipped]);
    assert!(message(&report, "sas_permissions").contains("r (read)"), "{report:?}");
    // Expired.
    let report = run(&checker, check(token("rl", chrono::Duration::hours(-1)), "copy")).await;
    expect(&report, [Pass, Fail, Skipped, Skipped]);
    assert!(message(&report, "sas_expiry").contains("expired"), "{report:?}");
    // A container that does not exist is named.
    let mut source = bucket.source_named("tether-missing-container", &["p/"]);
    source["sas_token"] = json!(token("rl", chrono::Duration::days(30)));
    let report = run(&checker, json!({ "source": source, "mode": "copy" })).await;
    assert_eq!(report.checks[2].status, Fail);
    assert!(report.checks[2].message.contains("tether-missing-container"), "{report:?}");

    // No report and no log line holds a token's signature.
    let reports = reports.join("\n");
    let logs = captured_logs();
    assert!(logs.contains("Connection check done."), "the logs were not captured");
    for sas in &tokens {
        let sig = sas.split('&').find_map(|p| p.strip_prefix("sig=")).expect("a signature");
        let decoded = percent_encoding::percent_decode_str(sig).decode_utf8_lossy().into_owned();
        for secret in [sig, decoded.as_str()] {
            assert!(!logs.contains(secret), "a SAS signature reached the logs");
            assert!(!reports.contains(secret), "a SAS signature reached a report");
        }
    }
    assert!(!logs.contains("sig="), "a SAS token reached the logs");
}

#[tokio::test]
async fn gcs_on_the_emulator_lists_and_reads_and_says_why_iam_is_skipped() {
    let env = TestEnv::new().await;
    let bucket = env.bucket(Provider::Gcs).await;
    bucket.put("g/1.jpg", b"one").await;
    let checker = checker(&env.sdk);
    let report =
        run(&checker, json!({ "source": bucket.source_named(&bucket.name, &["g/", "empty/"]) })).await;
    use Status::{Pass, Skipped, Warn};
    assert_eq!(
        statuses(&report),
        vec![("impersonate", Skipped), ("list", Warn), ("read", Pass), ("sign", Skipped), ("cors", Warn)]
    );
    assert!(report.ok);
    assert!(message(&report, "impersonate").contains("STORAGE_EMULATOR_HOST"), "{report:?}");
    assert!(message(&report, "list").contains(&format!("gs://{}/empty/", bucket.name)), "{report:?}");
    let report =
        run(&checker, json!({ "source": bucket.source_named("tether-no-such-bucket", &["g/"]) })).await;
    assert!(!report.ok);
    assert!(message(&report, "list").contains("gs://tether-no-such-bucket"), "{report:?}");
}

/// Accepts connections and never answers; holds them until dropped.
async fn silent_store() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            connections.push(stream);
        }
    });
    (url, held)
}

#[tokio::test]
async fn a_store_that_never_answers_fails_within_15_seconds() {
    let customer = Customer::new(true, true).await;
    let (silent, held) = silent_store().await;
    let s3_checker = checker(&customer.account.tether_with_s3_at(&silent));
    let stores = StoresConfig {
        storage_emulator_host: Some(silent.clone()),
        azure_blob_endpoint: format!("{silent}/{{account}}"),
        ..stores()
    };
    let other = Checker::new(&customer.account.tether, &stores, &[ORIGIN.to_owned()], Arc::default())
        .expect("checker");
    let azure = json!({ "source": { "provider": "azure", "account": "devstoreaccount1", "container": "silent",
        "sas_token": "sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2099-01-01T00:00:00Z&sig=c2lsZW50" }, "mode": "copy" });
    let gcs = json!({ "source": { "provider": "gcs", "bucket": "silent-bucket",
        "impersonate_service_account": "importer@ws-test.iam.gserviceaccount.com" } });
    let started = Instant::now();
    let (s3, azure, gcs) = tokio::join!(
        run(&s3_checker, json!({ "source": customer.source(&["img/"]) })),
        run(&other, azure),
        run(&other, gcs),
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "the checks took {took:?}");
    for (report, store, silent_checks) in [
        (&s3, "S3", &["bucket_region", "list"][..]),
        (&azure, "Azure Blob", &["list"][..]),
        (&gcs, "GCS", &["list", "cors"][..]),
    ] {
        assert!(!report.ok, "{report:?}");
        for name in silent_checks {
            let check = report.checks.iter().find(|c| c.name == *name).expect("the check");
            assert_eq!(check.status, Status::Fail, "{check:?}");
            assert!(check.message.starts_with(&format!("{store} did not answer")), "{check:?}");
        }
    }
    // STS answered: the role was assumed before S3 went silent.
    assert_eq!(s3.checks[0].status, Status::Pass);
    held.abort();
}

/// Tether's `tetherctl` with `args` and `envs`: exit code, stdout, stderr.
fn tetherctl(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let binary = tether_tests::process::binary("tetherctl");
    let output = std::process::Command::new(&binary)
        .args(args)
        .envs(envs.iter().copied())
        .env("TETHER_API_ALLOWED_ORIGINS", ORIGIN)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): run `cargo build --bins` first", binary.display()));
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[tokio::test]
async fn tetherctl_check_exits_0_1_or_2_and_prints_json() {
    let env = TestEnv::new().await;
    let bucket = env.bucket(Provider::Azure).await;
    bucket.put("t/1.jpg", b"one").await;
    let dir = env.destination_dir();
    let file = |name: &str, request: &Value| {
        let path = dir.join(name);
        std::fs::write(&path, request.to_string()).expect("write the request");
        path.display().to_string()
    };
    let mut request = bucket.request(&env, "ctl", &["t/"]);
    request["mode"] = json!("copy");
    let good = file("good.json", &request);
    request["source"]["sas_token"] = json!(bucket.sas("rl", chrono::Duration::hours(-2)));
    let expired = file("expired.json", &request);
    request["source"]["container"] = json!("Not_A_Container");
    let invalid = file("invalid.json", &request);

    let (code, out, _) = tetherctl(&["check", &good, "--json"], &[]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).expect("--json prints one JSON object");
    assert_eq!(report["ok"], true);
    assert_eq!(report["region"], Value::Null);
    let names: Vec<&str> =
        report["checks"].as_array().expect("checks").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["sas_permissions", "sas_expiry", "list", "read"]);
    assert!(report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|c| c["status"].is_string() && c["message"].is_string()));

    let (code, out, err) = tetherctl(&["check", &expired], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("fail") && out.contains("sas_expiry"), "{out}");
    let (code, _, err) = tetherctl(&["check", &invalid], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("source.container"), "{err}");
    let (code, _, err) = tetherctl(&["check", &good, "--origin", "*"], &[]);
    assert_eq!((code, err.contains("--origin")), (2, true), "{err}");
    let (code, _, err) = tetherctl(&["check", &dir.join("absent.json").display().to_string()], &[]);
    assert_eq!((code, err.contains("absent.json")), (2, true), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tetherctl_reads_tethers_aws_identity_for_setup_and_check() {
    let customer = Customer::new(true, true).await;
    let (key_id, secret) = customer.account.tether_keys();
    let url = customer.account.url.clone();
    let aws = [
        ("AWS_ENDPOINT_URL_S3", url.as_str()),
        ("AWS_ENDPOINT_URL_STS", url.as_str()),
        ("AWS_ACCESS_KEY_ID", key_id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("TETHER_S3_FORCE_PATH_STYLE", "true"),
    ];
    let args = [
        "setup",
        "aws",
        "--bucket",
        &customer.bucket,
        "--prefix",
        "img/*",
        "--external-id",
        EXTERNAL_ID,
        "--json",
    ];
    let (code, out, err) = tetherctl(&args, &aws);
    assert_eq!(code, 0, "{err}");
    let policies: Value = serde_json::from_str(&out).expect("--json prints one JSON object");
    assert_eq!(
        policies["trust_policy"]["Statement"][0]["Principal"]["AWS"],
        customer.account.tether_arn.as_str()
    );
    assert_eq!(
        policies["permission_policy"]["Statement"][2]["Resource"],
        format!("arn:aws:s3:::{}/img/${{*}}*", customer.bucket)
    );
    assert_eq!(
        policies["cors_rules"]["CORSRules"][0]["AllowedOrigins"][0], ORIGIN,
        "the first allowed origin"
    );
    let (code, _, err) = tetherctl(&["setup", "aws", "--bucket", "Bad", "--external-id", EXTERNAL_ID], &aws);
    assert_eq!((code, err.contains("`bucket`")), (2, true), "{err}");

    let dir = std::env::temp_dir().join(format!("tether-check-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = dir.join("request.json");
    let request = json!({ "version": 1, "import_id": Uuid::new_v4(), "workspace_id": "ws", "dataset_id": "d",
        "mode": "link", "source": customer.source(&["img/"]) });
    std::fs::write(&path, request.to_string()).expect("write the request");
    let (code, out, err) = tetherctl(&["check", &path.display().to_string()], &aws);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("region   eu-central-1") && out.contains("ok: no check failed"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tether's own AWS identity on the auth moto, as tether-api's environment.
fn tether_aws_env(customer: &Customer) -> Vec<(&'static str, String)> {
    let (key_id, secret) = customer.account.tether_keys();
    vec![
        ("AWS_ENDPOINT_URL_S3", customer.account.url.clone()),
        ("AWS_ENDPOINT_URL_STS", customer.account.url.clone()),
        ("AWS_ACCESS_KEY_ID", key_id.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("TETHER_API_ALLOWED_ORIGINS", ORIGIN.to_owned()),
    ]
}

#[tokio::test]
async fn tether_api_checks_a_bucket_and_writes_its_set_up() {
    let customer = Customer::new(true, true).await;
    customer.allow_origin(ORIGIN).await;
    let env = TestEnv::new().await;
    let api = env.spawn_api(&tether_aws_env(&customer)).await;
    let url = format!("{}/v1/workspaces/acme/connection-checks", api.base);
    let post = |body: String, token: Option<&str>, content_type: &str| {
        let mut request = api.http.post(&url).header("content-type", content_type).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let token = Some(tether_tests::api::API_TOKEN);

    let body = json!({ "source": customer.source(&["img/"]), "mode": "link" }).to_string();
    let response = post(body.clone(), token, "application/json").await.expect("tether-api answers");
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.expect("a JSON report");
    let names: Vec<&str> =
        report["checks"].as_array().expect("checks").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        ["assume_role", "session_duration", "external_id_required", "bucket_region", "list", "read", "cors"]
    );
    assert_eq!(
        (report["ok"].as_bool(), report["region"].as_str()),
        (Some(true), Some("eu-central-1")),
        "{report}"
    );
    assert!(report["checks"].as_array().into_iter().flatten().all(|c| c["status"] == "pass"), "{report}");

    let response = post(body.clone(), None, "application/json").await.expect("answers");
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = post(body, token, "text/plain").await.expect("answers");
    assert_eq!(response.status(), 415);
    let mut bad = customer.source(&["img/"]);
    bad["bucket"] = json!("Not_A_Bucket");
    for (body, names) in [
        (json!({ "source": bad }).to_string(), "source.bucket"),
        (json!({ "source": customer.source(&[]), "extra": 1 }).to_string(), "extra"),
        (json!({ "source": customer.source(&["img/"]), "origin": "*" }).to_string(), "origin"),
        ("{".to_owned(), "JSON"),
    ] {
        let response = post(body, token, "application/json").await.expect("answers");
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.expect("the error object");
        assert_eq!(error["error"]["code"], "invalid_request", "{error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{names}: {message}");
    }

    let setup = |query: String| {
        api.http
            .get(format!("{}/v1/setup/aws?{query}", api.base))
            .bearer_auth(tether_tests::api::API_TOKEN)
            .send()
    };
    let response = setup(format!("bucket={}&prefix=img/*&external_id={EXTERNAL_ID}", customer.bucket))
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    let policies: Value = response.json().await.expect("JSON policies");
    assert_eq!(
        policies["trust_policy"], customer.policies["trust_policy"],
        "the same trust policy as tetherctl's"
    );
    assert_eq!(
        policies["permission_policy"]["Statement"][2]["Resource"],
        format!("arn:aws:s3:::{}/img/${{*}}*", customer.bucket)
    );
    assert_eq!(policies["cors_rules"]["CORSRules"][0]["AllowedOrigins"][0], ORIGIN);
    for (query, names) in [
        (format!("bucket={}", customer.bucket), "external_id"),
        (format!("bucket=Bad&external_id={EXTERNAL_ID}"), "bucket"),
        (format!("bucket={}&external_id={EXTERNAL_ID}&regoin=x", customer.bucket), "regoin"),
    ] {
        let response = setup(query).await.expect("answers");
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.expect("the error object");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{names}: {message}");
    }
    let document: Value = api
        .http
        .get(format!("{}/v1/openapi.json", api.base))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    for path in ["/v1/workspaces/{workspace_id}/connection-checks", "/v1/setup/aws"] {
        assert!(document["paths"][path].is_object(), "{path} is not in the OpenAPI document");
    }
}
