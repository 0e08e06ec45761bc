//! Every task message of an import needs the import's request, which may
//! hold 1000 prefixes of 1 KiB. Read, parsed and validated for each message,
//! it cost a worker more than the listing itself; a request never changes
//! once recorded, so each process keeps the validated request per import,
//! and a message reads only its task's row.
//!
//! Bounded by entries and by the requests' stored size, evicting the
//! oldest first: a worker works on few imports at once, and an evicted one
//! is simply read again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

use crate::contract::ImportRequest;

/// Requests kept at most.
const MAX_ENTRIES: usize = 256;
/// Stored JSON bytes kept at most, all requests together.
const MAX_BYTES: usize = 32 << 20;

/// What a task needs of its import, as read once.
#[derive(Debug)]
pub(crate) struct CachedRequest {
    pub request: Arc<ImportRequest>,
    /// What the scheduler sealed for the import (an Azure SAS token).
    pub sealed_secret: Option<Vec<u8>>,
    /// The stored request's size, for the bound.
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub(crate) struct RequestCache {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_import: HashMap<Uuid, Arc<CachedRequest>>,
    oldest_first: VecDeque<Uuid>,
    bytes: usize,
}

impl RequestCache {
    pub(crate) fn get(&self, import_id: Uuid) -> Option<Arc<CachedRequest>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).by_import.get(&import_id).cloned()
    }

    pub(crate) fn insert(&self, import_id: Uuid, entry: CachedRequest) -> Arc<CachedRequest> {
        let entry = Arc::new(entry);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = inner.by_import.insert(import_id, Arc::clone(&entry)) {
            inner.bytes -= previous.bytes;
        } else {
            inner.oldest_first.push_back(import_id);
        }
        inner.bytes += entry.bytes;
        while inner.by_import.len() > MAX_ENTRIES || (inner.bytes > MAX_BYTES && inner.by_import.len() > 1) {
            let Some(oldest) = inner.oldest_first.pop_front() else { break };
            if let Some(evicted) = inner.by_import.remove(&oldest) {
                inner.bytes -= evicted.bytes;
            }
        }
        entry
    }
}
