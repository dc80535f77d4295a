//! A fake OIDC provider for tests: a wiremock server serving discovery and a JWKS, and signing
//! keys generated per test run. TEST-ONLY: compiled for this crate's tests and, through the
//! `test-util` feature, for the workspace's end-to-end tests; never in the product.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]

use aws_lc_rs::{
    encoding::AsDer,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
    },
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, PublicKeyUse},
};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

/// The JWKS path the fake provider announces in its discovery document.
pub const JWKS_PATH: &str = "/keys";
/// The discovery path.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// A signing key with its public JWK.
pub struct TestKey {
    /// `kid` in the JWK and in tokens.
    pub kid: String,
    /// The signing algorithm.
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public key as a JWK (with `kid`, `alg` and `use: sig`).
    pub jwk: Jwk,
    /// The public key as PEM (RSA only; used to forge HS256 tokens in attack tests).
    pub public_pem: Option<String>,
}

impl TestKey {
    /// A fresh RSA-2048 key for RS256.
    pub fn rsa(kid: &str) -> Self {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair).unwrap();
        let encoding =
            EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let public_pem = Some(pem("PUBLIC KEY", spki.as_ref()));
        Self::finish(kid, Algorithm::RS256, encoding, public_pem)
    }

    /// A fresh P-256 key for ES256.
    pub fn ec(kid: &str) -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        Self::finish(kid, Algorithm::ES256, encoding, None)
    }

    /// A fresh Ed25519 key for EdDSA.
    pub fn ed(kid: &str) -> Self {
        let pair = Ed25519KeyPair::generate().unwrap();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        let encoding = EncodingKey::from_ed_der(pkcs8.as_ref());
        Self::finish(kid, Algorithm::EdDSA, encoding, None)
    }

    fn finish(
        kid: &str,
        alg: Algorithm,
        encoding: EncodingKey,
        public_pem: Option<String>,
    ) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
            public_pem,
        }
    }

    /// Signs `claims` with this key, `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` with this key under any header (wrong `kid`s and the like).
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }
}

/// `header.payload.signature` with the parts given as JSON and a raw signature: for tokens
/// no honest library would produce (`alg: none`, HMAC with a public key).
pub fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// HMAC-SHA-256 over `header.payload` with `secret`: the "HS256 signed with the RSA public
/// key" attack.
pub fn forge_hs256(kid: &str, claims: &Value, secret: &[u8]) -> String {
    let header = json!({ "alg": "HS256", "typ": "JWT", "kid": kid });
    let unsigned = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, unsigned.as_bytes());
    format!("{unsigned}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A wiremock OIDC provider. Nothing is served until `serve_*` is called, so tests can mount
/// their own mocks with `.expect(n)`.
pub struct FakeProvider {
    /// The mock server; mount extra mocks on it directly.
    pub server: MockServer,
}

impl FakeProvider {
    /// Starts the server.
    pub async fn start() -> Self {
        Self {
            server: MockServer::start().await,
        }
    }

    /// The issuer URL (`http://127.0.0.1:<port>`).
    pub fn issuer(&self) -> String {
        self.server.uri()
    }

    /// The discovery document, naming `issuer` (normally [`Self::issuer`]).
    pub fn discovery_document(&self, issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{}{JWKS_PATH}", self.server.uri()),
            "authorization_endpoint": format!("{}/authorize", self.server.uri()),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        })
    }

    /// A mock answering discovery; mount it (optionally with `.expect(n)`).
    pub fn discovery_mock(&self) -> Mock {
        Mock::given(method("GET"))
            .and(path(DISCOVERY_PATH))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(self.discovery_document(&self.issuer())),
            )
    }

    /// A mock answering the JWKS with `keys`; mount it (optionally with `.expect(n)`).
    pub fn jwks_mock(keys: &[&TestKey]) -> Mock {
        Mock::given(method("GET"))
            .and(path(JWKS_PATH))
            .respond_with(ResponseTemplate::new(200).set_body_json(jwks(keys)))
    }

    /// Serves discovery and the JWKS with `keys`, without call expectations.
    pub async fn serve(&self, keys: &[&TestKey]) {
        self.discovery_mock().mount(&self.server).await;
        Self::jwks_mock(keys).mount(&self.server).await;
    }

    /// Valid claims for `subject`: this issuer, audience `aud`, expiring in five minutes.
    pub fn claims(&self, subject: &str, aud: &str, groups: &[&str]) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer(),
            "sub": subject,
            "aud": aud,
            "iat": now,
            "nbf": now - 5,
            "exp": now + 300,
            "groups": groups,
        })
    }
}

/// `{"keys": [...]}` for `keys`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>() })
}
