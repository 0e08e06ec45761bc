-- Copy mode: a listed page's objects to copy become copy tasks of their own
-- (bounded batches), so copying runs beside listing and scales on its own.
ALTER TABLE tether.tasks DROP CONSTRAINT tasks_kind_check;
ALTER TABLE tether.tasks ADD CONSTRAINT tasks_kind_check CHECK (kind IN ('list', 'copy'));
-- A copy task's objects: [{"key", "size", "etag", "last_modified"}, ...].
ALTER TABLE tether.tasks ADD COLUMN items jsonb;
ALTER TABLE tether.tasks ALTER COLUMN prefix DROP NOT NULL;
