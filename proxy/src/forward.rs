//! Forwarding to the upstream: streaming bodies both ways, header hygiene, timeouts.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::body::Body;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use uuid::Uuid;

use crate::{
    body_timeout::{BodyProgress, Detach, IdleTimeout, Stalled},
    error::{ProxyError, source_of},
    normalize::BadTarget,
};

/// The pooled upstream clients: plain HTTP, and HTTPS built on first use, so a proxy whose
/// upstreams are all `http://` never loads the system's CA certificates (about 1 MiB of
/// resident memory with the TLS code they bring in).
pub struct UpstreamClient {
    http: Client<HttpConnector, Body>,
    https: OnceLock<Client<HttpsConnector<HttpConnector>, Body>>,
    connect_timeout: Duration,
    extra_roots: Vec<CertificateDer<'static>>,
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `upstream_ca_pem` held no PEM certificate, or one that cannot be read.
    #[error("the upstream CA file holds no usable PEM certificate")]
    BadCa,
}

/// Builds the pooled clients with a connect timeout. `https://` upstreams are verified
/// against the system's roots plus the certificates in `upstream_ca_pem` (a private CA);
/// with neither, every `https://` upstream fails verification (502), never unverified.
pub fn client(
    connect_timeout: Duration,
    upstream_ca_pem: Option<&[u8]>,
) -> Result<UpstreamClient, ClientError> {
    let extra_roots = match upstream_ca_pem {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|_| ClientError::BadCa)?;
            // Checked now, so a bad file stops the start rather than the first request.
            let (added, _) = RootCertStore::empty().add_parsable_certificates(certs.clone());
            if added == 0 {
                return Err(ClientError::BadCa);
            }
            certs
        }
        None => Vec::new(),
    };
    Ok(UpstreamClient {
        http: pooled(http_connector(connect_timeout)),
        https: OnceLock::new(),
        connect_timeout,
        extra_roots,
    })
}

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http
}

fn pooled<C>(connector: C) -> Client<C, Body>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

impl UpstreamClient {
    /// The HTTPS client, built on first use.
    fn https(&self) -> &Client<HttpsConnector<HttpConnector>, Body> {
        self.https.get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            if native.certs.is_empty() {
                tracing::warn!(
                    "no system CA certificates found: https:// upstreams need PORTCULLIS_PROXY__UPSTREAM_CA_CERT_PATH"
                );
            }
            roots.add_parsable_certificates(native.certs);
            roots.add_parsable_certificates(self.extra_roots.iter().cloned());
            let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let tls = match ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
            {
                Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
                // aws-lc-rs supports rustls' default versions; should that ever change, no
                // https:// upstream can be reached (502) rather than one reached unverified.
                Err(error) => {
                    tracing::error!(%error, "TLS client set-up failed; https:// upstreams unreachable");
                    ClientConfig::builder()
                        .with_root_certificates(RootCertStore::empty())
                        .with_no_client_auth()
                }
            };
            let mut http = http_connector(self.connect_timeout);
            // The TLS layer wraps this connector; it must accept `https://` URIs.
            http.enforce_http(false);
            pooled(
                HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http),
            )
        })
    }

    /// Sends `request` with the client for its scheme.
    async fn request(
        &self,
        request: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            self.https().request(request).await
        } else {
            self.http.request(request).await
        }
    }
}

/// Headers that describe one hop (RFC 9110 §7.6.1) and never travel further.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers a client must never be able to set on the upstream request: credentials we
/// consumed, client-address headers frameworks believe instead of ours, and rewrites some
/// frameworks obey. The `OWNED_PREFIXES` families go too.
const STRIPPED_FROM_CLIENT: [HeaderName; 16] = [
    header::AUTHORIZATION,
    X_API_KEY,
    header::FORWARDED,
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Prefix of the identity headers the proxy adds; client copies are removed.
pub const IDENTITY_PREFIX: &str = "x-portcullis-";

/// Header families the proxy owns: its identity headers, and every `X-Forwarded-*` (it sets
/// For, Proto and Host itself; Ssl, Scheme, Port and Prefix are believed by some frameworks
/// for the scheme or the base path).
const OWNED_PREFIXES: [&str; 2] = [IDENTITY_PREFIX, "x-forwarded-"];

/// Whether a client's header must not reach the upstream (hop-by-hop headers aside). A name
/// with `_` is judged as if it had `-`: CGI-style servers (WSGI, Rack, PHP) map both
/// spellings to one `HTTP_*` variable, where the client's `X_Portcullis_Principal` could
/// take the place of ours.
fn stripped_from_client(name: &HeaderName) -> bool {
    let owned = |name: &str| OWNED_PREFIXES.iter().any(|prefix| name.starts_with(prefix));
    if STRIPPED_FROM_CLIENT.contains(name) || owned(name.as_str()) {
        return true;
    }
    if !name.as_str().contains('_') {
        return false;
    }
    let dashed = name.as_str().replace('_', "-");
    owned(&dashed)
        || STRIPPED_FROM_CLIENT
            .iter()
            .chain(&HOP_BY_HOP)
            .chain([&header::HOST])
            .any(|known| known.as_str() == dashed)
}

// Header names the proxy reads or sets, as constants: `HeaderName::from_static` outside a
// const context parses the name again on every call.
/// The API-key credential header.
pub(crate) const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_PORTCULLIS_PRINCIPAL: HeaderName = HeaderName::from_static("x-portcullis-principal");
const X_PORTCULLIS_KEY_ID: HeaderName = HeaderName::from_static("x-portcullis-key-id");
const X_PORTCULLIS_GRANT_ID: HeaderName = HeaderName::from_static("x-portcullis-grant-id");

/// Who the upstream is told made the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity {
    /// Principal id.
    pub principal: Option<Uuid>,
    /// API key id.
    pub key_id: Option<Uuid>,
    /// Incident grant id.
    pub grant_id: Option<Uuid>,
}

/// The header names listed in `Connection`: hop-by-hop for this message only. Names that are
/// always hop-by-hop are left out, so the usual `Connection: keep-alive` costs no parsing and
/// no allocation, like a message without `Connection`.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(name))
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// Whether `name` describes one hop only: always hop-by-hop, or listed in this message's
/// `Connection` header (`named`, from [`connection_named`]).
fn is_hop_by_hop(name: &HeaderName, named: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || named.contains(name)
}

/// Removes hop-by-hop headers, including those named by `Connection`. Finds them in one pass
/// over the names present: removing each candidate by name would hash every one of them.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name, &named))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Rewrites the client's headers into the upstream request's headers: one pass keeps what
/// may travel on (no hop-by-hop header, nothing `stripped_from_client` removes, no `Host`: the
/// upstream gets its own from the URI), then the proxy adds its own.
pub fn upstream_headers(
    headers: HeaderMap,
    client_ip: &str,
    original_host: Option<&str>,
    proto: &str,
    identity: &Identity,
    request_id: &str,
) -> HeaderMap {
    let named = connection_named(&headers);
    let dropped = |name: &HeaderName| {
        name == header::HOST || is_hop_by_hop(name, &named) || stripped_from_client(name)
    };
    let mut out = HeaderMap::with_capacity(headers.len() + 7);
    // `into_iter` names a header once, then yields its further values with `None`.
    let mut keep: Option<HeaderName> = None;
    for (name, value) in headers {
        if let Some(name) = name {
            keep = (!dropped(&name)).then_some(name);
        }
        if let Some(name) = &keep {
            out.append(name.clone(), value);
        }
    }
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            out.insert(name, value);
        }
    };
    set(X_FORWARDED_FOR, client_ip);
    set(X_FORWARDED_PROTO, proto);
    if let Some(host) = original_host {
        set(X_FORWARDED_HOST, host);
    }
    set(crate::request_id::REQUEST_ID.clone(), request_id);
    let mut buf = Uuid::encode_buffer();
    for (name, id) in [
        (X_PORTCULLIS_PRINCIPAL, identity.principal),
        (X_PORTCULLIS_KEY_ID, identity.key_id),
        (X_PORTCULLIS_GRANT_ID, identity.grant_id),
    ] {
        if let Some(id) = id {
            set(name, id.hyphenated().encode_lower(&mut buf));
        }
    }
    join_cookies(&mut out);
    out
}

/// Joins several `Cookie` fields into one with `"; "`: HTTP/2 clients send each cookie as a
/// field of its own, and HTTP/1.1 upstreams expect one line (RFC 9113 §8.2.3); some read
/// only the first, others join with `,` and misparse.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// Sets the route's upstream credential header, first removing any client header that
/// spells its name with `_` for `-`: CGI-style servers (WSGI, Rack, PHP) read both names as
/// one variable, so the client's copy could shadow the credential.
pub fn insert_credential(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    let shadows: Vec<HeaderName> = headers
        .keys()
        .filter(|other| {
            let other = other.as_str();
            other.contains('_')
                && other.len() == name.as_str().len()
                && other
                    .bytes()
                    .map(|b| if b == b'_' { b'-' } else { b })
                    .eq(name.as_str().bytes())
        })
        .cloned()
        .collect();
    for shadow in shadows {
        headers.remove(shadow);
    }
    headers.insert(name.clone(), value);
}

/// The upstream URI for a route's base and the path/query to forward.
pub fn upstream_uri(base: &Uri, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = base.clone().into_parts();
    // The path is normalised and the query was part of a valid target: the one way left to
    // fail is length, the client's (a long target plus the route's base path).
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_: http::uri::InvalidUri| BadTarget::TooLong)?,
    );
    Uri::from_parts(parts).map_err(|e| ProxyError::Internal(Box::new(e)))
}

/// Sends the request; the response body streams back untouched except for hop-by-hop
/// headers, failing if it stalls for `timeout` (see [`crate::body_timeout`]).
///
/// The upstream has `timeout` to start answering. With a request body (`upload`), that counts
/// from the body's last progress and not while it waits for the client: a slow upload is
/// limited by the body's own idle limit, while an upstream that stops reading the body (or
/// a TLS handshake that never completes) still times out.
pub async fn send(
    client: &UpstreamClient,
    request: Request<Body>,
    upload: Option<(Arc<BodyProgress>, Detach)>,
    timeout: Duration,
) -> Result<Response<Body>, ProxyError> {
    let answer_due = async {
        match &upload {
            Some((progress, _)) => progress.quiet_for(timeout).await,
            None => tokio::time::sleep(timeout).await,
        }
    };
    let answered = tokio::select! {
        answered = client.request(request) => Ok(answered),
        () = answer_due => Err(()),
    };
    let response = match answered {
        Err(()) => {
            // The client's connection can end only once its request body is let go.
            if let Some((_, detach)) = &upload {
                detach.detach();
            }
            return Err(ProxyError::UpstreamTimeout);
        }
        Ok(Err(error)) => {
            if error.is_connect()
                && source_of::<std::io::Error>(&error)
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return Err(ProxyError::UpstreamTimeout);
            }
            return Err(ProxyError::UpstreamUnavailable(Box::new(error)));
        }
        Ok(Ok(response)) => response,
    };
    // An upstream that answered before reading the whole body may never read the rest, and
    // the client's connection ends only once the body does: let go of it once it stalls.
    if let Some((progress, detach)) = upload
        && !progress.finished()
    {
        tokio::spawn(async move {
            progress.quiet_for(timeout).await;
            if !progress.finished() {
                detach.detach();
            }
        });
    }
    if !only_chunked(response.headers()) {
        return Err(ProxyError::UpstreamUnavailable(
            "the upstream's response uses a transfer coding other than chunked".into(),
        ));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // After the head, the same limit applies between two reads of the body.
    let body = IdleTimeout::new(body, timeout, Stalled::ResponseBody);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Whether the message's transfer codings, if any, are `chunked` alone. hyper takes off only
/// the chunking; another coding (`gzip, chunked`) would stay on the body that travels on
/// without the header, so the far side would read coded bytes as the content.
pub fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    match codings.next() {
        None => true,
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// The protocol of a WebSocket upgrade request (`Connection: upgrade` + `Upgrade: websocket`).
/// Other upgrades (h2c, TLS) are not passed through.
pub fn websocket_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = headers.get(header::UPGRADE)?;
    (connection_upgrade
        && upgrade
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")))
    .then(|| upgrade.clone())
}

/// The `Sec-WebSocket-Accept` an upstream must answer to `Sec-WebSocket-Key` `key`
/// (RFC 6455 §4.2.2): proof that it speaks WebSocket rather than echoing a 101.
pub fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key);
    context.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

/// Whether the upstream's 101 answers the client's `Sec-WebSocket-Key`: without that an
/// upstream (or something in front of it) that answers 101 but goes on speaking HTTP would
/// give the client a raw channel past every per-request check.
pub fn accepts_websocket(key: Option<&HeaderValue>, response: &HeaderMap) -> bool {
    let Some(key) = key else {
        return false;
    };
    response
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|accept| accept.as_bytes() == websocket_accept(key.as_bytes()).as_bytes())
}

/// Puts back the upgrade headers that hop-by-hop stripping removed.
pub fn restore_upgrade_headers(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header map with these entries, in order; names are lower-cased as clients' are.
    fn headers(entries: &[(&str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in entries {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.append(name, HeaderValue::from_static(value));
            }
        }
        headers
    }

    #[test]
    fn client_credentials_identity_and_rewrite_headers_never_reach_the_upstream() {
        let headers = headers(&[
            ("authorization", "Bearer pk_live_x"),
            ("x-api-key", "pk_live_x"),
            ("x-portcullis-principal", "spoofed"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("accept", "application/json"),
            ("x-forwarded-for", "5.6.7.8"),
            ("accept", "text/html"),
            ("host", "spoofed.example"),
            ("x-portcullis-grant-id", "spoofed"),
        ]);
        let principal = Uuid::from_u128(1);
        let identity = Identity {
            principal: Some(principal),
            key_id: Some(Uuid::from_u128(2)),
            grant_id: None,
        };
        let out = upstream_headers(
            headers,
            "10.0.0.7",
            Some("api.example"),
            "http",
            &identity,
            "rid",
        );
        assert_eq!(
            out.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"10.0.0.7"[..])
        );
        assert_eq!(
            out.get("x-portcullis-principal").map(|v| v.as_bytes()),
            Some(principal.to_string().as_bytes())
        );
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
        for gone in [
            "authorization",
            "x-api-key",
            "x-original-url",
            "x-http-method-override",
            "connection",
            "x-secret-hop",
            "x-portcullis-grant-id",
        ] {
            assert!(out.get(gone).is_none(), "{gone} was forwarded");
        }
        // Every value of a kept header survives, in order.
        let accept: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(accept, ["application/json", "text/html"]);
        assert!(out.get("host").is_none());
    }

    #[test]
    fn underscore_spellings_scheme_hints_and_proxy_connection_are_stripped_too() {
        let headers = headers(&[
            // One `HTTP_*` variable each on CGI-style servers, like their dashed spelling.
            (
                "x_portcullis_principal",
                "00000000-0000-0000-0000-000000000009",
            ),
            ("X_Forwarded_For", "1.1.1.1"),
            ("x_original_url", "/admin"),
            ("x_http_method_override", "DELETE"),
            ("transfer_encoding", "chunked"),
            ("x_api_key", "pk_live_x"),
            // Scheme, port and base-path hints some frameworks believe.
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-scheme", "https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-real-ip", "1.1.1.1"),
            ("true-client-ip", "1.1.1.1"),
            ("proxy-connection", "keep-alive"),
            // Kept: underscores in names nobody owns.
            ("x_trace_tag", "blue"),
        ]);
        let out = upstream_headers(
            headers,
            "10.0.0.7",
            None,
            "http",
            &Identity::default(),
            "rid",
        );
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x_trace_tag",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-request-id"
            ],
            "only the neutral header and the proxy's own may travel"
        );
    }

    #[test]
    fn response_hop_by_hop_headers_go_including_those_connection_names() {
        let mut headers = headers(&[
            ("connection", "Keep-Alive, x-upstream-hop"),
            ("keep-alive", "timeout=5"),
            ("x-upstream-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(
            connection_named(&headers),
            [HeaderName::from_static("x-upstream-hop")],
            "names that are always hop-by-hop are not listed again"
        );
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn the_websocket_accept_is_rfc_6455s() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upstream_uri_keeps_the_query() {
        let base: Uri = "http://127.0.0.1:9/".parse().unwrap_or_default();
        let uri = upstream_uri(&base, "/a/b", Some("x=1&y=%2F"))
            .map(|u| u.to_string())
            .ok();
        assert_eq!(uri.as_deref(), Some("http://127.0.0.1:9/a/b?x=1&y=%2F"));
    }

    #[test]
    fn a_target_too_long_for_the_upstream_is_the_clients_error() {
        let base: Uri = "http://127.0.0.1:9/".parse().unwrap_or_default();
        let long = format!("/v1/{}", "a".repeat(70_000));
        assert!(matches!(
            upstream_uri(&base, &long, None),
            Err(ProxyError::BadTarget(BadTarget::TooLong))
        ));
    }

    #[test]
    fn cookie_fields_reach_the_upstream_as_one_line() {
        let out = upstream_headers(
            headers(&[("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2")]),
            "10.0.0.7",
            None,
            "http",
            &Identity::default(),
            "rid",
        );
        let cookies: Vec<_> = out.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        let single = upstream_headers(
            headers(&[("cookie", "a=1; b=2")]),
            "10.0.0.7",
            None,
            "http",
            &Identity::default(),
            "rid",
        );
        assert_eq!(single.get_all(header::COOKIE).iter().count(), 1);
    }

    #[test]
    fn the_injected_credential_replaces_every_spelling_of_its_header() {
        let mut out = headers(&[
            ("x_upstream_token", "from the client"),
            ("x-upstream-token", "from the client too"),
            ("x_upstream_tokens", "another header"),
            ("accept", "*/*"),
        ]);
        let name = HeaderName::from_static("x-upstream-token");
        insert_credential(&mut out, &name, HeaderValue::from_static("secret"));
        assert!(out.get("x_upstream_token").is_none());
        let values: Vec<_> = out.get_all(&name).iter().collect();
        assert_eq!(values, ["secret"]);
        assert!(out.get("x_upstream_tokens").is_some());
        assert!(out.get("accept").is_some());
    }

    #[test]
    fn only_the_chunked_transfer_coding_passes() {
        for (values, passes) in [
            (&[][..], true),
            (&["chunked"][..], true),
            (&["Chunked "][..], true),
            (&["gzip, chunked"][..], false),
            (&["gzip", "chunked"][..], false),
            (&["chunked, chunked"][..], false),
            (&["identity"][..], false),
        ] {
            let entries: Vec<_> = values.iter().map(|v| ("transfer-encoding", *v)).collect();
            assert_eq!(only_chunked(&headers(&entries)), passes, "{values:?}");
        }
    }
}
