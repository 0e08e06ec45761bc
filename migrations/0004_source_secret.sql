-- An Azure request's SAS token, sealed with TETHER_SECRETS_KEY (AES-256-GCM,
-- nonce first, the import id as associated data). Never stored in clear; null
-- for other providers, and for Azure requests taken without a key.
ALTER TABLE tether.imports ADD COLUMN source_secret bytea;
