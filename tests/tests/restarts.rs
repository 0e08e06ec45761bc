//! PostgreSQL and RabbitMQ restarted under a running import: both imports
//! complete with exact results. These restart the machine's shared services,
//! so `make test` runs this binary alone, before the rest.

use std::process::Command;
use std::time::Duration;

use tether_tests::TestEnv;
use uuid::Uuid;

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().expect("run the restart");
    assert!(status.success(), "`{script}` failed: {status}");
}

/// The status, or None while the database is unreachable.
async fn wait_final_through_outages(env: &TestEnv, id: Uuid) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(Some(status)) = env.store.import_status(id).await {
            if ["succeeded", "partially_succeeded", "failed", "cancelled"]
                .contains(&status["state"].as_str().unwrap_or(""))
            {
                return status;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "import {id} not final through the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn import_through(restart: &str, dataset: &str) {
    let env = TestEnv::new().await;
    env.put_many((0..600).map(|i| format!("r/{i:03}.jpg"))).await;
    let mut scheduler = env.scheduler_config();
    scheduler.republish_after_secs = 3.0;
    let mut worker = env.worker_config();
    worker.page_size = 3;
    let fleet = env.start(vec![scheduler], vec![worker.clone(), worker]).await;
    let id = env.submit(&env.request(dataset, &["r/"])).await;
    env.wait_imported(id, 60).await;
    sh(restart);
    let status = wait_final_through_outages(&env, id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(
        (
            status["objects_listed"].as_i64(),
            status["objects_imported"].as_i64(),
            status["objects_failed"].as_i64()
        ),
        (Some(600), Some(600), Some(0))
    );
    assert_eq!(env.images(dataset).await.len(), 600);
    fleet.assert_running();
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_survives_a_postgres_restart() {
    import_through(
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart",
        "pg-restart",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_survives_a_rabbitmq_restart() {
    import_through("rabbitmqctl stop_app >/dev/null && rabbitmqctl start_app >/dev/null", "mq-restart").await;
}
