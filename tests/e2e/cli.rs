//! The real binary: configuration errors, port conflicts, `dev` start-up and graceful shutdown.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

fn portcullis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    // A clean environment: only what each test sets.
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_bad_setting_stops_the_process_with_one_line_naming_it() {
    for (var, value) in [
        ("PORTCULLIS_API_ADDR", "not-an-address"),
        ("DATABASE_URL", "mysql://localhost/x"),
        ("PORTCULLIS_LOG_FORMAT", "xml"),
        ("PORTCULLIS_PROXY__MAX_BODY_BYTES", "-5"),
    ] {
        let output = portcullis()
            .arg("migrate")
            .arg("status")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        let needle = var
            .to_lowercase()
            .trim_start_matches("portcullis_")
            .replace("__", ".");
        assert!(
            stderr.contains(var) || stderr.to_lowercase().contains(&needle),
            "{var}: {stderr}"
        );
    }
}

#[test]
fn a_taken_port_is_reported_clearly() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let data = tempfile::tempdir().unwrap();
    let output = portcullis()
        .args(["dev", "--api-addr", &addr.to_string()])
        .env("PORTCULLIS_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{addr} is already in use")),
        "{stderr}"
    );
}

#[test]
fn schema_command_prints_the_sdl() {
    let output = portcullis().arg("schema").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        api::graphql::sdl()
    );
}

#[test]
fn dev_starts_prints_the_fixed_admin_key_serves_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    // A well-formed key (valid checksum) is needed; generate one with the binary itself.
    let generated = portcullis().arg("keygen").output().unwrap();
    let key = String::from_utf8(generated.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let (api, proxy, upstream) = (free_port(), free_port(), free_port());
    let child = portcullis()
        .args([
            "dev",
            "--api-addr",
            &format!("127.0.0.1:{api}"),
            "--proxy-addr",
            &format!("127.0.0.1:{proxy}"),
            "--demo-upstream-addr",
            &format!("127.0.0.1:{upstream}"),
        ])
        .env("PORTCULLIS_DATA_DIR", data.path())
        .env("PORTCULLIS_BOOTSTRAP_ADMIN_KEY", &key)
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let client = reqwest::blocking::Client::new();
    let started = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        client
            .get(format!("http://127.0.0.1:{api}/healthz"))
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    assert!(started, "dev did not answer /healthz within 10 s");
    let proxied = client
        .get(format!("http://127.0.0.1:{proxy}/demo/hello"))
        .bearer_auth(&key)
        .send()
        .unwrap();
    assert_eq!(proxied.status(), 200);

    // SIGTERM: graceful shutdown, exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains(&key), "the banner prints the bootstrap key");
    assert!(stdout.contains(&format!("http://127.0.0.1:{api}/graphql")));
    // JSON logs: every stderr line is a JSON object, and none contains the key.
    let stderr = String::from_utf8(output.stderr).unwrap();
    for line in stderr.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
        assert!(!line.contains(&key), "the key leaked into logs: {line}");
    }
}

/// `portcullis proxy` on its own (as in production): a route's upstream credential is read
/// from Secrets Manager through the standard AWS_* variables when a request first needs it,
/// then served from the cache.
#[tokio::test]
async fn the_proxy_command_reads_an_upstream_credential_from_secrets_manager_on_first_use() {
    use wiremock::{
        Mock, MockServer, ResponseTemplate,
        matchers::{header, method},
    };

    // A database seeded by `dev` (demo route injecting `portcullis-dev/demo-upstream-token`).
    let data = tempfile::tempdir().unwrap();
    let key = String::from_utf8(portcullis().arg("keygen").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let (api, dev_proxy, dev_upstream) = (free_port(), free_port(), free_port());
    let mut dev = portcullis()
        .args([
            "dev",
            "--api-addr",
            &format!("127.0.0.1:{api}"),
            "--proxy-addr",
            &format!("127.0.0.1:{dev_proxy}"),
            "--demo-upstream-addr",
            &format!("127.0.0.1:{dev_upstream}"),
        ])
        .env("PORTCULLIS_DATA_DIR", data.path())
        .env("PORTCULLIS_BOOTSTRAP_ADMIN_KEY", &key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut seeded = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let health = client
            .get(format!("http://127.0.0.1:{api}/healthz"))
            .send()
            .await;
        if health.is_ok_and(|r| r.status().is_success()) {
            seeded = true;
            break;
        }
    }
    assert!(seeded, "dev did not answer /healthz within 10 s");
    Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap();
    dev.wait().unwrap();

    // Secrets Manager (wiremock, through the real SDK) and an upstream that echoes the header.
    let aws = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("x-amz-target", "secretsmanager.GetSecretValue"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_json(serde_json::json!({
                    "ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:demo",
                    "Name": "portcullis-dev/demo-upstream-token",
                    "SecretString": "Bearer from-secrets-manager",
                    "VersionId": "00000000-0000-0000-0000-000000000001",
                    "VersionStages": ["AWSCURRENT"],
                })),
        )
        .mount(&aws)
        .await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let echo = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        headers
            .get("x-demo-upstream-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned()
    });
    tokio::spawn(async move { axum::serve(upstream, echo).await });
    let db =
        sea_orm::Database::connect(format!("sqlite://{}/portcullis.db", data.path().display()))
            .await
            .unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(
        &db,
        &format!("UPDATE route SET upstream_url = 'http://{upstream_addr}' WHERE name = 'demo'"),
    )
    .await
    .unwrap();
    db.close().await.unwrap();

    let proxy_port = free_port();
    let mut proxy = portcullis()
        .arg("proxy")
        .env("PORTCULLIS_DATA_DIR", data.path())
        .env("PORTCULLIS_PROXY_ADDR", format!("127.0.0.1:{proxy_port}"))
        .env("AWS_ENDPOINT_URL", aws.uri())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let call = || {
        client
            .get(format!("http://127.0.0.1:{proxy_port}/demo/x"))
            .header("x-api-key", &key)
            .send()
    };
    let mut listening = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
            .await
            .is_ok()
        {
            listening = true;
            break;
        }
    }
    assert!(listening, "portcullis proxy did not listen within 5 s");
    let before = aws.received_requests().await.unwrap_or_default();
    assert!(
        before.is_empty(),
        "AWS was called before a request needed it"
    );
    let first = call().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "Bearer from-secrets-manager");
    let second = call().await.unwrap();
    assert_eq!(second.text().await.unwrap(), "Bearer from-secrets-manager");
    let reads = aws.received_requests().await.unwrap_or_default();
    assert_eq!(reads.len(), 1, "one read, then the cache");

    Command::new("kill")
        .args(["-TERM", &proxy.id().to_string()])
        .status()
        .unwrap();
    let status = proxy.wait().unwrap();
    assert!(status.success());
}
