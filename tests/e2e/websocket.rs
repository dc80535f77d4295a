//! WebSocket upgrades pass through the proxy once the request is authorised.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    extract::ws::{Message, WebSocketUpgrade},
    routing::any,
};
use chrono::Utc;
use entity::{permission, policy_change::PolicyChangeOp, role, role_binding, route};
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::support::{TestApp, eventually, read_until_closed, scripted_upstream};

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

/// A route `/ws` to `upstream` that the seeded admin may use; returns its id.
async fn ws_route(app: &TestApp, upstream: SocketAddr) -> Uuid {
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
        // On any route: a catch-all route would admit the tunnel's request too (see
        // `a_tunnel_closes_when_its_route_goes_even_if_a_wider_route_would_admit_it`).
        route_id: Set(None),
        created_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    announce(app, proxy::cache::kind::ROUTE, route.id).await;
    announce(app, proxy::cache::kind::ROLE, role.id).await;
    bind(app, role.id, app.admin_id().await, None).await;
    route.id
}

/// A stack configured by `adjust` with [`ws_route`] to an echo server, live through the
/// proxy for the seeded admin; returns it and the admin's key.
async fn ws_app(
    database: migration::testing::TestDatabase,
    adjust: impl FnOnce(&mut portcullis::config::Config),
) -> (TestApp, String) {
    let app = TestApp::spawn_with(database, adjust).await;
    ws_route(&app, echo_server().await).await;
    let key = app.admin_key().to_owned();
    assert!(answers(app.dev.proxy_addr, &key, "HTTP/1.1 101").await);
    (app, key)
}

/// A user (linked to an OIDC issuer and subject, if given) bound to the role [`ws_route`]
/// creates until `expires_at`; returns its id.
async fn ws_user(
    app: &TestApp,
    name: &str,
    oidc: Option<(&str, &str)>,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> Uuid {
    use sea_orm::{ColumnTrait, QueryFilter};
    let user = entity::principal::ActiveModel {
        oidc_issuer: Set(oidc.map(|(issuer, _)| issuer.to_owned())),
        oidc_subject: Set(oidc.map(|(_, subject)| subject.to_owned())),
        ..entity::principal::ActiveModel::new_principal(
            Uuid::now_v7(),
            entity::principal::PrincipalKind::User,
            name,
            name,
            Utc::now(),
        )
    }
    .insert(&app.db)
    .await
    .unwrap()
    .id;
    announce(app, proxy::cache::kind::PRINCIPAL, user).await;
    let role = role::Entity::find()
        .filter(role::Column::Name.eq("ws-user"))
        .one(&app.db)
        .await
        .unwrap()
        .expect("ws_route ran")
        .id;
    bind(app, role, user, expires_at).await;
    user
}

/// Binds `role` to `principal` until `expires_at`, and reports it on the change feed.
async fn bind(
    app: &TestApp,
    role: Uuid,
    principal: Uuid,
    expires_at: Option<chrono::DateTime<Utc>>,
) {
    role_binding::ActiveModel {
        id: Set(Uuid::now_v7()),
        role_id: Set(role),
        principal_id: Set(principal),
        conditions: Set(json!({})),
        expires_at: Set(expires_at),
        reason: Set(None),
        created_by: Set(None),
        created_at: Set(Utc::now()),
    }
    .insert(&app.db)
    .await
    .unwrap();
    announce(app, proxy::cache::kind::ROLE_BINDING, principal).await;
}

/// Changes route `id` and reports it on the change feed.
async fn change_route(app: &TestApp, id: Uuid, change: impl FnOnce(&mut route::ActiveModel)) {
    let mut route: route::ActiveModel = route::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .expect("route exists")
        .into();
    change(&mut route);
    route.update(&app.db).await.unwrap();
    announce(app, proxy::cache::kind::ROUTE, id).await;
}

/// Reports a change to `id` on the change feed, as the API would.
async fn announce(app: &TestApp, kind: &str, id: Uuid) {
    api::service::feed::record(&app.db, kind, id, PolicyChangeOp::Upsert)
        .await
        .unwrap();
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

/// A tunnel through `proxy` to the echo route, opened with `key`.
async fn open_tunnel(proxy: SocketAddr, key: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(handshake(Some(key)).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");
    stream
}

/// Sends `text` as one masked text frame (RFC 6455 §5.2) and reads its unmasked echo.
async fn echo(stream: &mut tokio::net::TcpStream, text: &str) {
    let mask = [1u8, 2, 3, 4];
    let len = u8::try_from(text.len()).unwrap();
    assert!(len < 126);
    let mut frame = vec![0x81, 0x80 | len];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
    let mut reply = vec![0u8; 2 + text.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..2], &[0x81, len]);
    assert_eq!(&reply[2..], text.as_bytes());
}

/// Whether the proxy closes `stream` within `limit` (end of stream, or reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    read_until_closed(stream, limit).await.is_some()
}

/// The audit events that closed tunnels, oldest first.
async fn tunnel_ends(db: &migration::testing::TestDatabase) -> Vec<entity::audit_event::Model> {
    use sea_orm::{EntityTrait, QueryOrder};
    entity::audit_event::Entity::find()
        .order_by_asc(entity::audit_event::Column::Id)
        .all(&db.conn)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.starts_with("tunnel_closed: "))
        .collect()
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

    let mut stream = open_tunnel(proxy, &key).await;
    echo(&mut stream, "hello").await;

    let mut anonymous = tokio::net::TcpStream::connect(proxy).await.unwrap();
    anonymous
        .write_all(handshake(None).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut anonymous).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // Stopping the proxy closes the tunnel still open (promptly, not after the 30 s drain)
    // and records how it ended and what crossed it.
    let stopping = tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the open tunnel held the proxy's shutdown");
    assert!(closed_within(&mut stream, Duration::from_secs(2)).await);
    let ended = tunnel_ends(&stopping).await;
    let stopped: Vec<_> = ended
        .iter()
        .filter(|e| e.reason == "tunnel_closed: proxy_stopping")
        .collect();
    assert_eq!(stopped.len(), 1, "{ended:?}");
    assert_eq!(stopped[0].status, Some(101));
    // One masked 5-byte frame in (2 + 4 + 5 bytes), one unmasked frame out (2 + 5).
    assert_eq!(stopped[0].detail["tunnel_bytes_from_client"], 11);
    assert_eq!(stopped[0].detail["tunnel_bytes_from_upstream"], 7);
    stopping.drop_database().await;
}

/// An upstream that answers 101 without completing the WebSocket handshake (no
/// `Sec-WebSocket-Accept` for the client's key), then goes on speaking HTTP.
async fn fake_switching_upstream() -> SocketAddr {
    // After the 101, what a client would then reach: raw bytes past the proxy's checks.
    scripted_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw channel",
        Duration::from_secs(2),
    )
    .await
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

#[tokio::test]
async fn revoking_the_key_closes_its_open_tunnel_and_the_audit_says_why() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    ws_route(&app, echo_server().await).await;
    let (key_id, key) = app.insert_key(app.admin_id().await).await;
    let proxy = app.dev.proxy_addr;
    assert!(answers(proxy, &key, "HTTP/1.1 101").await);

    let mut stream = open_tunnel(proxy, &key).await;
    echo(&mut stream, "before").await;
    // Past the tunnel's first re-check: from then on it checks again only when the policy
    // cache reports a change, so this also shows that the revocation is reported.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.update_key(key_id, |row| {
        row.revoked_at = Set(Some(Utc::now()));
        row.revoked_reason = Set(Some("leaked".into()));
    })
    .await;
    // The feed (100 ms here) plus one re-check (500 ms), with room for a slow machine.
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "the tunnel outlived its key's revocation"
    );

    let db = app.stop().await;
    let ended = tunnel_ends(&db).await;
    let revoked: Vec<_> = ended
        .iter()
        .filter(|e| e.api_key_id == Some(key_id))
        .collect();
    assert!(
        revoked
            .iter()
            .any(|e| e.reason == "tunnel_closed: key_revoked"
                && e.decision == Some(entity::audit_event::AuditDecision::Deny)),
        "{ended:?}"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_tunnel_closes_after_its_idle_timeout_but_not_while_in_use() {
    let (app, key) = ws_app(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.tunnel_idle_timeout_secs = 1;
    })
    .await;
    let proxy = app.dev.proxy_addr;

    let mut stream = open_tunnel(proxy, &key).await;
    // 2.4 s of traffic, a message every 400 ms: longer than the limit, never idle that long.
    for i in 0..6 {
        echo(&mut stream, &format!("ping {i}")).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    echo(&mut stream, "still open").await;
    assert!(
        closed_within(&mut stream, Duration::from_secs(4)).await,
        "the idle tunnel stayed open"
    );

    let db = app.stop().await;
    let ended = tunnel_ends(&db).await;
    assert!(
        ended
            .iter()
            .any(|e| e.reason == "tunnel_closed: idle_timeout"),
        "{ended:?}"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_tunnel_closes_when_its_route_goes_even_if_a_wider_route_would_admit_it() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let ws = ws_route(&app, echo_server().await).await;
    let key = app.admin_key().to_owned();
    let proxy = app.dev.proxy_addr;
    // A catch-all route the admin may also use (to another upstream).
    crate::support::change_demo_route(&app, |route| route.path_prefix = Set("/".into())).await;
    assert!(answers(proxy, &key, "HTTP/1.1 101").await);

    let mut stream = open_tunnel(proxy, &key).await;
    echo(&mut stream, "on the ws route").await;
    // Past the first re-check, as in the revocation test: the snapshot reload must be reported.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    change_route(&app, ws, |route| route.enabled = Set(false)).await;
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "the tunnel outlived its route under the catch-all's rules"
    );
    let db = app.stop().await;
    let ended = tunnel_ends(&db).await;
    assert!(
        ended
            .iter()
            .any(|e| e.reason == "tunnel_closed: no_route" && e.route_id == Some(ws)),
        "{ended:?}"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn an_open_tunnel_holds_its_connection_slot() {
    let (app, key) = ws_app(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.max_connections = 1;
    })
    .await;
    let proxy = app.dev.proxy_addr;

    let mut tunnel = open_tunnel(proxy, &key).await;
    echo(&mut tunnel, "holding the slot").await;
    let mut waiting = tokio::net::TcpStream::connect(proxy).await.unwrap();
    waiting
        .write_all(handshake(Some(&key)).as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(700), waiting.read(&mut first))
            .await
            .is_err(),
        "a connection past the cap was served while the tunnel held the slot"
    );
    drop(tunnel);
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut waiting))
        .await
        .expect("the waiting connection was never served");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    app.stop().await;
}

/// Opens a tunnel with `key`, which stops admitting at `expires` with nothing on the change
/// feed to say so, and checks that the tunnel closes right after that moment: not before,
/// and not as late as the periodic full re-check (`FULL_RECHECK_EVERY`: 24–36 s after the
/// first, which comes 0.5 s after opening). Returns the audit reason it closed with.
async fn closes_when_it_expires(app: TestApp, key: &str, expires: chrono::DateTime<Utc>) -> String {
    let proxy = app.dev.proxy_addr;
    let mut stream = open_tunnel(proxy, key).await;
    echo(&mut stream, "before expiry").await;
    let left = (expires - Utc::now())
        .to_std()
        .expect("opened before expiry");
    // With less left, the tunnel's first check (0.5 s after opening) would catch the expiry
    // anyway and the test would not show that the expiry itself is watched.
    assert!(
        left >= Duration::from_secs(1),
        "set-up took too long: {left:?}"
    );
    assert!(
        closed_within(&mut stream, left + Duration::from_millis(1500)).await,
        "the tunnel outlived what admitted it by more than a second"
    );
    assert!(Utc::now() >= expires, "the tunnel closed before expiry");
    let db = app.stop().await;
    let ended = tunnel_ends(&db).await;
    db.drop_database().await;
    // The others are `answers`' handshakes, closed by the client.
    let refused: Vec<_> = ended
        .iter()
        .filter(|e| e.decision == Some(entity::audit_event::AuditDecision::Deny))
        .collect();
    assert_eq!(refused.len(), 1, "{ended:?}");
    refused[0].reason.clone()
}

#[tokio::test]
async fn a_tunnel_closes_when_its_key_expires_though_no_policy_changed() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    ws_route(&app, echo_server().await).await;
    let (key_id, key) = app.insert_key(app.admin_id().await).await;
    let expires = Utc::now() + chrono::Duration::seconds(6);
    app.update_key(key_id, |row| row.expires_at = Set(Some(expires)))
        .await;
    assert!(answers(app.dev.proxy_addr, &key, "HTTP/1.1 101").await);
    let reason = closes_when_it_expires(app, &key, expires).await;
    assert_eq!(reason, "tunnel_closed: key_expired");
}

#[tokio::test]
async fn a_tunnel_closes_when_the_binding_that_admitted_it_expires() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    ws_route(&app, echo_server().await).await;
    let expires = Utc::now() + chrono::Duration::seconds(6);
    let user = ws_user(&app, "contractor", None, Some(expires)).await;
    let (_, key) = app.insert_key(user).await;
    assert!(answers(app.dev.proxy_addr, &key, "HTTP/1.1 101").await);
    let reason = closes_when_it_expires(app, &key, expires).await;
    assert!(
        reason.starts_with("tunnel_closed: binding_expired: "),
        "{reason}"
    );
}

#[tokio::test]
async fn a_tunnel_opened_with_a_jwt_closes_when_the_token_is_refused_after_exp_and_leeway() {
    use proxy::oidc::{
        OidcConfig,
        testing::{FakeProvider, TestKey},
    };
    const AUDIENCE: &str = "portcullis-ws";
    let key = TestKey::rsa("ws-rsa");
    let provider = FakeProvider::start().await;
    provider.serve(&[&key]).await;
    let issuer = provider.issuer();
    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        let mut oidc = OidcConfig::new(issuer.clone(), vec![AUDIENCE.into()]);
        oidc.leeway_secs = 2;
        config.proxy.oidc = Some(oidc);
    })
    .await;
    let ws = ws_route(&app, echo_server().await).await;
    change_route(&app, ws, |route| route.auth_methods = Set(json!(["oidc"]))).await;
    let now = Utc::now();
    ws_user(&app, "carol", Some((&issuer, "carol-sub")), None).await;
    // A token that expires in 3 s; with 2 s of leeway it is refused from exp + 3 s.
    let mut claims = provider.claims("carol-sub", AUDIENCE, &[]);
    let exp = now.timestamp() + 3;
    claims["exp"] = json!(exp);
    let token = key.sign(&claims);
    assert!(answers(app.dev.proxy_addr, &token, "HTTP/1.1 101").await);
    let refused_from = chrono::DateTime::from_timestamp(exp + 3, 0).unwrap();
    let reason = closes_when_it_expires(app, &token, refused_from).await;
    assert_eq!(reason, "tunnel_closed: jwt_expired");
}

/// PostgreSQL only (`TEST_DATABASE_URL`): the database refuses every connection, so the
/// proxy's policy goes stale while a tunnel is open.
#[tokio::test]
async fn a_tunnel_closes_when_policy_goes_stale_with_the_database_unreachable() {
    use sea_orm::ConnectionTrait;
    let Some(database) = migration::testing::TestDatabase::postgres().await else {
        return;
    };
    let name = database.postgres_name().expect("PostgreSQL").to_owned();
    let admin = migration::connect(&std::env::var("TEST_DATABASE_URL").unwrap())
        .await
        .unwrap();
    let (app, key) = ws_app(database, |config| {
        config.proxy.policy_max_staleness_secs = 2;
    })
    .await;
    let proxy = app.dev.proxy_addr;
    let mut stream = open_tunnel(proxy, &key).await;
    echo(&mut stream, "before the outage").await;
    // Past the first check: from now on only the staleness deadline can close the tunnel
    // before its 24–36 s backstop.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let cut = Utc::now();
    for statement in [
        format!(r#"ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false"#),
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ),
    ] {
        admin.execute_unprepared(&statement).await.unwrap();
    }
    let closed = closed_within(&mut stream, Duration::from_secs(6)).await;
    admin
        .execute_unprepared(&format!(
            r#"ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true"#
        ))
        .await
        .unwrap();
    assert!(closed, "the tunnel outlived the policy's staleness limit");
    assert!(
        Utc::now() - cut >= chrono::Duration::seconds(1),
        "closed before the policy could be stale"
    );
    let db = app.stop().await;
    let ended = tunnel_ends(&db).await;
    db.drop_database().await;
    assert!(
        ended
            .iter()
            .any(|e| e.reason == "tunnel_closed: policy_stale"),
        "{ended:?}"
    );
}
