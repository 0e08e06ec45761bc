-- Staff's actions on imports (`tetherctl requeue`, `cancel`, `submit`): who
-- did what to which import, when and why. A row is written before the action
-- runs (no action without its row) and its outcome once it has run; rows are
-- never changed otherwise nor deleted by Tether.
CREATE TABLE tether.audit (
    audit_id  bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    -- `--actor`, or the login name of whoever ran tetherctl.
    actor     text NOT NULL,
    action    text NOT NULL CHECK (action IN ('requeue', 'cancel', 'submit')),
    -- Null for a submitted file without a readable import_id.
    import_id uuid,
    -- `--reason`, as typed.
    reason    text,
    -- What came of it, one sentence; null while the action runs (or if
    -- tetherctl died before it could say).
    outcome   text
);

CREATE INDEX audit_import ON tether.audit (import_id, at);
