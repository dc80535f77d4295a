//! Optional TLS on the proxy listener.

use std::process::Command;

use serde_json::Value;

use crate::support::TestApp;

#[tokio::test]
async fn the_proxy_serves_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A throw-away self-signed certificate for localhost, made by the openssl CLI.
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

    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.tls_cert_path = Some(cert.clone());
        config.proxy.tls_key_path = Some(key.clone());
    })
    .await;
    let root = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
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
