//! Wake-ups for the scheduler. A commit that ends a task notifies
//! `tether_task_ended` (a trigger, migration 0006); the scheduler listens on
//! a connection of its own and runs its housekeeping at once, so an import
//! is final milliseconds after its last page rather than at the next tick.
//! A lost connection is re-made with backoff; meanwhile the tick still works.
//! Writers that record held tasks without a trigger to announce them (a
//! requeue resumes tasks by updating them) call [`wake_scheduler`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};
use tokio_util::sync::CancellationToken;

use super::{DbError, Store};

const CHANNEL: &str = "tether_task_ended";

/// Wakes the schedulers when `tx` commits (a notification on the channel
/// the triggers use), so that held tasks it recorded are released at once.
pub(crate) async fn wake_scheduler(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), DbError> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
    Ok(())
}

impl Store {
    /// Calls `wake.notify_one()` whenever a task ends, until `stop`.
    pub async fn listen_for_ended_tasks(&self, wake: Arc<Notify>, stop: CancellationToken) {
        let mut delay = Duration::from_millis(500);
        loop {
            let listened = tokio::select! {
                () = stop.cancelled() => return,
                result = self.listen_once(&wake) => result,
            };
            if let Err(error) = listened {
                tracing::debug!(%error, "The wake-up connection to Postgres failed; the tick goes on meanwhile.");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Listens on one connection (over TLS if the URL asks for it) until it
    /// fails.
    async fn listen_once(&self, wake: &Arc<Notify>) -> Result<(), tokio_postgres::Error> {
        let config = &self.target.config;
        match &self.target.tls {
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                listen_on(client, connection, wake).await
            }
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                listen_on(client, connection, wake).await
            }
        }
    }
}

async fn listen_on<S, T>(
    client: Client,
    mut connection: Connection<S, T>,
    wake: &Arc<Notify>,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (lost_tx, lost) = tokio::sync::oneshot::channel();
    let notify = Arc::clone(wake);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => notify.notify_one(),
                Ok(_) => {}
                Err(error) => {
                    let _ = lost_tx.send(error);
                    return;
                }
            }
        }
    });
    let result = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        // Anything that ended while we were not listening.
        wake.notify_one();
        match lost.await {
            Ok(error) => Err(error),
            Err(_) => Ok(()),
        }
    }
    .await;
    driver.abort();
    result
}
