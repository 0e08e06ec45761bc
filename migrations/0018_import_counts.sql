-- The scheduler's `tether_imports{state}` gauges read imports by state every
-- 10 s. Counting them scanned every import ever made; these counters are
-- kept by a trigger instead, so the gauges cost six rows however long the
-- history. Each statement that changes an import's state moves one count
-- (an import changes state at most a handful of times in its life).
CREATE TABLE tether.import_counts (
    state   text PRIMARY KEY,
    imports bigint NOT NULL
);

CREATE FUNCTION tether.count_import_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE tether.import_counts SET imports = imports + 1 WHERE state = NEW.state;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE tether.import_counts SET imports = imports - 1 WHERE state = OLD.state;
    ELSIF OLD.state < NEW.state THEN
        -- Two counters are locked in the order of their names, so two
        -- transactions moving counts never wait on each other in a cycle.
        UPDATE tether.import_counts SET imports = imports - 1 WHERE state = OLD.state;
        UPDATE tether.import_counts SET imports = imports + 1 WHERE state = NEW.state;
    ELSE
        UPDATE tether.import_counts SET imports = imports + 1 WHERE state = NEW.state;
        UPDATE tether.import_counts SET imports = imports - 1 WHERE state = OLD.state;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER import_counts AFTER INSERT OR DELETE ON tether.imports
    FOR EACH ROW EXECUTE FUNCTION tether.count_import_states();
CREATE TRIGGER import_counts_moved AFTER UPDATE OF state ON tether.imports
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION tether.count_import_states();

-- Counted once the triggers hold the table's lock: no change slips between.
INSERT INTO tether.import_counts (state, imports)
SELECT s.state, (SELECT count(*) FROM tether.imports i WHERE i.state = s.state)
FROM unnest(ARRAY['queued', 'running', 'succeeded', 'partially_succeeded', 'failed', 'cancelled']) AS s(state);
