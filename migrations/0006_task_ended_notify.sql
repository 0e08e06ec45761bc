-- A task that ends (done, failed, cancelled) wakes the scheduler, which then
-- finishes its import at once instead of at its next housekeeping tick. One
-- notification per transaction (identical payloads are folded); the tick
-- remains the fallback for a scheduler that missed it.
CREATE FUNCTION tether.notify_task_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tether_task_ended', '');
    RETURN NULL;
END $$;

CREATE TRIGGER task_ended AFTER UPDATE OF state ON tether.tasks
    FOR EACH ROW WHEN (OLD.state = 'pending' AND NEW.state <> 'pending')
    EXECUTE FUNCTION tether.notify_task_ended();
