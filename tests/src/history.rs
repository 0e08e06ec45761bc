//! A long history, made in SQL: imports, tasks and images of other
//! workspaces and datasets, so that tests and `make bench` can show that
//! the platform's and staff's queries stay index lookups however much a
//! table holds, and that an import into a full table is as fast as into an
//! empty one. The queries are the ones Tether and the platform run, with
//! literal values from the history.

use tokio_postgres::Client;

/// How much history to make.
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub imports: i64,
    pub tasks: i64,
    pub images: i64,
}

/// Connects to a test's or the benchmark's database.
pub async fn connect(database_url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable: {e}"));
    tokio::spawn(connection);
    client
}

impl History {
    /// Adds the history (the schema must exist) and refreshes the
    /// planner's statistics. Images come in 100 datasets (100,000 each for
    /// 10^7), 10 datasets per workspace, their ids random like the UUIDv5s
    /// of rows imported before migration 0017.
    pub async fn fill(&self, client: &Client) {
        // Tasks belong to imports round-robin; images to one import per dataset.
        let import_id = format!("md5('history-import-' || (i % {}))::uuid", self.imports);
        let statements = [
            format!(
                "INSERT INTO tether.imports (import_id, request_digest, workspace_id, dataset_id, mode, provider, state,
                                             created_at, finished_at, deadline_at)
                 SELECT {}, '\\x00', 'history-ws-' || (i % 50), 'history-' || (i % 500), 'link', 's3',
                        CASE WHEN i % 10 = 0 THEN 'partially_succeeded' ELSE 'succeeded' END,
                        now() - make_interval(secs => i * 60), now() - make_interval(secs => i * 60 - 30),
                        now() - make_interval(secs => i * 60) + interval '24 hours'
                 FROM generate_series(0, {} - 1) i",
                import_id,
                self.imports
            ),
            format!(
                "INSERT INTO tether.tasks (task_id, import_id, kind, prefix, items, state, updated_at)
                 SELECT md5('history-task-' || i)::uuid, {}, CASE WHEN i % 4 = 0 THEN 'list' ELSE 'copy' END,
                        CASE WHEN i % 4 = 0 THEN 'p' || i || '/' END,
                        CASE WHEN i % 4 <> 0 THEN '[{{\"key\": \"k\", \"size\": 1}}]'::jsonb END,
                        CASE WHEN i % 97 = 0 THEN 'failed' ELSE 'done' END, now() - make_interval(secs => i)
                 FROM generate_series(0, {} - 1) i",
                import_id,
                self.tasks
            ),
            format!(
                "INSERT INTO tether.images (image_id, import_id, workspace_id, dataset_id, source_url, size_bytes,
                                            etag, last_modified, storage, stored_url)
                 SELECT md5('history-image-' || i)::uuid, md5('history-import-' || d)::uuid,
                        'history-ws-' || (d / 10), 'history-' || d, url, 100000 + i % 5000000,
                        md5(url), now() - make_interval(secs => i), 'link', NULL
                 FROM (SELECT i, i / {per} AS d,
                              'gs://history-bucket-' || (i / {per}) || '/customer/project/2024/camera-'
                                 || lpad((i % {per} * 100 / {per})::text, 3, '0') || '/img_' || lpad(i::text, 9, '0')
                                 || '.jpg' AS url
                       FROM generate_series(0, {} - 1) i) s",
                self.images,
                per = (self.images / 100).max(1)
            ),
            "ANALYZE tether.imports; ANALYZE tether.tasks; ANALYZE tether.images;".to_owned(),
        ];
        for sql in statements {
            client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("filling the history: {e}\n{sql}"));
        }
    }
}

/// The platform's and staff's queries, as (what, SQL), with values that
/// exist in the history.
pub fn queries() -> Vec<(&'static str, String)> {
    let import = "md5('history-import-7')::uuid";
    vec![
        ("platform: count a dataset's images", "SELECT count(*) FROM tether.images WHERE workspace_id = 'history-ws-0' AND dataset_id = 'history-1'".into()),
        ("platform: a page of a dataset's images", "SELECT image_id, source_url FROM tether.images WHERE workspace_id = 'history-ws-0' AND dataset_id = 'history-1' AND tether.url_key(source_url) > 'gs://history-bucket-1/customer/project/2024/camera-050/' ORDER BY tether.url_key(source_url) LIMIT 1000".into()),
        ("access API: images by id", "SELECT source_url, storage, stored_url, etag FROM tether.images WHERE image_id = ANY(ARRAY[md5('history-image-5')::uuid, md5('history-image-99999')::uuid]) AND workspace_id = 'history-ws-0'".into()),
        ("upsert: an image by name", "SELECT image_id FROM tether.images WHERE workspace_id = 'history-ws-0' AND dataset_id = 'history-1' AND tether.url_key(source_url) = tether.url_key('gs://history-bucket-1/customer/project/2024/camera-000/img_000100000.jpg')".into()),
        ("an import's images", format!("SELECT count(*) FROM tether.images WHERE import_id = {import}")),
        ("tetherctl list", "SELECT to_jsonb(s) FROM tether.import_status s ORDER BY s.created_at DESC LIMIT 50".into()),
        ("tetherctl list --workspace", "SELECT to_jsonb(s) FROM tether.import_status s WHERE s.workspace_id = 'history-ws-3' ORDER BY s.created_at DESC LIMIT 50".into()),
        ("tetherctl status", format!("SELECT to_jsonb(s) FROM tether.import_status s WHERE s.import_id = {import}")),
        ("tetherctl requeue: tasks to resume", format!("UPDATE tether.tasks SET state = 'pending', seq = seq + 1 WHERE import_id = {import} AND state IN ('failed', 'cancelled')")),
        ("cancel: pending tasks", format!("UPDATE tether.tasks SET state = 'cancelled' WHERE import_id = {import} AND state = 'pending'")),
        ("finish: pending tasks of an import", format!("SELECT count(*) FROM tether.tasks WHERE import_id = {import} AND state = 'pending'")),
        ("finish: failed prefixes", format!("SELECT f.source_url FROM tether.import_failures f JOIN tether.tasks t ON t.import_id = f.import_id AND t.state = 'failed' AND f.failure_key = t.task_id WHERE f.import_id = {import}")),
        ("deleting an import (its tasks' cascade)", format!("DELETE FROM tether.tasks WHERE import_id = {import}")),
        ("gauges: imports by state", "SELECT state, imports FROM tether.import_counts".into()),
        ("gauges: overdue and oldest import", "SELECT count(*) FILTER (WHERE now() > deadline_at), min(created_at) FROM tether.imports WHERE state IN ('queued', 'running')".into()),
        ("gauges: oldest pending task", "SELECT min(updated_at) FROM tether.tasks WHERE state = 'pending'".into()),
        ("housekeeping: imports ready to finish", "SELECT i.import_id FROM tether.imports i WHERE i.state IN ('queued', 'running') AND NOT EXISTS (SELECT 1 FROM tether.tasks t WHERE t.import_id = i.import_id AND t.state = 'pending') LIMIT 500".into()),
        ("housekeeping: tasks to re-publish", "SELECT task_id FROM tether.tasks WHERE state = 'pending' AND published_at < now() - interval '300 s' AND updated_at < now() - interval '300 s' ORDER BY published_at LIMIT 500".into()),
        ("housekeeping: imports past the retention", "SELECT import_id FROM tether.imports WHERE tasks_pruned_at IS NULL AND finished_at IS NOT NULL AND finished_at < now() - interval '7 days' ORDER BY finished_at LIMIT 20".into()),
    ]
}

/// Each query's plan, and whether it scans `images` or `tasks` whole.
pub async fn plans(client: &Client) -> Vec<(&'static str, String, bool)> {
    let mut plans = Vec::new();
    for (what, sql) in queries() {
        let rows = client
            .query(&format!("EXPLAIN {sql}"), &[])
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN of {what} failed: {e}"));
        let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let plan = plan.join("\n");
        let scans = plan.contains("Seq Scan on images") || plan.contains("Seq Scan on tasks");
        plans.push((what, plan, scans));
    }
    plans
}
