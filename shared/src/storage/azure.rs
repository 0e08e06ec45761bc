//! Azure Blob Storage as an [`ObjectSource`], over the REST API with reqwest:
//! List Blobs one page per call (`marker`), Get Blob with `If-Match` on the
//! listed ETag, both authorised by the request's SAS token.
//!
//! The SAS token is a secret. It travels only in request URLs, and a URL
//! never reaches an error or a log line: transport errors are stripped of
//! theirs, and refusals are described by Azure's error code, never by the
//! response body (which may echo the request).

use base64::Engine;
use chrono::{DateTime, Utc};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet};
use reqwest::{Method, Response, StatusCode};

use super::{
    http_body, unreachable, ByteRange, ListPage, ListQuery, ObjectBody, ObjectMeta, ObjectSource,
    StorageError, DOWNLOAD_TIMEOUT, UNRESERVED,
};
use crate::contract::AzureSource;
use crate::secrets::Secret;

/// Where accounts live unless `TETHER_AZURE_BLOB_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://{account}.blob.core.windows.net";
/// The REST API version Tether speaks.
const API_VERSION: &str = "2021-12-02";
/// Characters kept as they are in a blob path; `/` stays a separator.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// Builds an [`AzureContainer`] per request.
#[derive(Debug, Clone)]
pub struct AzureSources {
    http: reqwest::Client,
    /// `TETHER_AZURE_BLOB_ENDPOINT`, with `{account}` in it.
    endpoint: String,
}

impl AzureSources {
    pub fn new(http: reqwest::Client, endpoint: Option<&str>) -> Self {
        let endpoint = endpoint.filter(|e| !e.is_empty()).unwrap_or(DEFAULT_ENDPOINT);
        Self { http, endpoint: endpoint.trim_end_matches('/').to_owned() }
    }

    /// The container of `source`, read with `sas` (the request's token, or
    /// the one the scheduler sealed for the import).
    pub fn open(&self, source: &AzureSource, sas: Secret) -> AzureContainer {
        let account = self.endpoint.replace("{account}", &source.account);
        AzureContainer {
            http: self.http.clone(),
            container_url: format!("{account}/{}", source.container),
            name: format!("azure://{}/{}", source.account, source.container),
            sas,
        }
    }
}

/// One container, read with the request's SAS token.
#[derive(Debug)]
pub struct AzureContainer {
    http: reqwest::Client,
    container_url: String,
    /// `azure://account/container`, for messages.
    name: String,
    sas: Secret,
}

#[async_trait::async_trait]
impl ObjectSource for AzureContainer {
    async fn list_page(&self, query: ListQuery<'_>) -> Result<ListPage, StorageError> {
        let prefix = query.prefix;
        let mut url = format!(
            "{}?restype=container&comp=list&include=metadata&maxresults={}&prefix={}",
            self.container_url,
            query.max_keys.clamp(1, 5000),
            utf8_percent_encode(prefix, UNRESERVED)
        );
        for (name, value) in [("marker", query.token), ("delimiter", query.delimiter)] {
            if let Some(value) = value {
                url.push_str(&format!("&{name}={}", utf8_percent_encode(value, UNRESERVED)));
            }
        }
        let response = self.call(Method::GET, url, &[]).await?;
        if !response.status().is_success() {
            return Err(self.refused(response, None).await);
        }
        let body = response.text().await.map_err(|e| unreachable("Azure", &e))?;
        let page = parse_listing(&body).map_err(|e| {
            StorageError::Unavailable(format!(
                "Azure answered the listing of {}/{prefix} unreadably: {e}",
                self.name
            ))
        })?;
        // List Blobs cannot start at a key: the pages before it are read and
        // dropped (a listing starts at a key only after the fan-out cap).
        Ok(page.within(&query))
    }

    async fn read(
        &self,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, StorageError> {
        let url = self.blob_url(key);
        let if_match = etag.map(|etag| ("If-Match", format!("\"{etag}\"")));
        let range_header = range.map(|range| ("x-ms-range", range.header()));
        let headers: Vec<_> = if_match.into_iter().chain(range_header).collect();
        let response = self.call_within(Method::GET, url.clone(), &headers, Some(DOWNLOAD_TIMEOUT)).await?;
        if response.status() == StatusCode::PRECONDITION_FAILED {
            // A deleted blob also fails If-Match (Azurite): tell the two apart.
            let now = self.call(Method::HEAD, url, &[]).await?;
            return Err(self
                .refused(if now.status() == StatusCode::NOT_FOUND { now } else { response }, Some(key))
                .await);
        }
        if !response.status().is_success() {
            return Err(self.refused(response, Some(key)).await);
        }
        // A range's answer carries the whole blob's MD5 in its own header.
        let md5 = response
            .headers()
            .get("x-ms-blob-content-md5")
            .or_else(|| response.headers().get("content-md5").filter(|_| range.is_none()))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).ok())
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok());
        Ok(http_body(response, md5, format!("{}/{key}", self.name)))
    }
}

impl AzureContainer {
    fn blob_url(&self, key: &str) -> String {
        format!("{}/{}", self.container_url, utf8_percent_encode(key, PATH))
    }

    /// Reads the first byte of `key`: proof that the token may read blobs,
    /// without downloading one (a connection check).
    pub(crate) async fn first_byte(&self, key: &str) -> Result<(), StorageError> {
        let range = ("x-ms-range", "bytes=0-0".to_owned());
        let response = self.call(Method::GET, self.blob_url(key), &[range]).await?;
        match response.status() {
            status if status.is_success() => {
                response.bytes().await.map(drop).map_err(|e| unreachable("Azure", &e))
            }
            // An empty blob has no first byte, but it was readable.
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(()),
            _ => Err(self.refused(response, Some(key)).await),
        }
    }

    /// Calls `url` with the SAS token appended, and `headers`.
    async fn call(
        &self,
        method: Method,
        url: String,
        headers: &[(&'static str, String)],
    ) -> Result<Response, StorageError> {
        self.call_within(method, url, headers, None).await
    }

    /// [`Self::call`] with a deadline of its own instead of the client's
    /// (an object's download).
    async fn call_within(
        &self,
        method: Method,
        mut url: String,
        headers: &[(&'static str, String)],
        timeout: Option<std::time::Duration>,
    ) -> Result<Response, StorageError> {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(self.sas.expose());
        let mut request = self.http.request(method, url).header("x-ms-version", API_VERSION);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.map_err(|e| unreachable("Azure", &e))
    }

    /// What a refusal means, by status and `x-ms-error-code`; `key` is set
    /// for reads.
    async fn refused(&self, response: Response, key: Option<&str>) -> StorageError {
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let name = &self.name;
        let object = key.map(|k| format!("{name}/{k}"));
        match (status, code.as_str(), object) {
            (_, "ContainerNotFound" | "ResourceNotFound", _) | (404, _, None) => StorageError::BucketNotFound(format!(
                "The container {name} does not exist: check source.account and source.container"
            )),
            (404, _, Some(object)) => StorageError::ObjectNotFound(format!("{object} was deleted after it was listed")),
            (412, _, Some(object)) => StorageError::Changed(format!(
                "{object} changed after it was listed; requeue the import to copy the new version"
            )),
            (403, "AuthorizationPermissionMismatch" | "AuthorizationResourceTypeMismatch", None) => {
                StorageError::AccessDenied(format!(
                    "The SAS token may not list {name}: issue a SAS token with the l (list) and r (read) permissions for this container"
                ))
            }
            (403, "AuthorizationPermissionMismatch" | "AuthorizationResourceTypeMismatch", Some(object)) => {
                StorageError::AccessDenied(format!(
                    "The SAS token may not read {object}: issue a SAS token with the l (list) and r (read) permissions for this container"
                ))
            }
            (403, _, _) => StorageError::Credentials(crate::credentials::CredentialError::Refused {
                sentence: format!(
                    "Azure refused the SAS token for {name} ({code}): it has expired, was revoked or is not valid for this account; send a new request with a current SAS token with the l and r permissions"
                ),
            }),
            (429 | 503, _, _) => StorageError::Throttled(format!("Azure {status} {code}")),
            _ => StorageError::Unavailable(format!("Azure {status} {code}")),
        }
    }
}

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

fn text<'a>(node: Option<Node<'a, '_>>) -> &'a str {
    node.and_then(|n| n.text()).unwrap_or_default()
}

/// A blob's or a prefix's `Name`: names with characters XML cannot carry
/// arrive percent-encoded.
fn name(node: Node<'_, '_>) -> Result<String, String> {
    let name = child(node, "Name").ok_or("a Blob or BlobPrefix without a Name")?;
    Ok(if name.attribute("Encoded") == Some("true") {
        percent_decode_str(text(Some(name))).decode_utf8_lossy().into_owned()
    } else {
        text(Some(name)).to_owned()
    })
}

/// Reads a List Blobs response: its blobs, prefixes and `NextMarker`.
fn parse_listing(xml: &str) -> Result<ListPage, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let mut objects = Vec::new();
    let mut prefixes = Vec::new();
    if let Some(blobs) = child(root, "Blobs") {
        for prefix in blobs.children().filter(|c| c.has_tag_name("BlobPrefix")) {
            prefixes.push(name(prefix)?);
        }
        for blob in blobs.children().filter(|c| c.has_tag_name("Blob")) {
            // A directory of a hierarchical-namespace account (ADLS Gen2) is
            // a blob marked `hdi_isfolder`: a folder marker, not an object.
            if text(child(blob, "Metadata").and_then(|m| child(m, "hdi_isfolder")))
                .eq_ignore_ascii_case("true")
            {
                continue;
            }
            let key = name(blob)?;
            let properties = child(blob, "Properties");
            let property = |p: &str| text(properties.and_then(|n| child(n, p)));
            objects.push(ObjectMeta {
                key,
                size: property("Content-Length").parse().unwrap_or(0),
                etag: Some(property("Etag").trim_matches('"').to_owned()).filter(|e| !e.is_empty()),
                last_modified: DateTime::parse_from_rfc2822(property("Last-Modified"))
                    .ok()
                    .map(|t| t.with_timezone(&Utc)),
            });
        }
    }
    let next = Some(text(child(root, "NextMarker")).to_owned()).filter(|m| !m.is_empty());
    Ok(ListPage { objects, prefixes, next })
}

#[cfg(test)]
mod tests {
    use super::parse_listing;

    #[test]
    fn listings_are_read_with_encoded_names_and_markers() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="c">
  <Prefix>a/</Prefix><MaxResults>2</MaxResults>
  <Blobs>
    <BlobPrefix><Name>a/b/</Name></BlobPrefix>
    <BlobPrefix><Name Encoded="true">a/%01c/</Name></BlobPrefix>
    <Blob><Name>a/1.jpg</Name><Properties><Last-Modified>Sat, 28 Nov 2026 12:00:00 GMT</Last-Modified><Etag>"0x8DC"</Etag><Content-Length>42</Content-Length></Properties></Blob>
    <Blob><Name>a/dir</Name><Properties><Content-Length>0</Content-Length></Properties><Metadata><hdi_isfolder>true</hdi_isfolder></Metadata></Blob>
    <Blob><Name Encoded="true">a/%01ctrl.jpg</Name><Properties><Etag>0x9</Etag><Content-Length>7</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker>2!8!YS8y</NextMarker>
</EnumerationResults>"#;
        let page = parse_listing(xml).expect("parses");
        assert_eq!(page.objects.len(), 2);
        assert_eq!(page.objects[0].key, "a/1.jpg");
        assert_eq!(page.objects[0].size, 42);
        assert_eq!(page.objects[0].etag.as_deref(), Some("0x8DC"));
        assert!(page.objects[0].last_modified.is_some());
        assert_eq!(page.objects[1].key, "a/\u{1}ctrl.jpg");
        assert_eq!(page.prefixes, ["a/b/", "a/\u{1}c/"]);
        assert_eq!(page.next.as_deref(), Some("2!8!YS8y"));
        let last =
            parse_listing("<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>").expect("parses");
        assert!(last.objects.is_empty() && last.next.is_none());
    }
}
