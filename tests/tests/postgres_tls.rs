//! TLS to Postgres when the URL asks for it, and the session limits on
//! every connection.
//!
//! The machine's Postgres runs as a shared system service with a
//! certificate of its own (Debian's snake-oil one), so `sslmode=require`
//! is tested against it directly, while the certificate checks of
//! `verify-ca` and `verify-full` are tested against a TLS front of the
//! test's own: it answers Postgres's SSLRequest, presents a server
//! certificate signed by a CA made by the test, and relays to the real
//! server. It refuses plain connections, so a connection through it is
//! TLS or nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tether_shared::config::DbSession;
use tether_shared::db::Store;
use tether_shared::secrets::Secret;
use tether_tests::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Postgres's SSLRequest code.
const SSL_REQUEST: u32 = 80_877_103;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A TLS front for `upstream` with a certificate for `names` from `ca`;
/// returns its port and the number of TLS sessions it accepted.
async fn tls_front(ca: &Ca, names: &[&str], upstream: String) -> (u16, Arc<AtomicUsize>) {
    let key = KeyPair::generate().expect("server key");
    let params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
    let cert = params.signed_by(&key, &ca.issuer).expect("server certificate");
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
            )
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&sessions);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (acceptor, upstream, counted) = (acceptor.clone(), upstream.clone(), Arc::clone(&counted));
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if client.read_exact(&mut request).await.is_err()
                    || u32::from_be_bytes([request[4], request[5], request[6], request[7]]) != SSL_REQUEST
                {
                    return; // plain start-up: refused
                }
                if client.write_all(b"S").await.is_err() {
                    return;
                }
                let Ok(mut tls) = acceptor.accept(client).await else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut server) = TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                }
            });
        }
    });
    (port, sessions)
}

/// The test database's URL through `host:port`, with `query` added.
fn through(env: &TestEnv, host: &str, port: u16, query: &str) -> Secret {
    let mut url = reqwest::Url::parse(&env.database_url).expect("a URL");
    url.set_host(Some(host)).expect("host");
    url.set_port(Some(port)).expect("port");
    url.set_query(Some(query));
    Secret::new(url.to_string())
}

fn upstream(env: &TestEnv) -> String {
    let url = reqwest::Url::parse(&env.database_url).expect("a URL");
    format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5432))
}

async fn connects(url: &Secret) -> Result<bool, String> {
    let store = Store::connect(url, 1).map_err(|e| e.to_string())?;
    store.session_info().await.map(|s| s.tls).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_and_verify_ca_check_the_certificate_made_by_the_test() {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("tether-tls-{}", env.id));
    std::fs::create_dir_all(&dir).expect("dir");
    let (good, other) = (ca("tether test CA"), ca("another CA"));
    let (good_pem, other_pem) = (dir.join("ca.pem"), dir.join("other.pem"));
    std::fs::write(&good_pem, &good.pem).expect("write CA");
    std::fs::write(&other_pem, &other.pem).expect("write CA");
    let (port, sessions) = tls_front(&good, &["localhost"], upstream(&env)).await;
    let root = |pem: &std::path::Path| format!("sslrootcert={}", pem.display());

    let full = through(&env, "localhost", port, &format!("sslmode=verify-full&{}", root(&good_pem)));
    assert_eq!(connects(&full).await, Ok(false), "verify-full with the right CA and host");
    assert!(sessions.load(Ordering::SeqCst) >= 1, "the connection went through TLS");
    // The front's own link to Postgres is plain, hence `false` above; the
    // whole pool works through it, migrations included.
    Store::connect(&full, 2).expect("store").migrate().await.expect("migrations over TLS");

    let wrong_ca = through(&env, "localhost", port, &format!("sslmode=verify-full&{}", root(&other_pem)));
    assert!(connects(&wrong_ca).await.is_err(), "a certificate of another CA is refused");
    let wrong_host = through(&env, "127.0.0.1", port, &format!("sslmode=verify-full&{}", root(&good_pem)));
    assert!(connects(&wrong_host).await.is_err(), "verify-full refuses a certificate for another host");
    let ca_only = through(&env, "127.0.0.1", port, &format!("sslmode=verify-ca&{}", root(&good_pem)));
    assert_eq!(connects(&ca_only).await, Ok(false), "verify-ca checks the CA only");
    let plain = through(&env, "localhost", port, "sslmode=disable");
    assert!(connects(&plain).await.is_err(), "the front takes TLS only");

    let missing = through(&env, "localhost", port, "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
    let error = connects(&missing).await.expect_err("no CA file");
    assert!(error.contains("sslrootcert=/nonexistent/ca.pem"), "{error}");
    assert!(
        !error.contains(reqwest::Url::parse(&env.database_url).expect("url").password().unwrap_or("\u{0}"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_and_every_session_has_its_limits() {
    let env = TestEnv::new().await;
    let url = reqwest::Url::parse(&env.database_url).expect("a URL");
    let port = url.port().unwrap_or(5432);
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let required = through(&env, &host, port, "sslmode=require");
    assert_eq!(connects(&required).await, Ok(true), "sslmode=require: pg_stat_ssl shows TLS");
    assert_eq!(connects(&Secret::new(env.database_url.clone())).await, Ok(false), "no sslmode: plain");

    let session = DbSession { statement_timeout_secs: 2, lock_timeout_secs: 1 };
    let store = Store::connect_with(&required, 2, session).expect("store");
    let info = store.session_info().await.expect("session");
    assert_eq!((info.statement_timeout.as_str(), info.lock_timeout.as_str()), ("2s", "1s"));
    let info = Store::connect(&Secret::new(env.database_url.clone()), 1)
        .expect("store")
        .session_info()
        .await
        .expect("session");
    assert_eq!(
        (info.statement_timeout.as_str(), info.lock_timeout.as_str()),
        ("1min", "10s"),
        "the defaults"
    );
}
