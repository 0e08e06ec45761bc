//! What the access API reads: the images a request asks for, each with the
//! import whose credentials sign or proxy it (contract §8: the most recent
//! import of the same workspace, dataset and bucket, or Azure container,
//! that did not fail as a whole), in one query for all the ids of a
//! request. Workspace scoping is part of the query: another workspace's
//! image is simply not found.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::{DbError, Store};
use crate::contract::{ImportRequest, Source};

/// One image, as the access API needs it.
#[derive(Debug, Clone)]
pub struct AccessImage {
    pub image_id: Uuid,
    pub source_url: String,
    /// `true` for a copy (served from `stored_url`), `false` for a link.
    pub copied: bool,
    pub stored_url: Option<String>,
    pub etag: Option<String>,
    pub size_bytes: i64,
    /// For a link: the import whose credentials serve it; `None` when no
    /// import of its dataset and bucket is left that did not fail.
    pub credentials: Option<Arc<ImportCredentials>>,
}

/// The credentials of one import: its source, and what the scheduler
/// sealed for it (an Azure SAS token).
#[derive(Debug)]
pub struct ImportCredentials {
    pub import_id: Uuid,
    pub source: Source,
    pub sealed_secret: Option<Vec<u8>>,
}

/// `credentials` finds each (dataset, bucket)'s import once; the request
/// and sealed secret are sent with the first image of each import only.
const IMAGES_FOR_ACCESS: &str = "
WITH asked AS (
    SELECT u.ord, im.image_id, im.workspace_id, im.dataset_id, im.source_url, im.storage, im.stored_url, im.etag,
           im.size_bytes,
           substring(im.source_url FROM '^s3://[^/]+/|^gs://[^/]+/|^azure://[^/]+/[^/]+/') AS root
    FROM unnest($2::uuid[]) WITH ORDINALITY AS u(id, ord)
    JOIN tether.images im ON im.image_id = u.id AND ($1::text IS NULL OR im.workspace_id = $1)
), credentials AS (
    SELECT r.workspace_id, r.dataset_id, r.root, c.import_id, c.request, c.source_secret
    FROM (SELECT DISTINCT workspace_id, dataset_id, root FROM asked WHERE storage = 'link') r
    CROSS JOIN LATERAL (
        SELECT i.import_id, i.request, i.source_secret FROM tether.imports i
        WHERE i.workspace_id = r.workspace_id AND i.dataset_id = r.dataset_id AND i.source_root = r.root
          AND i.state <> 'failed'
        ORDER BY i.created_at DESC LIMIT 1
    ) c
), joined AS (
    SELECT a.*, c.import_id, c.request, c.source_secret,
           row_number() OVER (PARTITION BY c.import_id ORDER BY a.ord) AS nth
    FROM asked a
    LEFT JOIN credentials c ON c.workspace_id = a.workspace_id AND c.dataset_id = a.dataset_id AND c.root = a.root
)
SELECT image_id, source_url, storage = 'copy' AS copied, stored_url, etag, size_bytes, import_id,
       CASE WHEN nth = 1 THEN request END AS request,
       CASE WHEN nth = 1 THEN source_secret END AS source_secret
FROM joined ORDER BY ord";

impl Store {
    /// The images among `ids`, in the order asked; with `workspace_id`,
    /// ids that are not that workspace's images are left out (a content
    /// URL's signature names one image and needs no workspace).
    pub async fn images_for_access(
        &self,
        workspace_id: Option<&str>,
        ids: &[Uuid],
    ) -> Result<Vec<AccessImage>, DbError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(IMAGES_FOR_ACCESS).await?;
        let rows = client.query(&statement, &[&workspace_id, &ids]).await?;
        let mut imports: HashMap<Uuid, Arc<ImportCredentials>> = HashMap::new();
        let mut images = Vec::with_capacity(rows.len());
        for row in rows {
            let import_id: Option<Uuid> = row.try_get("import_id")?;
            let request: Option<Value> = row.try_get("request")?;
            if let (Some(import_id), Some(request)) = (import_id, request) {
                let stored = ImportRequest::from_stored_json(&request)
                    .map_err(|e| DbError::Corrupt(format!("import {import_id}: {e}")))?;
                let credentials = ImportCredentials {
                    import_id,
                    source: stored.source,
                    sealed_secret: row.try_get("source_secret")?,
                };
                imports.insert(import_id, Arc::new(credentials));
            }
            images.push(AccessImage {
                image_id: row.try_get("image_id")?,
                source_url: row.try_get("source_url")?,
                copied: row.try_get("copied")?,
                stored_url: row.try_get("stored_url")?,
                etag: row.try_get("etag")?,
                size_bytes: row.try_get("size_bytes")?,
                credentials: import_id.and_then(|id| imports.get(&id).cloned()),
            });
        }
        Ok(images)
    }
}
