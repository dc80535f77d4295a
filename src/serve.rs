//! Serving routers on listeners, with graceful shutdown.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::Router;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};

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

/// `listener` with `TCP_NODELAY` set on every accepted connection. Every response is a single
/// small write; without it, Nagle's algorithm holds the write back while an earlier segment is
/// unacknowledged (delayed ACKs: up to 40 ms).
fn no_delay(listener: TcpListener) -> axum::serve::TapIo<TcpListener, fn(&mut TcpStream)> {
    fn set(tcp: &mut TcpStream) {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    }
    axum::serve::ListenerExt::tap_io(listener, set as fn(&mut TcpStream))
}

/// Serves `router` on `listener` until `shutdown`, letting in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    axum::serve(
        no_delay(listener),
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.wait())
    .await
    .with_context(|| format!("server on {addr:?} failed"))
}

/// Serves the proxy pipeline on `listener`, over TLS when the proxy configuration names a
/// certificate and key.
pub async fn serve_proxy(
    listener: TcpListener,
    state: proxy::ProxyState,
    shutdown: Shutdown,
    config: &proxy::ProxyConfig,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let cap = ConnectionCap::new(config.max_connections);
    match (&config.tls_cert_path, &config.tls_key_path) {
        (Some(cert), Some(key)) => {
            let tls = crate::tls::server_config(cert, key)?;
            // The slot is taken before the TCP accept, so handshakes count too.
            let listener = crate::tls::TlsListener::new(listener, tls, cap)?;
            Ok(tokio::spawn(serve_pipeline(listener, state, shutdown)))
        }
        _ => Ok(tokio::spawn(serve_pipeline(
            Capped {
                listener: no_delay(listener),
                cap,
            },
            state,
            shutdown,
        ))),
    }
}

/// The proxy listener's cap on open connections (`PORTCULLIS_PROXY__MAX_CONNECTIONS`): each
/// connection, from before its TCP accept until it closes (or the WebSocket tunnel it became
/// closes), holds a slot. With every slot taken nothing is accepted: new connections wait in
/// the kernel's accept queue, which refuses them once full, instead of using up file
/// descriptors and memory.
pub(crate) struct ConnectionCap {
    slots: Arc<Semaphore>,
    max: usize,
    last_warned: std::sync::Mutex<Option<Instant>>,
}

/// At most one warning this often while every slot is taken.
const CAP_WARN_EVERY: Duration = Duration::from_secs(60);

impl ConnectionCap {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            last_warned: std::sync::Mutex::new(None),
        })
    }

    /// A slot for the next connection, once one is free.
    pub(crate) async fn slot(&self) -> OwnedSemaphorePermit {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return slot;
        }
        metrics::counter!("portcullis_proxy_connection_cap_reached_total").increment(1);
        {
            let mut last = self
                .last_warned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_none_or(|at| at.elapsed() >= CAP_WARN_EVERY) {
                tracing::warn!(
                    max = self.max,
                    "every proxy connection slot is taken; nothing more is accepted until one closes (PORTCULLIS_PROXY__MAX_CONNECTIONS)"
                );
                *last = Some(Instant::now());
            }
        }
        match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Where [`serve_pipeline`] takes its connections from, each with its slot under the cap.
pub(crate) trait CappedListener: Send + 'static {
    /// The connection's byte stream.
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;

    /// The next connection, its peer and its slot.
    fn accept(
        &mut self,
    ) -> impl std::future::Future<Output = (Self::Io, SocketAddr, OwnedSemaphorePermit)> + Send;
}

/// A plain listener under a cap: a slot first, then the accept.
struct Capped<L> {
    listener: L,
    cap: Arc<ConnectionCap>,
}

impl<L> CappedListener for Capped<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    type Io = L::Io;

    async fn accept(&mut self) -> (Self::Io, SocketAddr, OwnedSemaphorePermit) {
        let slot = self.cap.slot().await;
        // `Listener::accept` retries failed accepts itself.
        let (io, peer) = self.listener.accept().await;
        (io, peer, slot)
    }
}

/// How long a stopping proxy waits for requests in flight before it closes their connections.
pub(crate) const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Accepts connections until `shutdown`, each served by [`proxy::service`] on hyper (HTTP/1
/// with upgrades for WebSockets, and HTTP/2), then lets the requests in flight finish.
async fn serve_pipeline<L: CappedListener>(
    mut listener: L,
    state: proxy::ProxyState,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto, graceful::GracefulShutdown},
    };
    let header_read_timeout = state.config.header_read_timeout();
    let connections = GracefulShutdown::new();
    // HTTP/2's extended CONNECT (RFC 8441) is not advertised: the pipeline refuses CONNECT
    // (the upstream client would open a tunnel without the path that was authorised), so
    // HTTP/2 clients open WebSockets over HTTP/1.1, whose upgrade is passed through.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper applies no timeout at all without a timer: a client could open connections and
    // send half a request head, or stop answering HTTP/2 pings, and hold them forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(header_read_timeout);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    // Connection tasks are kept so that those still running after the drain timeout can be
    // cancelled while the audit writer still accepts events: a cancelled request records
    // its event as it is dropped (`client_closed_request`), before the caller shuts the
    // writer down.
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (io, peer, slot) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        while tasks.try_join_next().is_some() {}
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(io),
                proxy::service(
                    state.clone(),
                    proxy::pipeline::Connection {
                        peer,
                        // Held by the service while the connection lasts, and by any
                        // WebSocket tunnel it turns into: the socket lives on in it.
                        slot: Some(proxy::tunnel::ConnectionSlot::new(slot)),
                    },
                ),
            )
            .into_owned();
        let connection = connections.watch(connection);
        tasks.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "proxy connection ended with an error");
            }
        });
    }
    drop(listener);
    // Tunnels have no natural end to drain towards: they close now, each queuing its audit
    // event, while the requests in flight get the drain timeout.
    let (drained, ()) = tokio::join!(
        tokio::time::timeout(DRAIN_TIMEOUT, connections.shutdown()),
        state.tunnels.close_all(),
    );
    if drained.is_err() {
        tracing::warn!("proxy connections still open after the drain timeout; closing them");
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
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
