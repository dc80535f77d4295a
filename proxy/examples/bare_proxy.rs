//! The floor under the proxy's numbers: a reverse proxy built from the same hyper server,
//! hyper client and tokio runtime as Portcullis, with nothing else (no routing, no
//! authentication, no audit). `bench/load.sh` drives it beside nginx and Portcullis, so
//! the gap between it and Portcullis is the pipeline's cost and the gap between it and
//! nginx is the HTTP stack's.
//!
//! `cargo run --release -p proxy --example bare_proxy -- LISTEN_ADDR UPSTREAM_ADDR`

use std::net::SocketAddr;

use axum::body::Body;
use http::{Request, Uri};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR");
    };
    let listen: SocketAddr = listen.parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: String) -> anyhow::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let client = client.clone();
                let path = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let uri: Result<Uri, _> = format!("http://{upstream}{path}").parse();
                async move {
                    *request.uri_mut() = uri?;
                    let response = client.request(request).await?;
                    anyhow::Ok(response.map(Body::new))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
