-- Tether's schema: imports, their listing tasks, the objects they brought in,
-- per-object and per-prefix failures, and the outbox of FinishedEvents.
-- The platform reads `tether.import_status`, `tether.images` and
-- `tether.import_failures` (contract §3); everything else is Tether's own.

CREATE TABLE tether.imports (
    import_id        uuid PRIMARY KEY,
    -- sha256 of the request's canonical JSON: the idempotency check.
    request_digest   bytea NOT NULL,
    -- The validated request with secrets removed; null for a rejected one.
    request          jsonb,
    workspace_id     text,
    dataset_id       text,
    mode             text,
    provider         text,
    state            text NOT NULL CHECK (state IN
                     ('queued', 'running', 'succeeded', 'partially_succeeded', 'failed', 'cancelled')),
    objects_listed   bigint NOT NULL DEFAULT 0,
    objects_imported bigint NOT NULL DEFAULT 0,
    -- skipped = filtered (left out by the extension filter) + unchanged.
    objects_filtered bigint NOT NULL DEFAULT 0,
    objects_unchanged bigint NOT NULL DEFAULT 0,
    objects_failed   bigint NOT NULL DEFAULT 0,
    bytes_copied     bigint NOT NULL DEFAULT 0,
    error            text,
    -- Bumped each time the import becomes final (FinishedEvent.revision).
    revision         int NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    deadline_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours'
);

CREATE INDEX imports_unfinished ON tether.imports (created_at)
    WHERE state IN ('queued', 'running');

-- One row per listing chain: a prefix paged through one page per message.
-- `seq` is the page number the next message must carry; a message with any
-- other seq is a duplicate and does nothing.
CREATE TABLE tether.tasks (
    task_id       uuid PRIMARY KEY,
    import_id     uuid NOT NULL REFERENCES tether.imports ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('list')),
    prefix        text NOT NULL,
    continuation  text,
    seq           int NOT NULL DEFAULT 0,
    state         text NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'cancelled')),
    attempts      int NOT NULL DEFAULT 0,
    published_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tasks_pending ON tether.tasks (import_id) WHERE state = 'pending';
CREATE INDEX tasks_republish ON tether.tasks (published_at) WHERE state = 'pending';

-- image_id is a UUIDv5 of (dataset_id, source_url), computed by Tether, so it
-- is the unique key without indexing URLs that may exceed a btree entry.
CREATE TABLE tether.images (
    image_id      uuid PRIMARY KEY,
    import_id     uuid NOT NULL,
    workspace_id  text NOT NULL,
    dataset_id    text NOT NULL,
    source_url    text NOT NULL,
    size_bytes    bigint NOT NULL,
    etag          text,
    last_modified timestamptz,
    storage       text NOT NULL CHECK (storage IN ('link', 'copy')),
    stored_url    text
);

CREATE INDEX images_import ON tether.images (import_id);

CREATE TABLE tether.import_failures (
    import_id       uuid NOT NULL REFERENCES tether.imports ON DELETE CASCADE,
    -- UUIDv5 of source_url, for the same reason as images.image_id.
    failure_key     uuid NOT NULL,
    source_url      text NOT NULL,
    code            text NOT NULL,
    message         text NOT NULL,
    attempts        int NOT NULL DEFAULT 1,
    last_attempt_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (import_id, failure_key)
);

-- FinishedEvents waiting to be published (transactional outbox).
CREATE TABLE tether.events (
    event_id     bigserial PRIMARY KEY,
    import_id    uuid NOT NULL,
    body         jsonb NOT NULL,
    published_at timestamptz
);

CREATE INDEX events_unpublished ON tether.events (event_id) WHERE published_at IS NULL;

CREATE VIEW tether.import_status AS
SELECT import_id, workspace_id, dataset_id, mode, provider, state,
       objects_listed, objects_imported,
       objects_filtered + objects_unchanged AS objects_skipped,
       objects_failed, bytes_copied, error,
       created_at, started_at, finished_at, deadline_at,
       (state IN ('queued', 'running') AND now() > deadline_at) AS overdue
FROM tether.imports;
