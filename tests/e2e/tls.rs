//! Optional TLS on the proxy listener.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

use crate::support::TestApp;

/// A throw-away self-signed certificate for localhost and 127.0.0.1, made by the openssl CLI:
/// `(directory, cert.pem, key.pem)`.
fn self_signed() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    (dir, cert, key)
}

/// A client that trusts `cert` (PEM).
fn trusting(cert: &std::path::Path) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_proxy_serves_tls_when_given_a_certificate() {
    let (_dir, cert, key) = self_signed();

    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.tls_cert_path = Some(cert.clone());
        config.proxy.tls_key_path = Some(key.clone());
    })
    .await;
    let client = trusting(&cert);
    let url = format!("https://localhost:{}/demo/tls", app.dev.proxy_addr.port());
    let response = client
        .get(&url)
        .bearer_auth(app.admin_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/tls");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    // Plain HTTP to the TLS port does not get through.
    let plain = app
        .http
        .get(format!(
            "http://127.0.0.1:{}/demo/tls",
            app.dev.proxy_addr.port()
        ))
        .bearer_auth(app.admin_key())
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    app.stop().await;
}

/// `https://` upstreams: verified against the configured CA (and the system's roots), refused
/// with 502 when the certificate cannot be verified. The upstream here is the proxy's own TLS
/// listener, in front of an anonymous route to the demo upstream.
#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let (_dir, cert, key) = self_signed();
    for trusted in [true, false] {
        let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
            config.proxy.tls_cert_path = Some(cert.clone());
            config.proxy.tls_key_path = Some(key.clone());
            if trusted {
                config.proxy.upstream_ca_cert_path = Some(cert.clone());
            }
        })
        .await;
        let admin = app.admin_key().to_owned();
        let port = app.dev.proxy_addr.port();
        for (name, prefix, upstream, auth) in [
            (
                "open",
                "/open",
                format!("http://{}", app.dev.demo_upstream_addr),
                "[ANONYMOUS]",
            ),
            (
                "via-tls",
                "/via-tls",
                format!("https://localhost:{port}/open"),
                "[ANONYMOUS]",
            ),
        ] {
            let query = format!(
                "mutation($u: String!) {{ createRoute(input: {{ name: \"{name}\", pathPrefix: \"{prefix}\", upstreamUrl: $u, authMethods: {auth}, stripPrefix: true }}) {{ id }} }}"
            );
            crate::graphql_support::ok(&app, &admin, &query, serde_json::json!({ "u": upstream }))
                .await;
        }
        let client = trusting(&cert);
        let url = format!("https://localhost:{port}/via-tls/x");
        let expected = if trusted { 200 } else { 502 };
        let answered = crate::support::eventually(std::time::Duration::from_secs(3), || async {
            let response = client.get(&url).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            status == expected
                && if trusted {
                    body["path"] == "/x"
                } else {
                    body["error"]["code"] == "upstream_unavailable"
                }
        })
        .await;
        assert!(
            answered.is_some(),
            "trusted: {trusted}: expected {expected}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn connections_still_shaking_hands_count_against_the_cap() {
    let (_dir, cert, key) = self_signed();
    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.tls_cert_path = Some(cert.clone());
        config.proxy.tls_key_path = Some(key.clone());
        config.proxy.max_connections = 1;
    })
    .await;
    let url = format!("https://localhost:{}/demo/tls", app.dev.proxy_addr.port());
    // The one slot, held by a connection that never starts its handshake.
    let holder = tokio::net::TcpStream::connect(app.dev.proxy_addr)
        .await
        .unwrap();
    let waiting = trusting(&cert)
        .get(&url)
        .bearer_auth(app.admin_key())
        .timeout(std::time::Duration::from_millis(700))
        .send()
        .await;
    assert!(
        waiting.is_err(),
        "a connection past the cap was served: {waiting:?}"
    );
    drop(holder);
    let served = trusting(&cert)
        .get(&url)
        .bearer_auth(app.admin_key())
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    app.stop().await;
}
