//! Staff actions are accountable: `tetherctl submit`, `requeue` and `cancel`
//! leave an audit row (who, what, which import, why, when, what came of
//! it) that `tetherctl audit` shows; and what tetherctl prints of customers'
//! keys cannot drive a terminal or a spreadsheet.

use std::process::{ExitCode, Output};

use serde_json::{json, Value};
use tether_tests::TestEnv;
use uuid::Uuid;

async fn tetherctl(env: &TestEnv, args: &[&str]) -> ExitCode {
    let mut argv = vec!["tetherctl", "--database-url", &env.database_url, "--amqp-url", &env.amqp_url];
    argv.extend_from_slice(args);
    tetherctl::execute(argv).await
}

/// Runs the `tetherctl` binary (built by `make test`), to see exactly what
/// it prints, as `login` when given (else with neither LOGNAME nor USER).
async fn tetherctl_process(env: &TestEnv, login: Option<&str>, args: &[&str]) -> Output {
    let binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tetherctl");
    let mut command = tokio::process::Command::new(&binary);
    command
        .env("TETHER_DATABASE_URL", &env.database_url)
        .env("TETHER_AMQP_URL", &env.amqp_url)
        .env_remove("LOGNAME")
        .env_remove("USER")
        .args(args);
    if let Some(login) = login {
        command.env("LOGNAME", login);
    }
    command.output().await.unwrap_or_else(|e| {
        panic!("cannot run {} ({e}): run `cargo build --bins` first (make test does)", binary.display())
    })
}

async fn audit_json(env: &TestEnv, import_id: Option<Uuid>) -> Vec<Value> {
    let mut args = vec!["--json".to_owned(), "audit".to_owned()];
    args.extend(import_id.map(|id| id.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = tetherctl_process(env, None, &args).await;
    assert!(output.status.success(), "audit: {}", String::from_utf8_lossy(&output.stderr));
    let trail: Value = serde_json::from_slice(&output.stdout).expect("audit --json prints JSON");
    trail.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staff_actions_are_audited_and_output_is_inert() {
    let env = TestEnv::new().await;
    let hostile = "au/big\u{1b}[2J\u{7}rm -rf \u{202e}gpj.jpg";
    env.put("au/ok.jpg", b"small").await;
    env.put(hostile, b"far too large for the filter").await;
    let fleet = env.start_default(1).await;

    // Submitted from a file, by alice, for a reason.
    let mut request = env.request("audited", &["au/"]);
    request["filter"] = json!({"max_object_bytes": 10});
    let id: Uuid = request["import_id"].as_str().and_then(|s| s.parse().ok()).expect("an id");
    let file = std::env::temp_dir().join(format!("tether-audit-{}.json", env.id));
    std::fs::write(&file, request.to_string()).expect("write the request");
    let submitted = tetherctl(
        &env,
        &["submit", file.to_str().expect("a path"), "--actor", "alice", "--reason", "first load, ticket 7"],
    )
    .await;
    let _ = std::fs::remove_file(&file);
    assert_eq!(submitted, ExitCode::SUCCESS);
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "partially_succeeded", "{status}");

    // A requeue that is refused (a too-large object stays failed) and a
    // cancel of a final import: both recorded, with what came of them.
    let formula = "=HYPERLINK(\"http://evil.example\",\"ok\")";
    assert_eq!(
        tetherctl(&env, &["requeue", &id.to_string(), "--actor", "@bob", "--reason", formula]).await,
        ExitCode::from(1)
    );
    let cancelled = tetherctl_process(&env, Some("carol"), &["cancel", &id.to_string()]).await;
    assert_eq!(cancelled.status.code(), Some(1), "{}", String::from_utf8_lossy(&cancelled.stderr));
    // Without a name, nothing is done and nothing recorded.
    let anonymous = tetherctl_process(&env, None, &["cancel", &id.to_string(), "--actor", " "]).await;
    assert_eq!(anonymous.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("--actor"));
    // Without --actor and LOGNAME, the account tetherctl runs as.
    let process = tetherctl_process(&env, None, &["cancel", &id.to_string(), "--reason", "who am I"]).await;
    assert_eq!(process.status.code(), Some(1));

    let account =
        String::from_utf8(std::process::Command::new("id").arg("-un").output().expect("id -un runs").stdout)
            .expect("UTF-8")
            .trim()
            .to_owned();
    let trail = audit_json(&env, Some(id)).await;
    let summary: Vec<(&str, &str, Option<&str>)> = trail
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default(),
                e["actor"].as_str().unwrap_or_default(),
                e["reason"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("submit", "alice", Some("first load, ticket 7")),
            ("requeue", "@bob", Some(formula)),
            ("cancel", "carol", None),
            ("cancel", account.as_str(), Some("who am I")),
        ],
        "{trail:?}"
    );
    assert_eq!(trail[0]["outcome"], json!(format!("submitted {}", file.display())));
    let refused = trail[1]["outcome"].as_str().unwrap_or_default();
    assert!(refused.starts_with("not done: nothing of") && refused.contains("can be retried"), "{refused}");
    assert_eq!(trail[2]["outcome"], json!(format!("not done: import {id} is already partially_succeeded")));
    assert!(trail.iter().all(|e| e["import_id"] == json!(id) && e["at"].is_string()), "{trail:?}");

    // The CSV: no cell starts a formula.
    let csv = tetherctl_process(&env, None, &["audit", &id.to_string(), "--csv"]).await;
    let csv = String::from_utf8(csv.stdout).expect("UTF-8");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "at,actor,action,import_id,reason,outcome");
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(lines[2].contains(",'@bob,requeue,"), "{csv}");
    assert!(lines[2].contains(",\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"ok\"\")\","), "{csv}");

    // The hostile key is printed escaped: no raw ESC, newline or override.
    let failures = tetherctl_process(&env, None, &["failures", &id.to_string()]).await;
    let shown = String::from_utf8(failures.stdout).expect("UTF-8");
    assert!(shown.contains(r"au/big\u{1b}[2J\u{7}rm -rf \u{202e}gpj.jpg"), "{shown}");
    assert!(!shown.contains(['\u{1b}', '\u{7}', '\u{202e}']), "{shown:?}");
    assert_eq!(shown.lines().count(), 2, "one failure line and the count: {shown:?}");
    let failures_csv = tetherctl_process(&env, None, &["failures", &id.to_string(), "--csv"]).await;
    let failures_csv = String::from_utf8(failures_csv.stdout).expect("UTF-8");
    assert!(!failures_csv.contains('\u{1b}') && failures_csv.lines().count() == 2, "{failures_csv:?}");
    // --json keeps the key exact, for scripts.
    let exact = tetherctl_process(&env, None, &["--json", "failures", &id.to_string()]).await;
    let exact: Value = serde_json::from_slice(&exact.stdout).expect("JSON");
    assert_eq!(exact[0]["source_url"], json!(format!("s3://{}/{hostile}", env.bucket)));

    // An action on an import that does not exist is recorded too.
    let unknown = Uuid::new_v4();
    let missing =
        tetherctl_process(&env, Some("carol"), &["requeue", &unknown.to_string(), "--reason", "typo?"]).await;
    assert_eq!(missing.status.code(), Some(1));
    let all = audit_json(&env, None).await;
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(all[4]["outcome"], json!(format!("not done: import {unknown} not found")));
    fleet.stop().await;
}
