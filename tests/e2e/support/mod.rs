//! The test harness: a whole `portcullis dev` stack per test, on ephemeral ports, over a
//! fresh database.

use std::{future::Future, net::SocketAddr, time::Duration};

use chrono::Utc;
use migration::testing::TestDatabase;
use portcullis::{
    config::Config,
    dev::{self, Ports, RunningDev},
};
use proxy::keys::{KeyHasher, PlainToken, TokenEnv, TokenKind};
use sea_orm::{ActiveModelTrait, DatabaseConnection};
use secrecy::{SecretSlice, SecretString};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

/// A fixed pepper so tests can hash keys the way the proxy does.
pub const TEST_PEPPER_HEX: &str =
    "74657374207065707065722074686174206973206174206c6561737420333220";
/// A fixed token signing key, different from the pepper, so a grant token hashed with the
/// wrong secret is refused.
pub const TEST_GRANT_KEY_HEX: &str =
    "6772616e7420746f6b656e206b657920666f72207465737473206f6e6c792121";

/// A running stack plus the handles a test needs.
pub struct TestApp {
    pub dev: RunningDev,
    pub db: DatabaseConnection,
    pub http: reqwest::Client,
    pub hasher: KeyHasher,
    /// Hashes incident-grant tokens the way the proxy does.
    pub grant_hasher: KeyHasher,
    database: Option<TestDatabase>,
    _data_dir: TempDir,
}

impl TestApp {
    /// Starts everything over `database` (migrated and seeded by `dev::start`).
    pub async fn spawn(database: TestDatabase) -> Self {
        Self::spawn_with(database, |_| {}).await
    }

    /// Like [`TestApp::spawn`], with a chance to adjust the configuration first.
    pub async fn spawn_with(database: TestDatabase, adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults().unwrap();
        config.data_dir = data_dir.path().to_path_buf();
        config.database_url = Some(database.url.clone());
        config.key_pepper = Some(SecretString::from(TEST_PEPPER_HEX.to_owned()));
        config.token_signing_key = Some(SecretString::from(TEST_GRANT_KEY_HEX.to_owned()));
        // Tight feed polling keeps revocation tests quick; 250 ms is the product default.
        config.proxy.policy_poll_interval_ms = 100;
        // Remediation reacts to detector events (it would block loopback after a burst of
        // 401s); tests that want it turn it on with `TestApp::spawn_with_remediation`.
        config.api.remediation.enabled = false;
        adjust(&mut config);
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let dev = dev::start(
            &config,
            Ports {
                api: any,
                proxy: any,
                demo_upstream: any,
            },
        )
        .await
        .unwrap();
        let pepper = SecretSlice::from(hex::decode(TEST_PEPPER_HEX).unwrap());
        Self {
            db: database.conn.clone(),
            dev,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            hasher: KeyHasher::new(&pepper).unwrap(),
            grant_hasher: KeyHasher::new(&SecretSlice::from(
                hex::decode(TEST_GRANT_KEY_HEX).unwrap(),
            ))
            .unwrap(),
            database: Some(database),
            _data_dir: data_dir,
        }
    }

    /// Like [`TestApp::spawn`], with the remediation loops running (fast polling and retries).
    pub async fn spawn_with_remediation(database: TestDatabase) -> Self {
        Self::spawn_with(database, |config| {
            config.api.remediation.enabled = true;
            config.api.remediation.poll_interval_ms = 50;
            config.api.remediation.backoff_base_ms = 10;
            config.api.remediation.backoff_cap_ms = 200;
        })
        .await
    }

    /// The seeded administrator's key.
    pub fn admin_key(&self) -> &str {
        &self.dev.admin_key
    }

    /// Holds SQLite's write lock until the returned transaction is rolled back
    /// ([`TestDatabase::hold_write_lock`]).
    pub async fn hold_sqlite_write_lock(&self) -> sea_orm::DatabaseTransaction {
        self.database
            .as_ref()
            .expect("the database until stop")
            .hold_write_lock()
            .await
    }

    /// `GET <proxy><path>` with an optional API key.
    pub async fn proxy_get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.dev.proxy_url()));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }

    /// How long until `GET <proxy><path>` with `key` answers `status`, within `limit`
    /// (changes reach the proxy through its change feed); `None` if it never did.
    pub async fn proxy_status_within(
        &self,
        path: &str,
        key: &str,
        status: reqwest::StatusCode,
        limit: Duration,
    ) -> Option<Duration> {
        eventually(limit, || async {
            self.proxy_get(path, Some(key)).await.status() == status
        })
        .await
    }

    /// Runs a GraphQL query against the API and returns the whole JSON response.
    pub async fn graphql(&self, query: &str) -> Value {
        self.http
            .post(format!("{}/graphql", self.dev.api_url()))
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Issues a new API key for `principal_id` directly in the database (and the change
    /// feed), returning the secret.
    pub async fn insert_key(&self, principal_id: Uuid) -> (Uuid, String) {
        let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Test);
        let now = Utc::now();
        let id = Uuid::now_v7();
        entity::api_key::ActiveModel::new_key(entity::api_key::NewKey {
            id,
            principal_id,
            name: "test key",
            prefix: token.lookup_prefix(),
            hash: self.hasher.hash(token.as_parsed()).to_hex(),
            environment: "test",
            now,
        })
        .insert(&self.db)
        .await
        .unwrap();
        api::service::feed::record(
            &self.db,
            proxy::cache::kind::API_KEY,
            id,
            entity::policy_change::PolicyChangeOp::Upsert,
        )
        .await
        .unwrap();
        (id, token.expose_secret().to_owned())
    }

    /// Changes an API key row directly and reports it on the change feed, as the API would.
    pub async fn update_key(
        &self,
        key_id: Uuid,
        change: impl FnOnce(&mut entity::api_key::ActiveModel),
    ) {
        use sea_orm::EntityTrait;
        let mut key: entity::api_key::ActiveModel = entity::api_key::Entity::find_by_id(key_id)
            .one(&self.db)
            .await
            .unwrap()
            .expect("key exists")
            .into();
        change(&mut key);
        key.update(&self.db).await.unwrap();
        api::service::feed::record(
            &self.db,
            proxy::cache::kind::API_KEY,
            key_id,
            entity::policy_change::PolicyChangeOp::Upsert,
        )
        .await
        .unwrap();
    }

    /// The seeded administrator's principal id.
    pub async fn admin_id(&self) -> Uuid {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        entity::principal::Entity::find()
            .filter(entity::principal::Column::Name.eq(api::bootstrap::ADMIN_NAME))
            .one(&self.db)
            .await
            .unwrap()
            .expect("seeded admin")
            .id
    }

    /// Graceful shutdown (flushes audit); returns the database for assertions afterwards.
    pub async fn stop(mut self) -> TestDatabase {
        let database = self.database.take().unwrap();
        self.dev.stop().await.unwrap();
        database
    }
}

/// Runs `test` once on SQLite and once on PostgreSQL (when `TEST_DATABASE_URL` is set).
pub async fn for_each_backend<F, Fut>(test: F)
where
    F: Fn(TestDatabase) -> Fut,
    Fut: Future<Output = ()>,
{
    for database in TestDatabase::all().await {
        eprintln!("-- backend: {:?}", database.backend);
        test(database).await;
    }
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns the time taken.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Sends `request` verbatim (no client-side normalisation, unlike reqwest) and returns the
/// status code and the body. The request should carry `Connection: close`.
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Reads until the proxy closes the connection or `limit` passes; `None` if it stayed open.
pub async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| received)
}

/// An upstream that answers every connection with `reply` after reading its request (one
/// read), then holds the connection open for `hold` without sending anything more.
pub async fn scripted_upstream(reply: &'static [u8], hold: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(reply).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    addr
}

/// Changes the seeded demo route with `change` and records it in the policy change feed, as
/// the API would; returns the route's id. A running proxy applies it within its poll interval.
pub async fn change_demo_route(
    app: &TestApp,
    change: impl FnOnce(&mut entity::route::ActiveModel),
) -> Uuid {
    use sea_orm::EntityTrait;
    let demo = entity::route::Entity::find()
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let mut active: entity::route::ActiveModel = demo.clone().into();
    change(&mut active);
    active.update(&app.db).await.unwrap();
    api::service::feed::record(
        &app.db,
        proxy::cache::kind::ROUTE,
        demo.id,
        entity::policy_change::PolicyChangeOp::Upsert,
    )
    .await
    .unwrap();
    demo.id
}
