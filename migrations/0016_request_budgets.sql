-- Request budgets: how fast the whole fleet may call one customer bucket,
-- a token bucket per (bucket, class of request) shared by every worker.
-- `rate` is the current allowance in requests/s: it halves when the store
-- answers SlowDown / 429 / 503 (at most once a second) and grows back
-- linearly to `ceiling` (the operator's setting). Workers take tokens in
-- small batches, so a bucket costs a few statements per second, not one
-- per request.
CREATE TABLE tether.request_budgets (
    -- s3://bucket, gs://bucket or azure://account/container
    bucket      text NOT NULL,
    class       text NOT NULL CHECK (class IN ('list', 'read')),
    ceiling     double precision NOT NULL CHECK (ceiling > 0),
    rate        double precision NOT NULL CHECK (rate > 0),
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    slowed_at   timestamptz,
    PRIMARY KEY (bucket, class)
);
