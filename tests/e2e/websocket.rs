//! WebSocket upgrades pass through the proxy once the request is authorised.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    extract::ws::{Message, WebSocketUpgrade},
    routing::any,
};
use chrono::Utc;
use entity::{permission, policy_change::PolicyChangeOp, role, role_binding, route};
use sea_orm::{ActiveModelTrait, Set};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::support::{TestApp, eventually};

async fn echo_server() -> SocketAddr {
    let app = Router::new().route(
        "/ws/echo",
        any(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(message)) = socket.recv().await {
                    if let Message::Text(text) = message
                        && socket.send(Message::Text(text)).await.is_err()
                    {
                        break;
                    }
                }
            })
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A route `/ws` to `upstream` that the seeded admin may use.
async fn ws_route(app: &TestApp, upstream: SocketAddr) {
    let now = Utc::now();
    let route = route::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set("ws".into()),
        host: Set(None),
        path_prefix: Set("/ws".into()),
        methods: Set(json!([])),
        upstream_url: Set(format!("http://{upstream}")),
        strip_prefix: Set(false),
        auth_methods: Set(json!(["api_key"])),
        required_permission: Set(None),
        rate_limit_per_minute: Set(None),
        rate_limit_burst: Set(None),
        upstream_credential_secret_id: Set(None),
        upstream_credential_header: Set(None),
        timeout_ms: Set(None),
        enabled: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    let role = role::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set("ws-user".into()),
        description: Set("WebSocket echo".into()),
        builtin: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    permission::ActiveModel {
        id: Set(Uuid::now_v7()),
        role_id: Set(role.id),
        name: Set("ws:connect".into()),
        methods: Set(json!(["GET"])),
        path_glob: Set("/ws/**".into()),
        route_id: Set(Some(route.id)),
        created_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    let admin = app.admin_id().await;
    role_binding::ActiveModel {
        id: Set(Uuid::now_v7()),
        role_id: Set(role.id),
        principal_id: Set(admin),
        conditions: Set(json!({})),
        expires_at: Set(None),
        reason: Set(None),
        created_by: Set(None),
        created_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    for (kind, id) in [
        (proxy::cache::kind::ROUTE, route.id),
        (proxy::cache::kind::ROLE, role.id),
        (proxy::cache::kind::ROLE_BINDING, admin),
    ] {
        api::service::feed::record(&app.db, kind, id, PolicyChangeOp::Upsert)
            .await
            .unwrap();
    }
}

fn handshake(key: Option<&str>) -> String {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /ws/echo HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Reads the response head (up to the blank line).
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Whether a handshake with `key` through `proxy` is answered with a head starting with
/// `status` within 2 s (the route applies through the change feed).
async fn answers(proxy: SocketAddr, key: &str, status: &str) -> bool {
    eventually(Duration::from_secs(2), || async {
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        stream
            .write_all(handshake(Some(key)).as_bytes())
            .await
            .unwrap();
        read_head(&mut stream).await.starts_with(status)
    })
    .await
    .is_some()
}

#[tokio::test]
async fn an_authorised_websocket_is_tunnelled_and_an_anonymous_one_refused() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    ws_route(&app, echo_server().await).await;
    let key = app.admin_key().to_owned();
    let proxy = app.dev.proxy_addr;

    assert!(
        answers(proxy, &key, "HTTP/1.1 101").await,
        "no 101 through the proxy"
    );

    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(handshake(Some(&key)).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");

    // One masked text frame "hello" (RFC 6455 §5.2), echoed back unmasked.
    let mask = [1u8, 2, 3, 4];
    let payload: Vec<u8> = b"hello"
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).await.unwrap();
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..2], &[0x81, 5]);
    assert_eq!(&reply[2..], b"hello");

    let mut anonymous = tokio::net::TcpStream::connect(proxy).await.unwrap();
    anonymous
        .write_all(handshake(None).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut anonymous).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    app.stop().await;
}

/// An upstream that answers 101 without completing the WebSocket handshake (no
/// `Sec-WebSocket-Accept` for the client's key), then goes on speaking HTTP.
async fn fake_switching_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                    )
                    .await;
                // What a client would then reach: raw bytes past the proxy's checks.
                let _ = socket.write_all(b"raw channel").await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_101_that_does_not_answer_the_websocket_key_is_refused() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    ws_route(&app, fake_switching_upstream().await).await;
    let key = app.admin_key().to_owned();
    let proxy = app.dev.proxy_addr;
    assert!(
        answers(proxy, &key, "HTTP/1.1 502").await,
        "the unverified 101 was passed through"
    );
    app.stop().await;
}
