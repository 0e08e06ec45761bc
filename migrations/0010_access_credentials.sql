-- The access API signs or proxies an image with the credentials of the most
-- recent import of the same workspace, dataset and bucket (or Azure
-- container) that did not fail as a whole (contract §8). `source_root` is
-- that bucket as the start of `tether.images.source_url`
-- (`s3://bucket/`, `gs://bucket/`, `azure://account/container/`), so that
-- one index lookup per (dataset, bucket) finds those credentials.
ALTER TABLE tether.imports ADD COLUMN source_root text GENERATED ALWAYS AS (
    CASE request->'source'->>'provider'
        WHEN 's3' THEN 's3://' || (request->'source'->>'bucket') || '/'
        WHEN 'gcs' THEN 'gs://' || (request->'source'->>'bucket') || '/'
        WHEN 'azure' THEN 'azure://' || (request->'source'->>'account') || '/'
                          || (request->'source'->>'container') || '/'
    END) STORED;

CREATE INDEX imports_access_credentials
    ON tether.imports (workspace_id, dataset_id, source_root, created_at DESC)
    WHERE state <> 'failed';
