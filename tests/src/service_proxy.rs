//! A TCP proxy between one Tether process and RabbitMQ or PostgreSQL, to
//! place a kill exactly. In front of RabbitMQ it reads AMQP 0-9-1 frames
//! just enough to withhold the client's `basic.ack`s on request: a worker
//! killed while its acks are withheld has committed steps whose messages the
//! broker still holds as unacknowledged; it redelivers them, and the `seq`
//! check must make them harmless (a kill between a commit and its ack, on
//! demand rather than by luck). In front of either, it can pause what the
//! client sends: a worker whose database is paused finishes the commits
//! already sent (and publishes their next steps) and starts no new one, so a
//! kill then loses no message that Tether itself would not lose.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The protocol header a client sends before its first frame.
const PROTOCOL_HEADER: usize = 8;
/// AMQP method frames, and `basic.ack` (class 60, method 80).
const METHOD_FRAME: u8 = 1;
const BASIC_ACK: [u8; 4] = [0, 60, 0, 80];

/// A running proxy; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct ServiceProxy {
    /// The URL to give the process: the test's URL, through the proxy.
    pub url: String,
    hold: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    withheld: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ServiceProxy {
    /// A proxy in front of the broker of `amqp_url` (`amqp://user:pass@host:port/vhost`).
    pub async fn start(amqp_url: &str) -> Self {
        Self::start_for(amqp_url, true).await
    }

    /// A proxy in front of the database of `database_url`, which forwards
    /// bytes as they are (acks are an AMQP matter).
    pub async fn database(database_url: &str) -> Self {
        Self::start_for(database_url, false).await
    }

    async fn start_for(service_url: &str, amqp: bool) -> Self {
        let mut url = reqwest::Url::parse(service_url).expect("the service URL parses");
        let upstream = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5672));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the AMQP proxy");
        let port = listener.local_addr().expect("proxy address").port();
        url.set_host(Some("127.0.0.1")).expect("a host");
        url.set_port(Some(port)).expect("a port");
        let (hold, paused, withheld, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            CancellationToken::new(),
        );
        let switches = Switches {
            amqp,
            hold: Arc::clone(&hold),
            paused: Arc::clone(&paused),
            withheld: Arc::clone(&withheld),
        };
        let task_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    () = task_stop.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                };
                let Ok(broker) = TcpStream::connect(&upstream).await else { continue };
                let (switches, stop) = (switches.clone(), task_stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = relay(client, broker, switches) => {}
                    }
                });
            }
        });
        Self { url: url.to_string(), hold, paused, withheld, stop }
    }

    /// From now on, nothing the client sends reaches the server (it waits).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// From now on, the client's acks never reach the broker.
    pub fn hold_acks(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// How many acks were withheld so far.
    pub fn withheld(&self) -> u64 {
        self.withheld.load(Ordering::SeqCst)
    }
}

/// What a connection of the proxy obeys.
#[derive(Debug, Clone)]
struct Switches {
    /// AMQP frames (else bytes as they come).
    amqp: bool,
    hold: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    withheld: Arc<AtomicU64>,
}

impl Switches {
    async fn unpaused(&self) {
        while self.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// Copies the server's bytes as they are, and the client's (frame by frame
/// for AMQP, dropping `basic.ack` frames while acks are held), holding them
/// while paused.
async fn relay(client: TcpStream, broker: TcpStream, switches: Switches) {
    let Switches { amqp, hold, withheld, .. } = switches.clone();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    let down = async {
        let _ = tokio::io::copy(&mut broker_read, &mut client_write).await;
    };
    let up = async {
        let mut pending: Vec<u8> = Vec::new();
        let mut header_sent = false;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buffer[..n]);
            switches.unpaused().await;
            if !amqp {
                if broker_write.write_all(&pending).await.is_err() {
                    return;
                }
                pending.clear();
                continue;
            }
            if !header_sent {
                if pending.len() < PROTOCOL_HEADER {
                    continue;
                }
                if broker_write.write_all(&pending[..PROTOCOL_HEADER]).await.is_err() {
                    return;
                }
                pending.drain(..PROTOCOL_HEADER);
                header_sent = true;
            }
            // Whole frames: type (1), channel (2), size (4), payload, 0xCE.
            while pending.len() >= 7 {
                let size = u32::from_be_bytes([pending[3], pending[4], pending[5], pending[6]]) as usize;
                let total = 7 + size + 1;
                if pending.len() < total {
                    break;
                }
                let frame: Vec<u8> = pending.drain(..total).collect();
                let is_ack = frame[0] == METHOD_FRAME && size >= 4 && frame[7..11] == BASIC_ACK;
                if is_ack && hold.load(Ordering::SeqCst) {
                    withheld.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if broker_write.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}
