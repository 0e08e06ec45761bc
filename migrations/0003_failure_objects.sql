-- What `tetherctl requeue` needs to copy a failed object again: the object
-- as the listing described it. Null for failed prefixes and for objects that
-- a requeue cannot help (too_large).
ALTER TABLE tether.import_failures
    ADD COLUMN object_key text,
    ADD COLUMN size_bytes bigint,
    ADD COLUMN etag text,
    ADD COLUMN last_modified timestamptz;
