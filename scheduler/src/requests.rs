//! Handling one message of `tether.import-requests`: an ImportRequest or a
//! cancel. The message is acknowledged only after its effect is committed
//! (or it was moved to `tether.rejected`); a transient error keeps it in
//! hand and retries with backoff, so an outage does not burn through the
//! queue's delivery limit, while an error that no retry can cure (Postgres
//! refusing a value of the request) rejects it at once, so that one request
//! never stops intake for every tenant.

use std::sync::Arc;

use backon::Retryable;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tether_shared::contract::{
    parse_request, AzureSource, CancelRequest, ImportRequest, Rejection, Source, ValidRequest,
    ValidationOptions, REQUEST_QUEUE, ROUTING_CANCEL,
};
use tether_shared::db::imports::{Cancelled, Recorded};
use tether_shared::db::{DbError, Store};
use tether_shared::model::{rejection, retry};
use tether_shared::queue::{Link, QueueError};
use tether_shared::secrets::SecretsKey;
use tether_shared::telemetry::metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl HandleError {
    fn is_transient(&self) -> bool {
        match self {
            HandleError::Db(error) => error.is_transient(),
            HandleError::Queue(_) => true,
        }
    }
}

pub(crate) struct Handler {
    store: Store,
    /// Publishes through whichever connection is current.
    link: Link,
    options: ValidationOptions,
    secrets: Option<SecretsKey>,
    /// Wakes the housekeeping, which releases a new import's tasks.
    wake: Arc<Notify>,
}

impl Handler {
    pub(crate) fn new(
        store: Store,
        link: Link,
        options: ValidationOptions,
        secrets: Option<SecretsKey>,
        wake: Arc<Notify>,
    ) -> Self {
        Self { store, link, options, secrets, wake }
    }

    pub(crate) async fn handle(&self, delivery: Delivery, shutdown: &CancellationToken) {
        let m = metrics();
        m.amqp_messages.with_label_values(&[REQUEST_QUEUE, "consumed"]).inc();
        let timer = m.request_duration.start_timer();
        let result = (|| self.process(&delivery))
            .retry(retry::request_intake())
            .when(|error| error.is_transient() && !shutdown.is_cancelled() && !delivery.acker.poisoned())
            .notify(|error, delay| tracing::warn!(%error, ?delay, "Cannot handle a request yet; retrying."))
            .await;
        let result = match result {
            // Postgres refused something of this very request: no retry can
            // help, and holding it would stop intake for every tenant.
            Err(error) if !error.is_transient() => {
                tracing::warn!(%error, "A request cannot be recorded; rejecting it.");
                let reason = format!("Tether cannot record this request ({error}): fix the request and send it with a new import_id");
                self.reject(&delivery, &reason).await
            }
            other => other,
        };
        let (sent, action) = match result {
            Ok(()) => (delivery.ack(BasicAckOptions::default()).await, "acked"),
            // Shutting down mid-outage, or the channel died (the broker
            // redelivers it, and the consumer loop reconnects): hand it back.
            Err(_) => {
                (delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await, "requeued")
            }
        };
        timer.observe_duration();
        m.amqp_messages.with_label_values(&[REQUEST_QUEUE, action]).inc();
        if !matches!(sent, Ok(true)) {
            tracing::warn!("Could not settle a request message; the broker will redeliver it.");
        }
    }

    async fn process(&self, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.routing_key.as_str() == ROUTING_CANCEL {
            self.cancel(delivery).await
        } else {
            self.request(delivery).await
        }
    }

    async fn request(&self, delivery: &Delivery) -> Result<(), HandleError> {
        let content_type = delivery.properties.content_type().as_ref().map(|c| c.as_str());
        match parse_request(&delivery.data, content_type, self.options.clone()) {
            Ok(ValidRequest { request, digest }) => {
                let sealed = self.seal_secret(&request);
                match self.store.record_import(&request, &digest, sealed.as_deref()).await? {
                    Recorded::Created => {
                        tracing::info!(import_id = %request.import_id, prefixes = request.prefixes.len(), "Import recorded.");
                        // Its listing tasks are held: the housekeeping
                        // releases them within the fair share.
                        self.wake.notify_one();
                        Ok(())
                    }
                    Recorded::Duplicate => {
                        tracing::info!(import_id = %request.import_id, "Duplicate request ignored.");
                        Ok(())
                    }
                    Recorded::Conflict => {
                        let reason = format!(
                        "import_id {} was already used for a different request; send a new request with a new import_id",
                        request.import_id
                    );
                        self.reject(delivery, &reason).await
                    }
                }
            }
            Err(Rejection { claim: Some(claim), reason }) => {
                if self.store.is_duplicate(claim.import_id, &claim.digest).await? {
                    return Ok(()); // This very rejection was handled before.
                }
                let reason = rejection::bounded_reason(&reason);
                self.reject(delivery, &reason).await?;
                self.store.record_rejected(claim.import_id, &claim.digest, &reason).await?;
                Ok(())
            }
            Err(Rejection { claim: None, reason }) => self.reject(delivery, &reason).await,
        }
    }

    /// Seals an Azure request's SAS token for the workers. Without
    /// `TETHER_SECRETS_KEY` nothing is kept, and the import fails with a
    /// sentence saying so when a worker takes it up.
    fn seal_secret(&self, request: &ImportRequest) -> Option<Vec<u8>> {
        let Source::Azure(AzureSource { sas_token: Some(token), .. }) = &request.source else { return None };
        match &self.secrets {
            Some(key) => Some(key.seal(token, request.import_id)),
            None => {
                tracing::error!(import_id = %request.import_id, "An Azure import arrived, but TETHER_SECRETS_KEY is unset: the SAS token cannot be kept and the import will fail.");
                None
            }
        }
    }

    async fn cancel(&self, delivery: &Delivery) -> Result<(), HandleError> {
        let import_id = match serde_json::from_slice::<CancelRequest>(&delivery.data) {
            Ok(cancel) => cancel.import_id,
            Err(error) => {
                let reason = format!("the cancel body is not {{\"import_id\": \"<uuid>\"}} ({error})");
                return self.reject(delivery, &reason).await;
            }
        };
        match self.store.cancel_import(import_id).await? {
            Cancelled::Cancelled => tracing::info!(%import_id, "Import cancelled."),
            Cancelled::AlreadyFinal(state) => {
                tracing::info!(%import_id, %state, "Cancel ignored: the import is already final.")
            }
            Cancelled::NotFound => {
                return self.reject(delivery, &format!("no import has the id {import_id}")).await;
            }
        }
        Ok(())
    }

    async fn reject(&self, delivery: &Delivery, reason: &str) -> Result<(), HandleError> {
        tracing::warn!(reason, "Request rejected.");
        metrics().amqp_messages.with_label_values(&[REQUEST_QUEUE, "rejected"]).inc();
        self.link.publisher()?.publish_rejected(&delivery.data, &delivery.properties, reason).await?;
        Ok(())
    }
}
