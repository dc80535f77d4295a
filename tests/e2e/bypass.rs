//! The bypass corpus: request targets and header tricks that have fooled proxies before, each
//! with the exact decision and what the upstream saw. Sent over raw TCP so no client library
//! normalises anything first.

use serde_json::Value;

use crate::support::{TestApp, raw_http};

/// What must happen to one request.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Forwarded; the upstream saw exactly this path.
    Upstream(&'static str),
    /// Refused with this status and error code (by the proxy's pipeline).
    Refused(u16, &'static str),
    /// Refused with 400 before reaching our pipeline (the HTTP parser), never forwarded.
    Unparseable,
}

use Expect::{Refused, Unparseable, Upstream};

const TARGETS: &[(&str, Expect)] = &[
    ("/demo/a", Upstream("/a")),
    ("/demo", Upstream("/")),
    ("/demo/", Upstream("/")),
    ("/demo/a/", Upstream("/a/")),
    ("/demo/./a", Upstream("/a")),
    ("/demo/a/./b", Upstream("/a/b")),
    ("/demo//a", Upstream("/a")),
    ("/demo///a//b", Upstream("/a/b")),
    ("/demo/a/../b", Upstream("/b")),
    ("/demo/%61", Upstream("/a")),
    ("/demo/%7Euser", Upstream("/~user")),
    ("/demo/%2e/a", Upstream("/a")),
    ("/demo/%2E%2E/demo/x", Upstream("/x")),
    ("/demo/%20", Upstream("/%20")),
    ("/demo/%3b", Upstream("/%3B")),
    ("/demo/a?x=../../y", Upstream("/a")),
    ("/demo/a%2Fb", Refused(400, "bad_request_target")),
    ("/demo/a%2fb", Refused(400, "bad_request_target")),
    ("/demo/%2e%2e%2fetc", Refused(400, "bad_request_target")),
    ("/demo/a%5Cb", Refused(400, "bad_request_target")),
    ("/demo/%5c..%5cadmin", Refused(400, "bad_request_target")),
    ("/demo/%00", Refused(400, "bad_request_target")),
    ("/demo/a%00.json", Refused(400, "bad_request_target")),
    ("/demo/%0a", Refused(400, "bad_request_target")),
    ("/demo/%C0%AF", Refused(400, "bad_request_target")),
    ("/demo/%E0%80%AF", Refused(400, "bad_request_target")),
    ("/demo/%C1%81", Refused(400, "bad_request_target")),
    ("/demo/%FF", Refused(400, "bad_request_target")),
    ("/demo/%zz", Refused(400, "bad_request_target")),
    ("/demo/%", Refused(400, "bad_request_target")),
    ("/demo/%u002e", Refused(400, "bad_request_target")),
    ("/demo/..;/admin", Refused(400, "bad_request_target")),
    ("/demo;x/a", Refused(400, "bad_request_target")),
    ("/demo/a;jsessionid=1", Refused(400, "bad_request_target")),
    (
        "/demo/../../../etc/passwd",
        Refused(400, "bad_request_target"),
    ),
    ("/demo/..", Refused(404, "no_route")),
    ("/demo/.%2e/x", Refused(404, "no_route")),
    ("/DEMO/a", Refused(404, "no_route")),
    ("/Demo/a", Refused(404, "no_route")),
    ("/demox", Refused(404, "no_route")),
    ("/demo.json", Refused(404, "no_route")),
    (
        "http://evil.example/demo/a",
        Refused(400, "bad_request_target"),
    ),
    ("http://localhost/demo/a", Upstream("/a")),
    (
        "http://user@localhost/demo/a",
        Refused(400, "bad_request_target"),
    ),
    ("*", Refused(400, "bad_request_target")),
    ("/demo/a\\b", Unparseable),
    ("/demo/a b", Unparseable),
];

fn request(target: &str, extra_headers: &str, key: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n{extra_headers}Connection: close\r\n\r\n"
    )
}

/// Decodes a possibly chunked body from `raw_http`.
fn json_body(body: &str) -> Option<Value> {
    serde_json::from_str(body).ok().or_else(|| {
        let start = body.find('{')?;
        let end = body.rfind('}')?;
        serde_json::from_str(&body[start..=end]).ok()
    })
}

#[tokio::test]
async fn every_target_in_the_bypass_corpus_gets_its_exact_decision() {
    assert!(TARGETS.len() >= 40);
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let key = app.admin_key().to_owned();
    let mut failures = Vec::new();
    for (target, expect) in TARGETS {
        let (status, body) = raw_http(app.dev.proxy_addr, &request(target, "", &key)).await;
        let json = json_body(&body);
        let ok = match expect {
            Upstream(path) => status == 200 && json.as_ref().is_some_and(|j| j["path"] == *path),
            Refused(want, code) => {
                status == *want && json.as_ref().is_some_and(|j| j["error"]["code"] == *code)
            }
            Unparseable => status == 400 && json.as_ref().is_none_or(|j| j.get("path").is_none()),
        };
        if !ok {
            failures.push(format!(
                "{target:?}: expected {expect:?}, got {status} {body}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        TARGETS.len(),
        failures.join("\n")
    );
    app.stop().await;
}

#[tokio::test]
async fn header_tricks_are_refused_or_neutralised() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let key = app.admin_key().to_owned();
    let addr = app.dev.proxy_addr;

    // Two Host headers: which one would the upstream believe?
    let two_hosts = format!(
        "GET /demo/a HTTP/1.1\r\nHost: localhost\r\nHost: admin.internal\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_http(addr, &two_hosts).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ambiguous_request"), "{body}");

    // A Host that is not host[:port] would reach the upstream as X-Forwarded-Host, where
    // frameworks build absolute links from it.
    for bad in [
        "evil.example/reset?to=",
        "user@evil.example",
        "evil.example:80x",
        "",
        "evil example",
        "[::1",
    ] {
        let bad_host = format!(
            "GET /demo/a HTTP/1.1\r\nHost: {bad}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = raw_http(addr, &bad_host).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(body.contains("bad_request_target"), "{bad:?}: {body}");
    }
    for good in [
        "localhost",
        "localhost:8081",
        "127.0.0.1:1",
        "[::1]:8081",
        "LOCALHOST",
    ] {
        let good_host = format!(
            "GET /demo/a HTTP/1.1\r\nHost: {good}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = raw_http(addr, &good_host).await;
        assert_eq!(status, 200, "{good:?}: {body}");
        assert_eq!(
            json_body(&body).unwrap()["headers"]["x-forwarded-host"],
            good
        );
    }

    // Two Authorization headers, or a key in both places that disagree.
    for extra in [
        format!("Authorization: Bearer {key}x\r\n"),
        "x-api-key: pk_test_other\r\n".to_owned(),
    ] {
        let (status, body) = raw_http(addr, &request("/demo/a", &extra, &key)).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert!(body.contains("ambiguous_request"), "{body}");
    }

    // Spoofed forwarding, identity, rewrite and method-override headers never reach the upstream.
    let spoof = "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: admin.internal\r\nX-Real-IP: 1.2.3.4\r\n\
                 Forwarded: for=1.2.3.4\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
                 X-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\n\
                 x-portcullis-principal: root\r\nx-portcullis-key-id: k\r\nx-portcullis-grant-id: g\r\n\
                 X-Forwarded-Prefix: /admin\r\nX-Forwarded-Ssl: on\r\nX-Forwarded-Port: 443\r\n\
                 True-Client-IP: 1.2.3.4\r\nProxy-Connection: keep-alive\r\n\
                 X_Portcullis_Principal: root\r\nX_Forwarded_For: 1.2.3.4\r\nX_Original_URL: /admin\r\n";
    let (status, body) = raw_http(addr, &request("/demo/a", spoof, &key)).await;
    assert_eq!(status, 200, "{body}");
    let echo = json_body(&body).unwrap();
    let headers = &echo["headers"];
    assert_eq!(echo["method"], "GET");
    assert_eq!(
        headers["x-forwarded-for"], "127.0.0.1",
        "XFF from an untrusted peer is replaced"
    );
    assert_eq!(headers["x-forwarded-host"], "localhost");
    for gone in [
        "x-real-ip",
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "x-portcullis-grant-id",
        "authorization",
        // Frameworks believe these for the scheme, port or base path.
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "x-forwarded-port",
        "true-client-ip",
        "proxy-connection",
        // One `HTTP_*` variable with their dashed spellings on CGI-style servers.
        "x_portcullis_principal",
        "x_forwarded_for",
        "x_original_url",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the upstream: {headers}"
        );
    }
    assert_ne!(headers["x-portcullis-principal"], "root");
    assert_ne!(headers["x-portcullis-key-id"], "k");

    // CONNECT opens a tunnel the upstream client would address without the authorised path.
    let connect = format!(
        "CONNECT localhost:80 HTTP/1.1\r\nHost: localhost:80\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_http(addr, &connect).await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("method_not_supported"), "{body}");
    // TRACE would echo the upstream credential the route injects.
    let trace = format!(
        "TRACE /demo/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_http(addr, &trace).await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("method_not_supported"), "{body}");
    app.stop().await;
}

/// A request body reaches the upstream as sent, or the request is refused with the client's
/// error: never dropped, never passed on still coded, never blamed on the upstream.
#[tokio::test]
async fn request_bodies_reach_the_upstream_as_sent_or_are_refused() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let key = app.admin_key().to_owned();
    let addr = app.dev.proxy_addr;
    let with_body = |method: &str, framing: &str, body: &str| {
        format!(
            "{method} /demo/body HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n{framing}Connection: close\r\n\r\n{body}"
        )
    };

    // hyper's client would send a GET body of unknown length as no body at all.
    let chunked_get = with_body(
        "GET",
        "Transfer-Encoding: chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    );
    let (status, body) = raw_http(addr, &chunked_get).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body).unwrap()["body_bytes"], 5, "{body}");

    // hyper takes off the chunking only; the gzip would reach the upstream as the content.
    let gzip = with_body(
        "POST",
        "Transfer-Encoding: gzip, chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    );
    let (status, body) = raw_http(addr, &gzip).await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("transfer_coding_not_supported"), "{body}");

    // A malformed chunk is the client's fault (400), not an unavailable upstream (502).
    let bad_chunk = with_body("POST", "Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n");
    let (status, body) = raw_http(addr, &bad_chunk).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request_body"), "{body}");
    app.stop().await;
}
