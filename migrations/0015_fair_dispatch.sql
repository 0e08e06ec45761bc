-- Fair share: a task is recorded *held* (not yet sent to RabbitMQ) and the
-- scheduler releases held tasks round-robin across workspaces and imports,
-- keeping at most TETHER_FAIR_IMPORT_TASKS tasks of one kind of one import
-- and TETHER_FAIR_WORKSPACE_TASKS of one workspace released at once. A big
-- import therefore never has more than its share queued ahead of a small one.
-- Tasks recorded without `held` (before this migration, or by a writer that
-- publishes them itself) are released as before.
ALTER TABLE tether.tasks ADD COLUMN held boolean NOT NULL DEFAULT false;

-- Released tasks per import and kind: the in-flight counts of each pass.
CREATE INDEX tasks_in_flight ON tether.tasks (import_id, kind) WHERE state = 'pending' AND NOT held;
-- Held tasks of an import, oldest first: what a pass releases next.
CREATE INDEX tasks_held ON tether.tasks (import_id, kind, updated_at) WHERE state = 'pending' AND held;

-- Recording held tasks wakes the scheduler too (the channel of migration
-- 0006), so they are released at once rather than at the next tick.
CREATE TRIGGER tasks_held AFTER INSERT ON tether.tasks
    FOR EACH STATEMENT EXECUTE FUNCTION tether.notify_task_ended();
