//! Serving routers on listeners, with graceful shutdown.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::{net::TcpListener, sync::watch};

/// Binds `addr`, turning "address in use" into a message that says which setting to change.
pub async fn bind(addr: SocketAddr, what: &str, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("cannot start the {what}: {addr} is already in use (set {setting} to use another address)")
        } else {
            anyhow::Error::new(e).context(format!("cannot start the {what} on {addr}"))
        }
    })
}

/// A shutdown signal that many tasks can wait on.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Triggers a [`Shutdown`].
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A new signal/trigger pair.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Tells every waiter to stop.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown was triggered (or the trigger dropped).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Serves `router` on `listener` until `shutdown`, letting in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    // Every response is a single small write; without TCP_NODELAY, Nagle's algorithm holds
    // it back while an earlier segment is unacknowledged (delayed ACKs: up to 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.wait())
    .await
    .with_context(|| format!("server on {addr:?} failed"))
}

/// Serves `router` on `listener`, over TLS when `proxy_tls` names a certificate and key.
pub async fn serve_proxy(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    config: &proxy::ProxyConfig,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    match (&config.tls_cert_path, &config.tls_key_path) {
        (Some(cert), Some(key)) => {
            let tls = crate::tls::server_config(cert, key)?;
            // `tap_io` only so that axum's `ConnectInfo<SocketAddr>` works for this listener.
            let listener = axum::serve::ListenerExt::tap_io(
                crate::tls::TlsListener::new(listener, tls)?,
                |_| {},
            );
            Ok(tokio::spawn(async move {
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(shutdown.wait())
                .await
                .context("TLS proxy server failed")
            }))
        }
        _ => Ok(tokio::spawn(serve(listener, router, shutdown))),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
