//! Peers that are slow or greedy cannot hold the proxy's resources forever: a request head
//! never finished, a request body that stops, a response body that stops, and more
//! connections than the listener's cap.

use std::time::Duration;

use sea_orm::Set;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{
    TestApp, change_demo_route, eventually, read_until_closed, scripted_upstream,
};

/// A client that starts a request head and never finishes it is disconnected after the
/// header read timeout (slowloris), instead of holding the connection forever.
#[tokio::test]
async fn a_request_head_never_finished_is_cut_off() {
    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.header_read_timeout_ms = 300;
    })
    .await;
    let mut stream = TcpStream::connect(app.dev.proxy_addr).await.unwrap();
    stream
        .write_all(b"GET /demo/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "the half-sent request still holds its connection"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stops_half_way_is_a_408() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    // The route's timeout is the longest a body may stay silent.
    change_demo_route(&app, |route| route.timeout_ms = Set(Some(500))).await;
    let key = app.admin_key().to_owned();
    let proxy = app.dev.proxy_addr;
    // Ten of the hundred bytes announced, then silence. Retried until the route change is
    // applied (the product default, 30 s, would outlast each try).
    let answered = eventually(Duration::from_secs(10), || async {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let head = format!(
            "POST /demo/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\
             Content-Length: 100\r\n\r\n0123456789"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let Some(response) = read_until_closed(&mut stream, Duration::from_secs(3)).await else {
            return false;
        };
        let response = String::from_utf8_lossy(&response).into_owned();
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(
            response.contains(r#""code":"request_body_timeout""#),
            "{response}"
        );
        true
    })
    .await;
    assert!(answered.is_some(), "the stalled body held the request");
    app.stop().await;
}

#[tokio::test]
async fn a_slow_upload_that_keeps_sending_outlasts_the_upstream_timeout() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    change_demo_route(&app, |route| route.timeout_ms = Set(Some(500))).await;
    let key = app.admin_key().to_owned();
    let proxy = app.dev.proxy_addr;
    // Let the route change apply: a body that stalls past 500 ms gets its 408.
    let applied = eventually(Duration::from_secs(10), || async {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let head = format!(
            "POST /demo/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\
             Content-Length: 2\r\n\r\n0"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        read_until_closed(&mut stream, Duration::from_secs(2))
            .await
            .is_some_and(|r| r.starts_with(b"HTTP/1.1 408"))
    })
    .await;
    assert!(applied.is_some());

    // 45 bytes in five pieces 300 ms apart: 1.2 s in all, more than the route's timeout,
    // but never silent for as long. The upstream's wait starts once the body is sent.
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let head = format!(
        "POST /demo/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 45\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream
            .write_all(format!("piece {piece}..").as_bytes())
            .await
            .unwrap();
    }
    let response = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("no answer to the slow upload");
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(r#""body_bytes":45"#),
        "the upstream did not get the whole body: {response}"
    );
    app.stop().await;
}

/// An upload larger than the socket buffers between the client and the upstream can hold
/// (a few MiB each on Linux), so an upstream that stops reading really stops it.
const UPLOAD_BYTES: usize = 32 * 1024 * 1024;

/// The app with the demo route sent to a [`scripted_upstream`] that answers `reply` and then
/// holds the connection for a minute, with a 500 ms route timeout.
async fn with_scripted_upstream(reply: &'static [u8]) -> TestApp {
    // Room for uploads larger than every socket buffer on the way can hold.
    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.max_body_bytes = UPLOAD_BYTES as u64 * 2;
    })
    .await;
    let upstream = scripted_upstream(reply, Duration::from_secs(60)).await;
    change_demo_route(&app, |route| {
        route.upstream_url = Set(format!("http://{upstream}"));
        route.timeout_ms = Set(Some(500));
    })
    .await;
    // Applied once the demo upstream's JSON echo no longer answers: a request sent before
    // would run under the old route and its 30 s timeout.
    let applied = eventually(Duration::from_secs(5), || async {
        let answer = app
            .http
            .get(format!("{}/demo/ready", app.dev.proxy_url()))
            .bearer_auth(app.admin_key())
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        !answer.is_ok_and(|r| {
            r.status() == 200
                && r.headers()
                    .get("content-type")
                    .is_some_and(|t| t.as_bytes() == b"application/json")
        })
    })
    .await;
    assert!(applied.is_some(), "the route change never applied");
    app
}

#[tokio::test]
async fn a_response_body_that_stops_half_way_is_cut_off() {
    // A head announcing 100 bytes, then 10 of them, then nothing for a minute.
    let app =
        with_scripted_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let key = app.admin_key().to_owned();
    let proxy = app.dev.proxy_addr;
    let cut = eventually(Duration::from_secs(10), || async {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let head = format!(
            "GET /demo/stream HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Not the upstream's 60 s: the proxy gives up on the silent body.
        let Some(response) = read_until_closed(&mut stream, Duration::from_secs(3)).await else {
            return false;
        };
        let response = String::from_utf8_lossy(&response).into_owned();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("0123456789"), "{response}");
        true
    })
    .await;
    assert!(cut.is_some(), "the stalled response held the connection");
    app.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.max_connections = 1;
    })
    .await;
    let proxy = app.dev.proxy_addr;
    let key = app.admin_key().to_owned();
    let request = format!(
        "GET /demo/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );

    // The one slot, held by a connection that has sent nothing yet.
    let holder = TcpStream::connect(proxy).await.unwrap();
    let mut waiting = TcpStream::connect(proxy).await.unwrap();
    waiting.write_all(request.as_bytes()).await.unwrap();
    assert!(
        read_until_closed(&mut waiting, Duration::from_millis(700))
            .await
            .is_none(),
        "a connection past the cap was served"
    );
    drop(holder);
    let response = read_until_closed(&mut waiting, Duration::from_secs(5))
        .await
        .expect("the waiting connection was never served");
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    app.stop().await;
}

/// Starts a POST of [`UPLOAD_BYTES`] to `/demo/upload` through `proxy`, written from a task
/// of its own (the proxy stops reading once the upstream does): the reading half of the
/// connection, and the task, which tells whether the whole body was written.
async fn start_upload(
    proxy: std::net::SocketAddr,
    key: &str,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::task::JoinHandle<bool>,
) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let body = vec![b'x'; UPLOAD_BYTES];
    let head = format!(
        "POST /demo/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await.is_ok() && writer.write_all(&body).await.is_ok()
    });
    (reader, sending)
}

#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_is_a_504_and_lets_the_client_go() {
    // Reads the first few KiB of the request, then nothing, and never answers: the socket
    // buffers fill and the proxy can send no more of the body.
    let app = with_scripted_upstream(b"").await;
    let key = app.admin_key().to_owned();
    let proxy = app.dev.proxy_addr;
    let timed_out = eventually(Duration::from_secs(15), || async {
        let (mut reader, sending) = start_upload(proxy, &key).await;
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(4), async {
            while !response.windows(4).any(|w| w == b"\r\n\r\n") {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        // The whole body was not sent: the 504 is the stalled upload's, not an ordinary late
        // answer after the body fitted in the socket buffers.
        sending.abort();
        let sent_all = sending.await.unwrap_or(false);
        read.is_ok() && response.starts_with(b"HTTP/1.1 504") && !sent_all
    })
    .await;
    assert!(
        timed_out.is_some(),
        "the request waited on the upstream forever"
    );
    // The client's connection closed with the 504 (the body the upstream client held was
    // let go), so the proxy stops without waiting out its 30 s drain for it.
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the timed-out request still held its client connection");
}

#[tokio::test]
async fn an_upstream_that_answers_early_and_stops_reading_lets_the_client_go() {
    // Answers 401 as soon as it has the head, then reads nothing more and holds on.
    let app =
        with_scripted_upstream(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n").await;
    let key = app.admin_key().to_owned();
    let proxy = app.dev.proxy_addr;
    let released = eventually(Duration::from_secs(15), || async {
        let (mut reader, sending) = start_upload(proxy, &key).await;
        // The 401 arrives, then the connection closes once the proxy lets go of the body
        // the upstream stopped reading (500 ms of silence), not when the upstream gives up.
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(4), async {
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        sending.abort();
        closed.is_ok() && response.starts_with(b"HTTP/1.1 401")
    })
    .await;
    assert!(
        released.is_some(),
        "the early answer left the client's connection open"
    );
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the request's body still held its client connection");
}
