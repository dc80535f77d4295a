//! Optional TLS on the proxy listener, for runs without a load balancer in front
//! (`PORTCULLIS_PROXY__TLS_CERT_PATH` + `PORTCULLIS_PROXY__TLS_KEY_PATH`, PEM files).
//!
//! Handshakes run in their own tasks so one slow or silent client cannot stall the accept loop;
//! finished connections are handed to the proxy's server loop (`serve::serve_pipeline`).

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::serve::{CappedListener, ConnectionCap};

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads a certificate chain and private key (PEM) into a server configuration (HTTP/1.1 and h2).
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    proxy::install_crypto_provider();
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("cannot read the TLS certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM in {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("cannot read the TLS private key {}", key_path.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener that yields TLS streams, each with its slot under the connection cap.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr, OwnedSemaphorePermit)>,
}

impl TlsListener {
    /// Starts accepting on `listener`; handshakes complete in the background. A connection
    /// takes its slot under `cap` before it is accepted and keeps it through the handshake,
    /// so connections still shaking hands count too.
    pub(crate) fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        cap: Arc<ConnectionCap>,
    ) -> io::Result<Self> {
        let acceptor = TlsAcceptor::from(config);
        let (tx, connections) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let slot = tokio::select! {
                    slot = cap.slot() => slot,
                    () = tx.closed() => return,
                };
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // As for plain listeners (`serve::serve`): no Nagle delay on small responses.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
                let acceptor = acceptor.clone();
                let handed_over = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed_over.send((tls, peer, slot)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { connections })
    }
}

impl CappedListener for TlsListener {
    type Io = TlsStream<TcpStream>;

    async fn accept(&mut self) -> (Self::Io, SocketAddr, OwnedSemaphorePermit) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The acceptor task only ends once nobody listens; never resolve after that.
            None => std::future::pending().await,
        }
    }
}
