//! One cache slot per credential key (an assumed role, an impersonated
//! service account). A caller locks its key's slot while it renews, so
//! concurrent pages of one import share one call to the provider, while
//! other keys go on unhindered.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// The cached value of one key (`None` until obtained, or once invalidated).
pub(crate) type Slot<V> = Arc<tokio::sync::Mutex<Option<V>>>;

#[derive(Debug)]
pub(crate) struct Slots<K, V>(Mutex<HashMap<K, Slot<V>>>);

impl<K: Eq + Hash + Clone, V> Slots<K, V> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    /// The slot of `key`, made empty on first use.
    pub(crate) fn get(&self, key: &K) -> Slot<V> {
        let mut slots = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(slots.entry(key.clone()).or_default())
    }

    /// Forgets what `key`'s slot holds (a credential refused before its time).
    pub(crate) async fn invalidate(&self, key: &K) {
        *self.get(key).lock().await = None;
    }
}
