-- Flat prefixes in parallel: a listing task may own only a key range of its
-- prefix, [start_at, end_before). A task whose first page is full and holds
-- no sub-prefix splits what is left of its range at keys found by probe
-- listings, and each part becomes a listing task of its own (worker
-- `split.rs`). Tasks recorded before this migration end nowhere.
ALTER TABLE tether.tasks ADD COLUMN end_before text;
