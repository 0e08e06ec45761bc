-- Parallel listing: a listing task lists with a delimiter, and the
-- sub-prefixes it meets become listing tasks of their own, up to a cap per
-- import; past the cap a task lists the rest of its prefix recursively,
-- from `start_at` on.
-- Tasks recorded before this migration list recursively, as they did.
ALTER TABLE tether.tasks
    ADD COLUMN delimited boolean NOT NULL DEFAULT false,
    -- Only keys at or after this one are the task's (null: all of `prefix`).
    ADD COLUMN start_at text;
-- Listing tasks the import has (the cap's counter; one hot row per import is
-- already updated by every page commit).
ALTER TABLE tether.imports ADD COLUMN list_tasks int NOT NULL DEFAULT 0;
