-- Inserts that stay local, and the indexes staff's and the platform's
-- queries need (README, "Postgres at scale").
--
-- An image's identity is (workspace_id, dataset_id, source_url) (contract
-- §3). Until now the upsert found an existing row through image_id, a
-- UUIDv5 of the name: a random key, so each new row dirtied a random page of
-- the primary key, and once that index outgrew memory each insert was a
-- random read (and a full-page image in the WAL). From here on:
-- - the upsert finds a row by its name, through `images_name`, whose keys
--   arrive in listing order: one import appends to a few adjacent pages;
-- - a new row's image_id is a UUIDv8 whose high bits come from its
--   workspace and dataset and then from the time (db::tasks::new_image_id),
--   so the primary key, too, grows at one point per dataset;
-- - existing rows keep their image_id, and a re-import finds them by name.
-- Long URLs (over 2000 bytes, possible with Azure's 1024-character names)
-- are indexed by a prefix and their SHA-256, within btree's entry limit.
--
-- On a large installation, create the indexes beforehand with CREATE INDEX
-- CONCURRENTLY under the same names; IF NOT EXISTS then skips them here.

-- The function tether.url_key and the unique index images_name come from
-- migration 0013.

-- Requeue, cancel, finishing and the cascade of an import's deletion look
-- up its tasks by import and state.
CREATE INDEX IF NOT EXISTS tasks_import_state ON tether.tasks (import_id, state);

-- `tetherctl list`, newest first, for everyone or one workspace.
CREATE INDEX IF NOT EXISTS imports_created ON tether.imports (created_at);
CREATE INDEX IF NOT EXISTS imports_workspace_created ON tether.imports (workspace_id, created_at);

-- Retention (scheduler housekeeping): when an import's task rows were
-- deleted; `tetherctl requeue` refuses such an import. Finished imports not
-- yet pruned are found through a partial index that pruning empties.
ALTER TABLE tether.imports ADD COLUMN tasks_pruned_at timestamptz;
CREATE INDEX IF NOT EXISTS imports_to_prune ON tether.imports (finished_at)
    WHERE tasks_pruned_at IS NULL AND finished_at IS NOT NULL;
