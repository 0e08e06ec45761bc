-- The scheduler's `tether_imports{state}` gauges read imports by state every
-- 10 s. Counting them scanned every import ever made; these counters are
-- kept by a trigger instead, so the gauges cost six rows however long the
-- history.
CREATE TABLE tether.import_counts (
    state   text PRIMARY KEY,
    imports bigint NOT NULL
);

-- Statement-level, with transition tables: one pass per statement however
-- many imports it changes (row-level, a bulk statement would update the same
-- counter row once per import, each time walking the versions it made).
-- Transition tables rule out `UPDATE OF state`, so every UPDATE of imports
-- runs it; one that changes no state finds nothing to move.
CREATE FUNCTION tether.count_import_states() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changes text := CASE TG_OP
        WHEN 'INSERT' THEN 'SELECT state, 1 AS delta FROM new_rows'
        WHEN 'DELETE' THEN 'SELECT state, -1 AS delta FROM old_rows'
        ELSE 'SELECT state, -1 AS delta FROM old_rows UNION ALL SELECT state, 1 FROM new_rows' END;
    moved record;
BEGIN
    -- One row per state whose count changes, locked in the order of the
    -- states' names: two statements never wait on each other in a cycle.
    FOR moved IN EXECUTE 'SELECT state, sum(delta) AS delta FROM (' || changes || ') c
                          GROUP BY state HAVING sum(delta) <> 0 ORDER BY state'
    LOOP
        UPDATE tether.import_counts SET imports = imports + moved.delta WHERE state = moved.state;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER import_counts_inserted AFTER INSERT ON tether.imports
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tether.count_import_states();
CREATE TRIGGER import_counts_deleted AFTER DELETE ON tether.imports
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tether.count_import_states();
CREATE TRIGGER import_counts_moved AFTER UPDATE ON tether.imports
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tether.count_import_states();

-- Counted once the triggers hold the table's lock: no change slips between.
INSERT INTO tether.import_counts (state, imports)
SELECT s.state, (SELECT count(*) FROM tether.imports i WHERE i.state = s.state)
FROM unnest(ARRAY['queued', 'running', 'succeeded', 'partially_succeeded', 'failed', 'cancelled']) AS s(state);
