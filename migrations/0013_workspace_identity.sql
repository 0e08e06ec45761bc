-- A dataset belongs to its workspace (contract §3): (workspace_id,
-- dataset_id, source_url) is unique, and two workspaces that both name a
-- dataset `default` never share or touch each other's rows.
--
-- Until now the key was image_id = UUIDv5(dataset_id, source_url), so the
-- same dataset id in two workspaces was one set of rows. From now on the key
-- is this unique index, and new rows get image_id = UUIDv5(workspace_id,
-- dataset_id, source_url). No image_id is rewritten: the platform keeps ids,
-- and an id never changes. An existing row stays its workspace's row under
-- its old id, and imports of that workspace go on updating it.
--
-- The key holds the URL itself, so that one import's rows arrive in listing
-- order on a few adjacent pages of the index (see migration 0017); a URL
-- over 2000 bytes (Azure names reach 1024 characters of several bytes)
-- is held as a prefix and its SHA-256, within a btree entry's limit.
CREATE FUNCTION tether.url_key(url text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN octet_length(url) <= 2000 THEN url
                ELSE left(url, 500) || '#sha256:' || encode(sha256(convert_to(url, 'UTF8')), 'hex') END;

-- Rows bulk-loaded under ids of their own (contract §3 allows it) and then
-- imported again under the old key were two rows for one object. Both ids
-- stay (the platform may hold either); the one imports update is the row of
-- the most recent import Tether knows, the others are `superseded`: they
-- keep answering the access API but no import writes them again.
ALTER TABLE tether.images ADD COLUMN superseded boolean NOT NULL DEFAULT false;

-- One pass over the table finds the keys held twice; only their rows are ranked.
WITH doubled AS (
    SELECT workspace_id, dataset_id, tether.url_key(source_url) AS key
    FROM tether.images
    GROUP BY 1, 2, 3 HAVING count(*) > 1
), ranked AS (
    SELECT i.image_id,
           row_number() OVER (
               PARTITION BY i.workspace_id, i.dataset_id, d.key
               ORDER BY (imp.created_at IS NULL), imp.created_at DESC, i.image_id
           ) AS rank
    FROM doubled d
    JOIN tether.images i ON i.workspace_id = d.workspace_id AND i.dataset_id = d.dataset_id
                        AND tether.url_key(i.source_url) = d.key
    LEFT JOIN tether.imports imp ON imp.import_id = i.import_id
)
UPDATE tether.images im SET superseded = true
FROM ranked
WHERE ranked.image_id = im.image_id AND ranked.rank > 1;

-- Superseded rows are told apart by their id, live ones are one per key
-- (NULLS NOT DISTINCT); not a partial index, so that it also serves the
-- platform's reads of a dataset, which know nothing of `superseded`.
CREATE UNIQUE INDEX images_name
    ON tether.images (workspace_id, dataset_id, tether.url_key(source_url), (CASE WHEN superseded THEN image_id END))
    NULLS NOT DISTINCT;
