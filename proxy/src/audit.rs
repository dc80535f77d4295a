//! The audit trail: one event per proxied request (and per management mutation), written in
//! batches off the hot path, chained by hash so that any edit or deletion is detectable.
//!
//! Loss is not an option: the queue is bounded, and when the writer falls behind (or the
//! database is down) senders wait — back-pressure — rather than events being dropped. Each
//! batch is retried until it is stored.
//!
//! Chain: `hash = SHA-256(prev_hash || canonical(record))`, hex-encoded; the first event links
//! to [`GENESIS`]. The database id is not hashed (it is assigned on insert); order is carried by
//! the `prev_hash` links instead, so deleting a row breaks the chain as surely as editing one.
//! The chain alone cannot reveal the newest rows deleted, or a chain recomputed from an edited
//! row on, by someone who can write the database: the writer therefore logs the tail (id and
//! hash) every minute and at shutdown, for logs kept elsewhere to anchor it ([`checkpoint`]).

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, LazyLock, OnceLock},
    time::Duration,
};

use aws_lc_rs::digest;
use chrono::{DateTime, SubsecRound, Utc};
use entity::audit_event::{self, AuditDecision, AuditEventKind};
use sea_orm::{
    DatabaseBackend, DatabaseConnection, DatabaseConnectionType, DbErr, RuntimeErr, sqlx,
};
use serde_json::Value;
use tokio::{
    sync::{Mutex, mpsc, oneshot},
    task::JoinHandle,
};
use uuid::Uuid;

/// `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Events per database transaction.
const BATCH_SIZE: usize = 512;
/// How long a stopping writer keeps retrying what is queued before it logs it instead.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(30);
/// A batch smaller than this waits [`LINGER`] for more events before it is written.
const LINGER_BELOW: usize = 256;
/// How long a small batch waits to grow: the longest an event stays unwritten for that reason.
/// Measured at 15,000 req/s: 5 ms batches (≈ 75 rows) cost the SQLite thread ≈ 1 µs less per
/// event than 2 ms ones, because each commit rewrites the same tail pages of the table and
/// its indexes.
const LINGER: Duration = Duration::from_millis(5);

/// How often the writer logs the chain's tail ([`checkpoint`]).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// The lock that serialises chain appends to `db`'s database within this process (a chain
/// has one tail). One per database, not one for the process: an append waiting on one
/// database (its only SQLite connection busy) must not hold up appends to another. Across
/// processes, PostgreSQL's advisory transaction lock does the same, and SQLite refuses a
/// second writer (the append is retried).
fn chain_tail(db: &DatabaseConnection) -> Arc<Mutex<()>> {
    static TAILS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>> =
        std::sync::LazyLock::new(Default::default);
    let database = match &db.inner {
        DatabaseConnectionType::SqlxSqlitePoolConnection(_) => {
            let options = db.get_sqlite_connection_pool().connect_options();
            format!("sqlite:{}", options.get_filename().display())
        }
        DatabaseConnectionType::SqlxPostgresPoolConnection(_) => {
            let options = db.get_postgres_connection_pool().connect_options();
            format!(
                "postgres:{}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            )
        }
        _ => String::new(),
    };
    TAILS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(database)
        .or_default()
        .clone()
}

/// One audit event before it is chained and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// When it happened (truncated to microseconds, the precision both databases keep).
    pub occurred_at: DateTime<Utc>,
    /// What produced it.
    pub kind: AuditEventKind,
    /// Correlates with logs and the client's `x-request-id`.
    pub request_id: Option<String>,
    /// Acting principal.
    pub principal_id: Option<Uuid>,
    /// Key used.
    pub api_key_id: Option<Uuid>,
    /// Grant used.
    pub grant_id: Option<Uuid>,
    /// Client address.
    pub client_ip: Option<String>,
    /// HTTP method or GraphQL operation type.
    pub method: Option<String>,
    /// Normalised path or mutation name.
    pub path: Option<String>,
    /// Matched route.
    pub route_id: Option<Uuid>,
    /// Allow or deny.
    pub decision: Option<AuditDecision>,
    /// Why (binding that allowed, reason for denial).
    pub reason: String,
    /// HTTP status returned.
    pub status: Option<i32>,
    /// Latency in microseconds.
    pub latency_us: Option<i64>,
    /// Kind-specific details; must never contain a secret.
    pub detail: Value,
    /// The permission that allowed the request. Not stored in the audit row (and so not
    /// hashed): it feeds the per-permission usage counters written with the batch.
    pub permission_id: Option<Uuid>,
}

impl AuditRecord {
    /// A record stamped now, with everything else empty.
    pub fn new(kind: AuditEventKind, reason: impl Into<String>) -> Self {
        Self {
            occurred_at: Utc::now().trunc_subsecs(6),
            kind,
            request_id: None,
            principal_id: None,
            api_key_id: None,
            grant_id: None,
            client_ip: None,
            method: None,
            path: None,
            route_id: None,
            decision: None,
            reason: reason.into(),
            status: None,
            latency_us: None,
            detail: Value::Object(Default::default()),
            permission_id: None,
        }
    }

    /// Rebuilds the hashed content of a stored row.
    pub fn from_model(model: &audit_event::Model) -> Self {
        Self {
            occurred_at: model.occurred_at,
            kind: model.kind,
            request_id: model.request_id.clone(),
            principal_id: model.principal_id,
            api_key_id: model.api_key_id,
            grant_id: model.grant_id,
            client_ip: model.client_ip.clone(),
            method: model.method.clone(),
            path: model.path.clone(),
            route_id: model.route_id,
            decision: model.decision,
            reason: model.reason.clone(),
            status: model.status,
            latency_us: model.latency_us,
            detail: model.detail.clone(),
            permission_id: None,
        }
    }
}

// === chain ===

/// Appends `value` to `out` as JSON with object keys sorted, so the hash does not depend on
/// how a database (PostgreSQL `jsonb` reorders keys) or serde_json features order them.
fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, key);
                out.push(b':');
                canonical_json(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        // The same compact writer `Value::to_string` uses, without the intermediate String.
        scalar => json_scalar(out, scalar),
    }
}

/// Writes `value` as a JSON string (serde_json's escaping, exactly as `Value::String` prints).
fn json_str(out: &mut Vec<u8>, value: &str) {
    // serde_json escapes only `"`, `\` and control characters; the audited fields (ids,
    // addresses, paths, reasons) almost never contain one, and copying them directly is
    // several times cheaper than its escaping writer. Byte-identical either way.
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        json_scalar(out, value);
    }
}

fn json_scalar<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing strings and numbers into a Vec cannot fail; a failure would only truncate the
    // hash input, which verification would then report as an edited row.
    if let Err(error) = serde_json::to_writer(&mut *out, value) {
        tracing::error!(%error, "serialising an audit field for the chain hash failed");
    }
}

/// The canonical text of `record` after `prev_hash`, appended to `out`: `prev_hash` then the
/// record as a JSON object with keys in sorted order. Written field by field (instead of
/// building a `serde_json::Value` and sorting it) because the audit writer hashes every
/// proxied request; the test `matches_the_value_based_encoding` pins the output byte for byte.
fn chain_text(out: &mut Vec<u8>, prev_hash: &str, record: &AuditRecord) {
    fn opt_str(out: &mut Vec<u8>, value: Option<&str>) {
        match value {
            Some(v) => json_str(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn opt_id(out: &mut Vec<u8>, value: Option<Uuid>) {
        match value {
            Some(id) => {
                out.push(b'"');
                out.extend_from_slice(
                    id.hyphenated()
                        .encode_lower(&mut Uuid::encode_buffer())
                        .as_bytes(),
                );
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    fn opt_int(out: &mut Vec<u8>, value: Option<i64>) {
        match value {
            Some(v) => {
                use std::io::Write as _;
                let _ = write!(out, "{v}");
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(prev_hash.as_bytes());
    // Keys in byte order, as `canonical_json` sorts them.
    out.extend_from_slice(br#"{"api_key_id":"#);
    opt_id(out, record.api_key_id);
    out.extend_from_slice(br#","client_ip":"#);
    opt_str(out, record.client_ip.as_deref());
    out.extend_from_slice(br#","decision":"#);
    opt_str(out, record.decision.as_ref().map(decision_str));
    out.extend_from_slice(br#","detail":"#);
    canonical_json(&record.detail, out);
    out.extend_from_slice(br#","grant_id":"#);
    opt_id(out, record.grant_id);
    out.extend_from_slice(br#","kind":"#);
    json_str(out, audit_kind_str(&record.kind));
    out.extend_from_slice(br#","latency_us":"#);
    opt_int(out, record.latency_us);
    out.extend_from_slice(br#","method":"#);
    opt_str(out, record.method.as_deref());
    out.extend_from_slice(br#","occurred_at":"#);
    json_str(
        out,
        &record
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    out.extend_from_slice(br#","path":"#);
    opt_str(out, record.path.as_deref());
    out.extend_from_slice(br#","principal_id":"#);
    opt_id(out, record.principal_id);
    out.extend_from_slice(br#","reason":"#);
    json_str(out, &record.reason);
    out.extend_from_slice(br#","request_id":"#);
    opt_str(out, record.request_id.as_deref());
    out.extend_from_slice(br#","route_id":"#);
    opt_id(out, record.route_id);
    out.extend_from_slice(br#","status":"#);
    opt_int(out, record.status.map(i64::from));
    out.push(b'}');
}

/// The chained hash of `record` after `prev_hash`.
pub fn chain_hash(prev_hash: &str, record: &AuditRecord) -> String {
    chain_hash_with(&mut Vec::with_capacity(512), prev_hash, record)
}

/// [`chain_hash`] with a caller-owned scratch buffer, reused across a batch.
fn chain_hash_with(buf: &mut Vec<u8>, prev_hash: &str, record: &AuditRecord) -> String {
    buf.clear();
    chain_text(buf, prev_hash, record);
    lower_hex(digest::digest(&digest::SHA256, buf).as_ref())
}

/// Lower-case hex, as `hex::encode` writes it, without building the string a char at a time.
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn audit_kind_str(kind: &AuditEventKind) -> &'static str {
    match kind {
        AuditEventKind::ProxyRequest => "proxy_request",
        AuditEventKind::Management => "management",
        AuditEventKind::Webhook => "webhook",
    }
}

fn decision_str(decision: &AuditDecision) -> &'static str {
    match decision {
        AuditDecision::Allow => "allow",
        AuditDecision::Deny => "deny",
    }
}

/// A row's value of a column that holds one of a few constants (kind, decision, method), for
/// binding. sqlx's SQLite driver copies a bound `&str` into a new `Arc<String>` (two
/// allocations per value per row) but binds an `Arc<str>` by moving the pointer, so the
/// constants are shared; anything else (a non-standard method) is copied once.
fn shared_text(text: &str) -> Arc<str> {
    static CONSTANTS: LazyLock<Vec<Arc<str>>> = LazyLock::new(|| {
        let kinds = [
            AuditEventKind::ProxyRequest,
            AuditEventKind::Management,
            AuditEventKind::Webhook,
        ];
        let decisions = [AuditDecision::Allow, AuditDecision::Deny];
        let methods = [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
        ];
        kinds
            .iter()
            .map(audit_kind_str)
            .chain(decisions.iter().map(decision_str))
            .chain(methods)
            .map(Arc::from)
            .collect()
    });
    CONSTANTS
        .iter()
        .find(|constant| ***constant == *text)
        .map_or_else(|| Arc::from(text), Arc::clone)
}

/// The first place where the stored chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Id of the first row that fails.
    pub id: i64,
    /// What is wrong.
    pub problem: &'static str,
}

/// Verifies stored rows in id order; `expected_prev` is the hash the first row must link to
/// (`GENESIS` when starting at the beginning).
pub fn verify_rows<'a>(
    expected_prev: &str,
    rows: impl IntoIterator<Item = &'a audit_event::Model>,
) -> Result<usize, BrokenLink> {
    let mut prev = expected_prev.to_owned();
    let mut count = 0;
    for row in rows {
        if row.prev_hash != prev {
            return Err(BrokenLink {
                id: row.id,
                problem: "prev_hash does not match the previous event (a row was deleted or reordered)",
            });
        }
        if chain_hash(&row.prev_hash, &AuditRecord::from_model(row)) != row.hash {
            return Err(BrokenLink {
                id: row.id,
                problem: "hash does not match the content (the row was edited)",
            });
        }
        prev.clone_from(&row.hash);
        count += 1;
    }
    Ok(count)
}

/// Chains and stores `records` in one transaction, after the current tail.
///
/// The rows go through the sqlx pool SeaORM holds, each value bound straight from its record:
/// SeaORM's `execute_raw` clones every bound value and converts it again into sqlx arguments,
/// which was the larger part of the writer's cost on the request core (BENCHMARKS.md).
pub async fn append(db: &DatabaseConnection, records: &[AuditRecord]) -> Result<(), DbErr> {
    append_noting(db, records, &mut None).await
}

/// Where an append attempt put its rows: after the row with id `after_id`, the last of them
/// with hash `last_hash`. A retry first looks for that row: a commit can succeed while its
/// acknowledgement is lost (the connection drops), and appending the batch again would store
/// every event twice, validly chained, and count their usage twice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempt {
    after_id: i64,
    last_hash: String,
}

/// [`append`], once however many tries it takes: `attempt` carries where the previous try put
/// its rows (start with `None`), and a retry that finds them stored stores nothing.
async fn append_noting(
    db: &DatabaseConnection,
    records: &[AuditRecord],
    attempt: &mut Option<Attempt>,
) -> Result<(), DbErr> {
    if records.is_empty() {
        return Ok(());
    }
    let records = &*storable(records);
    let tail = chain_tail(db);
    let _tail = tail.lock().await;
    let stored = match &db.inner {
        DatabaseConnectionType::SqlxSqlitePoolConnection(_) => {
            append_sqlite(db.get_sqlite_connection_pool(), records, attempt).await
        }
        DatabaseConnectionType::SqlxPostgresPoolConnection(_) => {
            append_postgres(db.get_postgres_connection_pool(), records, attempt).await
        }
        _ => {
            return Err(DbErr::Custom(
                "the audit writer needs a SQLite or PostgreSQL connection pool".into(),
            ));
        }
    };
    stored.map_err(|error| DbErr::Exec(RuntimeErr::SqlxError(std::sync::Arc::new(error))))
}

/// `records` as both databases can store them and give them back. PostgreSQL refuses U+0000
/// in text and in `jsonb`, so a record holding one (a NUL in a GraphQL argument the API
/// audits, say) would fail its batch on every retry and stall the writer, and with it every
/// request waiting to be audited. Such characters become U+FFFD before the row is hashed, so
/// the stored row and its hash agree, on SQLite too. Likewise a number in `detail` that
/// `jsonb` would give back changed ([`as_postgres_returns`]) is stored and hashed as it will
/// come back. Records with neither (all but never) are not copied.
fn storable(records: &[AuditRecord]) -> Cow<'_, [AuditRecord]> {
    const NUL: char = '\0';
    fn clean(text: &mut String) {
        if text.contains(NUL) {
            *text = text.replace(NUL, "\u{fffd}");
        }
    }
    fn needs_cleaning(value: &Value) -> bool {
        match value {
            Value::String(text) => text.contains(NUL),
            Value::Number(number) => as_postgres_returns(number).is_some(),
            Value::Array(items) => items.iter().any(needs_cleaning),
            Value::Object(map) => map
                .iter()
                .any(|(key, item)| key.contains(NUL) || needs_cleaning(item)),
            _ => false,
        }
    }
    fn clean_value(value: &mut Value) {
        match value {
            Value::String(text) => clean(text),
            Value::Number(number) => {
                if let Some(returned) = as_postgres_returns(number) {
                    *number = returned;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(clean_value),
            Value::Object(map) => {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(mut key, mut item)| {
                        clean(&mut key);
                        clean_value(&mut item);
                        (key, item)
                    })
                    .collect();
            }
            _ => {}
        }
    }
    // The record's text fields, named once for both the check and the rewrite.
    macro_rules! texts {
        ($($borrow:tt)+) => {
            [$($borrow)+.request_id, $($borrow)+.client_ip, $($borrow)+.method, $($borrow)+.path]
                .into_iter()
                .flatten()
                .chain([$($borrow)+.reason])
        };
    }
    let has_nul = |r: &AuditRecord| texts!(&r).any(|text| text.contains(NUL));
    if !records
        .iter()
        .any(|r| has_nul(r) || needs_cleaning(&r.detail))
    {
        return Cow::Borrowed(records);
    }
    Cow::Owned(
        records
            .iter()
            .cloned()
            .map(|mut r| {
                texts!(&mut r).for_each(clean);
                clean_value(&mut r.detail);
                r
            })
            .collect(),
    )
}

/// The number PostgreSQL's `jsonb` gives back for `number`, where serde_json then reads it
/// as a different one: `-0.0` comes back as `0.0` (`numeric` has no negative zero), and an
/// integral float from 1e16 up, which serde_json writes with an exponent (`1e16`), comes back
/// as digits, which it reads as an integer when one fits. `None` when it comes back as is.
fn as_postgres_returns(number: &serde_json::Number) -> Option<serde_json::Number> {
    // 2^64 and -2^63: the bounds of u64 and i64, exact as floats.
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    const I64_MIN: f64 = -9_223_372_036_854_775_808.0;
    let float = number.as_f64().filter(|_| number.is_f64())?;
    if float == 0.0 && float.is_sign_negative() {
        return serde_json::Number::from_f64(0.0);
    }
    if float.fract() != 0.0 || float.abs() < 1e16 {
        return None;
    }
    if (0.0..U64_END).contains(&float) {
        Some((float as u64).into())
    } else if (I64_MIN..0.0).contains(&float) {
        Some((float as i64).into())
    } else {
        None
    }
}

/// The chain tail's id and hash, with a literal `LIMIT 1`: SQLite re-prepares a statement
/// whose LIMIT is a bound parameter every time it is rebound (it plans with the value).
const TAIL_SQL: &str = r#"SELECT "id", "hash" FROM "audit_event" ORDER BY "id" DESC LIMIT 1"#;

/// Takes the chain lock on PostgreSQL, an advisory lock whose key is "PORTAUDT" read as a
/// big-endian i64 (one round trip for the three statements).
///
/// READ COMMITTED whatever the database's default: under REPEATABLE READ or SERIALIZABLE the
/// snapshot is taken as the lock is first waited for, so the tail read after it is granted
/// would miss the batch the lock's previous holder committed, and the chain would fork.
/// A transaction holding the lock is cut off after 30 s idle: should a COMMIT be lost on a
/// half-open connection, the server would otherwise keep the lock, and stall every audit
/// append, until TCP keepalive gave up on the client, hours later by default.
const PG_CHAIN_LOCK_SQL: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; \
     SET LOCAL idle_in_transaction_session_timeout = '30s'; \
     SELECT pg_advisory_xact_lock(5786934568021214292)";

/// Whether an earlier attempt's rows are stored: a row after its tail with its last hash.
fn stored_sql(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => {
            r#"SELECT "id" FROM "audit_event" WHERE "id" > $1 AND "hash" = $2 LIMIT 1"#
        }
        _ => r#"SELECT "id" FROM "audit_event" WHERE "id" > ? AND "hash" = ? LIMIT 1"#,
    }
}

/// `append` on SQLite and on PostgreSQL: the same statements, bound through each backend's
/// own sqlx types (a macro, because sqlx's generic bounds for "every column type encodes on
/// this database" are longer than the body).
macro_rules! append_with {
    ($name:ident, $db:ty, $backend:expr) => {
        async fn $name(
            pool: &sqlx::Pool<$db>,
            records: &[AuditRecord],
            attempt: &mut Option<Attempt>,
        ) -> Result<(), sqlx::Error> {
            let backend = $backend;
            let mut txn = pool.begin().await?;
            if backend == DatabaseBackend::Postgres {
                sqlx::raw_sql(PG_CHAIN_LOCK_SQL).execute(&mut *txn).await?;
            }
            // Checked under the chain lock: on PostgreSQL an earlier try whose commit the
            // server is still processing holds that lock, so this waits for its outcome
            // instead of missing rows that are about to appear.
            if let Some(previous) = attempt.as_ref() {
                let stored: Option<(i64,)> = sqlx::query_as(stored_sql(backend))
                    .bind(previous.after_id)
                    .bind(previous.last_hash.as_str())
                    .fetch_optional(&mut *txn)
                    .await?;
                if stored.is_some() {
                    tracing::warn!(
                        "an audit batch reported as failed had been stored; not storing it again"
                    );
                    return txn.rollback().await;
                }
            }
            let (after_id, mut prev): (i64, String) = sqlx::query_as(TAIL_SQL)
                .fetch_optional(&mut *txn)
                .await?
                .unwrap_or_else(|| (0, GENESIS.to_owned()));
            let mut scratch = Vec::with_capacity(1024);
            for chunk in records.chunks(INSERT_ROWS) {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(insert_sql(backend, chunk.len())));
                for (row, record) in chunk.iter().enumerate() {
                    let hash = chain_hash_with(&mut scratch, &prev, record);
                    let prev_hash = std::mem::replace(&mut prev, hash);
                    query = query
                        .bind(record.occurred_at)
                        .bind(shared_text(audit_kind_str(&record.kind)))
                        .bind(record.request_id.as_deref())
                        .bind(record.principal_id)
                        .bind(record.api_key_id)
                        .bind(record.grant_id)
                        .bind(record.client_ip.as_deref())
                        .bind(record.method.as_deref().map(shared_text))
                        .bind(record.path.as_deref())
                        .bind(record.route_id)
                        .bind(
                            record
                                .decision
                                .as_ref()
                                .map(|d| shared_text(decision_str(d))),
                        )
                        .bind(record.reason.as_str())
                        .bind(record.status)
                        .bind(record.latency_us)
                        .bind(&record.detail);
                    // On PostgreSQL a later row's `prev_hash` names the previous row's hash
                    // parameter instead of a second copy (see `insert_sql`).
                    if row == 0 || backend != DatabaseBackend::Postgres {
                        query = query.bind(prev_hash);
                    }
                    query = query.bind(prev.clone());
                }
                query.execute(&mut *txn).await?;
            }
            *attempt = Some(Attempt {
                after_id,
                last_hash: prev.clone(),
            });
            // Key touches and usage counters go out a few statements per batch, not one
            // round trip per key: see `SET_ROWS_MAX`.
            let touches: Vec<(Uuid, &AuditRecord)> =
                latest_use_per_key(records).into_iter().collect();
            for chunk in set_chunks(&touches) {
                let mut query =
                    sqlx::query(sqlx::AssertSqlSafe(touch_keys_sql(backend, chunk.len())));
                for (key, record) in chunk {
                    query = query
                        .bind(*key)
                        .bind(record.occurred_at)
                        .bind(record.client_ip.as_deref());
                }
                query.execute(&mut *txn).await?;
            }
            let usages: Vec<Usage> = usage_per_permission(records).collect();
            for chunk in set_chunks(&usages) {
                let mut query =
                    sqlx::query(sqlx::AssertSqlSafe(count_usage_sql(backend, chunk.len())));
                for usage in chunk {
                    query = query
                        .bind(Uuid::now_v7())
                        .bind(usage.scope_key())
                        .bind(usage.principal_id)
                        .bind(usage.api_key_id)
                        .bind(usage.permission_id)
                        .bind(usage.route_id)
                        .bind(usage.count)
                        .bind(usage.first)
                        .bind(usage.last);
                }
                query.execute(&mut *txn).await?;
            }
            txn.commit().await
        }
    };
}

append_with!(append_sqlite, sqlx::Sqlite, DatabaseBackend::Sqlite);
append_with!(append_postgres, sqlx::Postgres, DatabaseBackend::Postgres);

/// Rows per INSERT statement: 50 rows stay under SQLite's historical limit of 999 parameters.
const INSERT_ROWS: usize = 50;

/// The columns of `audit_event` the writer sets, in the order of the values it binds (on
/// PostgreSQL `prev_hash`, second to last, is bound only for a statement's first row).
const INSERT_COLUMNS: [&str; 17] = [
    "occurred_at",
    "kind",
    "request_id",
    "principal_id",
    "api_key_id",
    "grant_id",
    "client_ip",
    "method",
    "path",
    "route_id",
    "decision",
    "reason",
    "status",
    "latency_us",
    "detail",
    "prev_hash",
    "hash",
];

/// `INSERT INTO audit_event (…) VALUES (…), …` for `rows` rows, parameters in binding order.
/// On PostgreSQL row `r > 0` names the parameter of row `r - 1`'s hash (`$N`) as its
/// `prev_hash`, so each hash is sent once. SQLite gets plain `?`s and every row binds its
/// `prev_hash`: sqlx maps numbered SQLite parameters through `sqlite3_bind_parameter_name`,
/// a linear search per parameter (quadratic in a statement's 850 parameters: measured at
/// +18k to +24k instructions per row). Each row count's text is built once per process, so the
/// driver's prepared-statement cache always hits.
///
/// On SQLite it is `INSERT OR FAIL`: with the default conflict action (ABORT) a multi-row
/// INSERT keeps a statement journal, a copy of every page it changes, so that a failure
/// halfway can undo only this statement. FAIL keeps the rows before the failure instead; the
/// writer rolls the whole transaction back on any error, so nothing partial is ever stored.
fn insert_sql(backend: DatabaseBackend, rows: usize) -> Arc<str> {
    static TEXTS: StatementTexts<INSERT_ROWS> = StatementTexts::new();
    TEXTS.get(backend, rows.wrapping_sub(1), || {
        build_insert_sql(backend, rows)
    })
}

/// Statement texts built once per process and backend, one per size class, so that the
/// driver's prepared-statement cache (keyed by the text) always hits.
struct StatementTexts<const N: usize> {
    sqlite: [OnceLock<Arc<str>>; N],
    postgres: [OnceLock<Arc<str>>; N],
}

impl<const N: usize> StatementTexts<N> {
    const fn new() -> Self {
        Self {
            sqlite: [const { OnceLock::new() }; N],
            postgres: [const { OnceLock::new() }; N],
        }
    }

    /// The text of size class `index`, built on first use; past the end, built every time.
    fn get(
        &self,
        backend: DatabaseBackend,
        index: usize,
        build: impl FnOnce() -> String,
    ) -> Arc<str> {
        let texts = match backend {
            DatabaseBackend::Postgres => &self.postgres,
            _ => &self.sqlite,
        };
        match texts.get(index) {
            Some(text) => text.get_or_init(|| build().into()).clone(),
            None => build().into(),
        }
    }
}

fn build_insert_sql(backend: DatabaseBackend, rows: usize) -> String {
    let mut head = String::from(if backend == DatabaseBackend::Sqlite {
        "INSERT OR FAIL INTO \"audit_event\" ("
    } else {
        "INSERT INTO \"audit_event\" ("
    });
    for (i, column) in INSERT_COLUMNS.iter().enumerate() {
        if i > 0 {
            head.push_str(", ");
        }
        head.push('"');
        head.push_str(column);
        head.push('"');
    }
    head.push_str(") VALUES ");
    // Parameters are numbered in binding order, except that a later row's `prev_hash` names
    // the previous row's `hash` parameter instead of taking a number of its own.
    let (prev_hash_column, hash_column) = (INSERT_COLUMNS.len() - 2, INSERT_COLUMNS.len() - 1);
    let (mut last, mut previous_hash) = (0, 0);
    values_sql_numbered(
        backend,
        &head,
        INSERT_COLUMNS.len(),
        rows,
        "",
        |row, column| {
            if row > 0 && column == prev_hash_column {
                return previous_hash;
            }
            last += 1;
            if column == hash_column {
                previous_hash = last;
            }
            last
        },
    )
}

/// The most rows of one key-touch or usage-counter statement. A batch's n entries go out in
/// statements of 32, 16, …, 1 rows (n's binary digits, 32 at most each), so each kind has
/// six statement texts per backend whatever the batch holds. One statement per entry, as
/// before, cost one driver round trip each: ≈ 400 per batch from 200 distinct keys.
const SET_ROWS_MAX: usize = 32;

/// Consecutive runs of `items` whose lengths are powers of two, at most [`SET_ROWS_MAX`].
fn set_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let most = rest.len().min(SET_ROWS_MAX);
        if most == 0 {
            return None;
        }
        let (chunk, tail) = rest.split_at(1 << most.ilog2());
        rest = tail;
        Some(chunk)
    })
}

/// `head (…), (…) tail` with `rows` groups of `columns` parameters: `?` on SQLite, `$1…` on
/// PostgreSQL.
fn values_sql(
    backend: DatabaseBackend,
    head: &str,
    columns: usize,
    rows: usize,
    tail: &str,
) -> String {
    values_sql_numbered(backend, head, columns, rows, tail, |row, column| {
        row * columns + column + 1
    })
}

/// [`values_sql`] with PostgreSQL's parameter numbers chosen by `number(row, column)`, called
/// once per parameter in order; SQLite's `?`s are always bound in order.
fn values_sql_numbered(
    backend: DatabaseBackend,
    head: &str,
    columns: usize,
    rows: usize,
    tail: &str,
    mut number: impl FnMut(usize, usize) -> usize,
) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * columns * 6);
    sql.push_str(head);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            if backend == DatabaseBackend::Postgres {
                let _ = write!(sql, "${}", number(row, column));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

/// How many chunk lengths [`set_chunks`] makes: 1, 2, 4, …, [`SET_ROWS_MAX`].
const SET_SIZE_CLASSES: usize = SET_ROWS_MAX.ilog2() as usize + 1;

/// The size class of a [`set_chunks`] chunk: log2 of its length. Any other length gets no
/// class (its text is built every time), so a cached text always has the right row count.
fn size_class(rows: usize) -> usize {
    if rows.is_power_of_two() && rows <= SET_ROWS_MAX {
        rows.ilog2() as usize
    } else {
        usize::MAX
    }
}

/// Sets the last use (time, address) of `rows` keys, bound as (key id, time, address) each,
/// unless the key was used later already (a batch from another instance committed first).
/// One key (a batch from a single client, the usual case at low rates) takes a plain UPDATE:
/// SQLite materialises the `VALUES` table and joins it, which callgrind counted at 2.6k more
/// instructions per request on SQLite's thread with the few-row batches of `bench/load.sh`.
fn touch_keys_sql(backend: DatabaseBackend, rows: usize) -> Arc<str> {
    static TEXTS: StatementTexts<SET_SIZE_CLASSES> = StatementTexts::new();
    TEXTS.get(backend, size_class(rows), || {
        if rows == 1 {
            // `$N` works on both databases (SQLite maps the names; three are cheap to look up).
            return concat!(
                r#"UPDATE "api_key" SET "last_used_at" = $2, "last_used_ip" = $3 "#,
                r#"WHERE "id" = $1 AND ("last_used_at" IS NULL OR "last_used_at" <= $2)"#
            )
            .to_owned();
        }
        values_sql(
            backend,
            r#"WITH "used" ("id", "at", "ip") AS (VALUES "#,
            3,
            rows,
            concat!(
                r#") UPDATE "api_key" SET "last_used_at" = "used"."at", "last_used_ip" = "used"."ip" "#,
                r#"FROM "used" WHERE "api_key"."id" = "used"."id" "#,
                r#"AND ("api_key"."last_used_at" IS NULL OR "api_key"."last_used_at" <= "used"."at")"#,
            ),
        )
    })
}

/// The most recent allowed use of each key in `records`: `api_key.last_used_at`/`last_used_ip`
/// are updated once per key per batch.
fn latest_use_per_key(records: &[AuditRecord]) -> HashMap<Uuid, &AuditRecord> {
    let mut latest: HashMap<Uuid, &AuditRecord> = HashMap::new();
    for record in records
        .iter()
        .filter(|r| r.decision == Some(AuditDecision::Allow))
    {
        if let Some(key) = record.api_key_id {
            // By time, not batch order: a long request is queued after newer ones.
            let newest = latest.entry(key).or_insert(record);
            if record.occurred_at >= newest.occurred_at {
                *newest = record;
            }
        }
    }
    latest
}

/// One `usage_counter` increment: what access reviews use to find permissions that are
/// never exercised.
struct Usage {
    principal_id: Uuid,
    api_key_id: Option<Uuid>,
    permission_id: Uuid,
    route_id: Option<Uuid>,
    count: i64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

impl Usage {
    /// The counter's unique scope: a key's usage is the key's, whoever holds it; otherwise
    /// the principal's.
    fn scope_key(&self) -> String {
        match self.api_key_id {
            Some(key) => format!("key:{key}|perm:{}", self.permission_id),
            None => format!(
                "principal:{}|perm:{}",
                self.principal_id, self.permission_id
            ),
        }
    }
}

/// The batch's allowed requests summed per (key or principal, permission).
fn usage_per_permission(records: &[AuditRecord]) -> impl Iterator<Item = Usage> {
    let mut usage: HashMap<(Option<Uuid>, Uuid, Uuid), Usage> = HashMap::new();
    for record in records
        .iter()
        .filter(|r| r.decision == Some(AuditDecision::Allow))
    {
        let (Some(principal_id), Some(permission_id)) = (record.principal_id, record.permission_id)
        else {
            continue;
        };
        let principal_part = if record.api_key_id.is_some() {
            Uuid::nil()
        } else {
            principal_id
        };
        let entry = usage
            .entry((record.api_key_id, principal_part, permission_id))
            .or_insert(Usage {
                principal_id,
                api_key_id: record.api_key_id,
                permission_id,
                route_id: record.route_id,
                count: 0,
                first: record.occurred_at,
                last: record.occurred_at,
            });
        entry.count += 1;
        entry.first = Ord::min(entry.first, record.occurred_at);
        entry.last = Ord::max(entry.last, record.occurred_at);
        entry.route_id = record.route_id.or(entry.route_id);
    }
    usage.into_values()
}

/// Inserts `rows` counters or adds to them: `request_count` grows by the batch's count, the
/// first and last uses widen to take in the batch's (batches from several instances commit in
/// any order), and the route is the batch's. Bound per row in the column order below.
fn count_usage_sql(backend: DatabaseBackend, rows: usize) -> Arc<str> {
    static TEXTS: StatementTexts<SET_SIZE_CLASSES> = StatementTexts::new();
    TEXTS.get(backend, size_class(rows), || {
        values_sql(
            backend,
            concat!(
                r#"INSERT INTO "usage_counter" ("id", "scope_key", "principal_id", "api_key_id", "#,
                r#""permission_id", "route_id", "request_count", "first_used_at", "last_used_at") "#,
                "VALUES ",
            ),
            9,
            rows,
            concat!(
                r#" ON CONFLICT ("scope_key") DO UPDATE SET "#,
                r#""request_count" = "usage_counter"."request_count" + excluded."request_count", "#,
                r#""first_used_at" = CASE WHEN excluded."first_used_at" < "usage_counter"."first_used_at" "#,
                r#"THEN excluded."first_used_at" ELSE "usage_counter"."first_used_at" END, "#,
                r#""last_used_at" = CASE WHEN excluded."last_used_at" > "usage_counter"."last_used_at" "#,
                r#"THEN excluded."last_used_at" ELSE "usage_counter"."last_used_at" END, "#,
                r#""route_id" = excluded."route_id""#,
            ),
        )
    })
}

// === writer ===

/// The sending half: cheap to clone; `record` waits when the writer is behind.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
}

impl AuditSink {
    /// Queues one event, waiting for room if the queue is full (never drops).
    pub async fn record(&self, record: AuditRecord) {
        if let Err(mpsc::error::SendError(record)) = self.tx.send(record).await {
            // Only after shutdown: the event is still not lost from the logs.
            tracing::error!(?record, "audit event after shutdown could not be queued");
        }
    }
}

impl AuditSink {
    /// Waits for room for one event; `None` after shutdown. Holding the permit, the event can
    /// then be queued without waiting, so a caller that may be cancelled (the proxy's request
    /// future, dropped when its client goes away) reserves first and still queues its event
    /// from its `Drop`.
    pub async fn reserve(&self) -> Option<mpsc::Permit<'_, AuditRecord>> {
        self.tx.reserve().await.ok()
    }

    /// A sink over a bare channel, for callers that consume events themselves (benchmarks,
    /// alternative writers). [`spawn`] is the production constructor.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<AuditRecord>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, rx)
    }
}

/// The writer task; [`AuditWriter::shutdown`] flushes what is queued.
pub struct AuditWriter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts the writer over `db`; `capacity` events may wait before senders block.
pub fn spawn(db: DatabaseConnection, capacity: usize) -> (AuditSink, AuditWriter) {
    spawn_with_patience(db, capacity, SHUTDOWN_PATIENCE)
}

/// [`spawn`], with the time a stopping writer waits for a failing database.
fn spawn_with_patience(
    db: DatabaseConnection,
    capacity: usize,
    patience: Duration,
) -> (AuditSink, AuditWriter) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    let shutdown = Shutdown {
        signal: Some(stop_rx),
        patience,
        give_up_at: None,
    };
    let task = tokio::spawn(run(db, rx, shutdown));
    (
        AuditSink { tx },
        AuditWriter {
            stop: stop_tx,
            task,
        },
    )
}

impl AuditWriter {
    /// Stops accepting events, writes everything queued, and returns when done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "audit writer panicked");
        }
    }
}

/// The chain's tail, as the writer logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The newest row's id.
    pub id: i64,
    /// Its hash: a later chain that no longer holds this row with this hash was truncated or
    /// rewritten.
    pub hash: String,
}

/// The newest row of the chain (`None` while it is empty).
pub async fn checkpoint(db: &DatabaseConnection) -> Result<Option<Checkpoint>, DbErr> {
    use entity::audit_event;
    use sea_orm::{EntityTrait, QueryOrder};
    Ok(audit_event::Entity::find()
        .order_by_desc(audit_event::Column::Id)
        .one(db)
        .await?
        .map(|row| Checkpoint {
            id: row.id,
            hash: row.hash,
        }))
}

/// Logs the tail at `info` (target `portcullis::audit::checkpoint`); a failure only warns.
async fn log_checkpoint(db: &DatabaseConnection) {
    match checkpoint(db).await {
        Ok(Some(tail)) => tracing::info!(
            target: "portcullis::audit::checkpoint",
            id = tail.id,
            hash = %tail.hash,
            "audit chain checkpoint"
        ),
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "audit chain checkpoint not read"),
    }
}

async fn run(db: DatabaseConnection, mut rx: mpsc::Receiver<AuditRecord>, mut shutdown: Shutdown) {
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    let mut checkpointed = tokio::time::Instant::now();
    loop {
        if shutdown.stopping() {
            // Refuse new events; everything already queued is still received. (The signal
            // may have come while a batch was being stored.)
            rx.close();
        }
        let received = if shutdown.stopping() {
            rx.recv_many(&mut batch, BATCH_SIZE).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH_SIZE) => n,
                () = shutdown.signalled() => {
                    shutdown.begin();
                    continue;
                }
            }
        };
        if received == 0 {
            log_checkpoint(&db).await;
            return;
        }
        if !shutdown.stopping() && batch.len() < LINGER_BELOW {
            // Under moderate load events trickle in a few at a time, and every transaction
            // rewrites the same handful of index pages in the WAL. Waiting a moment lets a
            // batch form; senders are not held up (they only wait when the queue is full).
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH_SIZE {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        }
        if store(&db, &batch, &mut shutdown).await.is_err() {
            // A process that must stop cannot wait for the database forever (its supervisor
            // would kill it and the events would be gone): the log keeps them instead.
            metrics::counter!("portcullis_audit_events_unstored_at_shutdown_total")
                .increment(batch.len() as u64);
            for record in &batch {
                tracing::error!(
                    ?record,
                    "audit event not stored before shutdown; logged instead"
                );
            }
        } else {
            metrics::counter!("portcullis_audit_events_written_total")
                .increment(batch.len() as u64);
        }
        batch.clear();
        if checkpointed.elapsed() >= CHECKPOINT_EVERY {
            checkpointed = tokio::time::Instant::now();
            log_checkpoint(&db).await;
        }
    }
}

/// The writer's stop signal, and how long it still waits for the database once it came.
struct Shutdown {
    /// `None` for a deadline set from the start ([`append_within`]).
    signal: Option<oneshot::Receiver<()>>,
    /// [`SHUTDOWN_PATIENCE`] but in tests.
    patience: Duration,
    /// Set when the signal comes: `patience` later.
    give_up_at: Option<tokio::time::Instant>,
}

impl Shutdown {
    fn stopping(&self) -> bool {
        self.give_up_at.is_some()
    }

    fn begin(&mut self) {
        self.give_up_at = Some(tokio::time::Instant::now() + self.patience);
    }

    /// Resolves when the stop signal comes (or its sender is gone); never without one.
    async fn signalled(&mut self) {
        match &mut self.signal {
            Some(signal) => {
                let _ = signal.await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Appends `batch`, retrying with backoff (50 ms doubling to 5 s) for up to `patience`, never
/// storing it twice (a retry first looks for the rows of the attempt before); `false` when
/// the database kept failing for that long (the caller then logs the events).
pub async fn append_within(
    db: &DatabaseConnection,
    batch: &[AuditRecord],
    patience: Duration,
) -> bool {
    let mut deadline = Shutdown {
        signal: None,
        patience,
        give_up_at: None,
    };
    deadline.begin();
    store(db, batch, &mut deadline).await.is_ok()
}

/// Appends `batch` until it is stored, retrying with backoff (50 ms doubling to 5 s), but
/// gives up (`Err`) once `shutdown` has begun and its patience is spent; after that, without
/// trying. An attempt is never cut short: what it did decides what its retry looks for.
async fn store(
    db: &DatabaseConnection,
    batch: &[AuditRecord],
    shutdown: &mut Shutdown,
) -> Result<(), ()> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = None;
    loop {
        if shutdown
            .give_up_at
            .is_some_and(|at| tokio::time::Instant::now() >= at)
        {
            return Err(());
        }
        let error = match append_noting(db, batch, &mut attempt).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        tracing::error!(%error, events = batch.len(), "audit batch not stored yet; retrying");
        metrics::counter!("portcullis_audit_write_failures_total").increment(1);
        let pause = tokio::time::Instant::now() + delay;
        if let Some(give_up_at) = shutdown.give_up_at {
            tokio::time::sleep_until(pause.min(give_up_at)).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep_until(pause) => {}
                () = shutdown.signalled() => shutdown.begin(),
            }
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn key_touches_and_usage_counters_go_out_in_a_few_power_of_two_statements() {
        let lengths = |n: usize| {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = set_chunks(&items).collect();
            // Every item once, in order.
            assert_eq!(chunks.concat(), items);
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        };
        assert_eq!(lengths(0), Vec::<usize>::new());
        assert_eq!(lengths(1), [1]);
        assert_eq!(lengths(7), [4, 2, 1]);
        assert_eq!(lengths(32), [32]);
        assert_eq!(lengths(200), [32, 32, 32, 32, 32, 32, 8]);

        // The cached text for each size class has exactly that many rows of parameters.
        assert!(touch_keys_sql(DatabaseBackend::Sqlite, 1).contains(r#"WHERE "id" = $1"#));
        for rows in [2, 4, 8, 16, 32] {
            let sqlite = touch_keys_sql(DatabaseBackend::Sqlite, rows);
            assert_eq!(sqlite.matches('?').count(), 3 * rows, "{sqlite}");
            let postgres = count_usage_sql(DatabaseBackend::Postgres, rows);
            let last = format!("${}", 9 * rows);
            assert!(postgres.contains(&format!("{last})")), "{postgres}");
            assert!(
                !postgres.contains(&format!("${}", 9 * rows + 1)),
                "{postgres}"
            );
        }
        // Other lengths are never served a cached text of another size.
        assert_eq!(
            touch_keys_sql(DatabaseBackend::Sqlite, 3)
                .matches('?')
                .count(),
            9
        );
        assert_eq!(
            touch_keys_sql(DatabaseBackend::Sqlite, 4)
                .matches('?')
                .count(),
            12
        );
    }

    #[test]
    fn constant_values_are_shared_and_other_values_copied() {
        for constant in [
            "proxy_request",
            "management",
            "webhook",
            "allow",
            "deny",
            "GET",
        ] {
            let (first, second) = (shared_text(constant), shared_text(constant));
            assert_eq!(&*first, constant);
            assert!(Arc::ptr_eq(&first, &second), "{constant} is not shared");
        }
        let custom = shared_text("PROPFIND");
        assert_eq!(&*custom, "PROPFIND");
        assert!(!Arc::ptr_eq(&custom, &shared_text("PROPFIND")));
        // Methods are case-sensitive (RFC 9110 §9.1): `get` is not `GET`.
        assert_eq!(&*shared_text("get"), "get");
    }

    /// A stopping writer whose database keeps failing gives up after its patience (the
    /// events go to the log) instead of holding the process until it is killed. SQLite's
    /// 5 s busy timeout makes each attempt last 5 s here.
    #[tokio::test]
    async fn a_stopping_writer_gives_up_on_a_failing_database_in_time() {
        use sea_orm::EntityTrait;
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        // Another connection holds SQLite's write lock for the whole test.
        let lock = db.hold_write_lock().await;
        let (sink, writer) = spawn_with_patience(db.conn.clone(), 16, Duration::from_secs(1));
        sink.record(AuditRecord::new(AuditEventKind::ProxyRequest, "stuck"))
            .await;
        let stopped = tokio::time::timeout(Duration::from_secs(40), writer.shutdown()).await;
        assert!(stopped.is_ok(), "the writer never gave up");
        lock.rollback().await.expect("rollback");
        let rows = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .expect("rows");
        assert!(rows.is_empty(), "logged, not stored: {rows:?}");
    }

    /// `append_within` (the management API's audit) stores when it can and gives up, for the
    /// caller to log the events, once its patience is spent, instead of retrying forever.
    #[tokio::test]
    async fn an_append_within_a_patience_stores_or_gives_up_in_time() {
        use sea_orm::EntityTrait;
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        let record = || AuditRecord::new(AuditEventKind::Management, "ok");
        assert!(append_within(&db.conn, &[record()], Duration::from_secs(1)).await);
        let lock = db.hold_write_lock().await;
        let gave_up = tokio::time::timeout(
            Duration::from_secs(20),
            append_within(&db.conn, &[record()], Duration::from_secs(1)),
        )
        .await;
        assert_eq!(gave_up, Ok(false), "gave up within its patience");
        lock.rollback().await.expect("rollback");
        let rows = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .expect("rows");
        assert_eq!(rows.len(), 1, "only the first was stored");
    }

    #[tokio::test]
    async fn a_retry_after_a_commit_whose_acknowledgement_was_lost_stores_nothing_twice() {
        use entity::audit_event;
        use sea_orm::{EntityTrait, QueryOrder};
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        let rows = || async {
            audit_event::Entity::find()
                .order_by_asc(audit_event::Column::Id)
                .all(&db.conn)
                .await
                .unwrap_or_default()
        };
        let batch = [
            AuditRecord::new(AuditEventKind::ProxyRequest, "first"),
            AuditRecord::new(AuditEventKind::ProxyRequest, "second"),
        ];
        // The first try commits, but its caller saw an error (the connection dropped after
        // COMMIT): the retry finds the rows and stores nothing.
        let mut attempt = None;
        assert!(append_noting(&db.conn, &batch, &mut attempt).await.is_ok());
        assert!(attempt.is_some());
        assert!(append_noting(&db.conn, &batch, &mut attempt).await.is_ok());
        assert_eq!(rows().await.len(), 2);
        // A try that did not commit is retried in full.
        let mut rolled_back = Some(Attempt {
            after_id: 2,
            last_hash: "f".repeat(64),
        });
        assert!(
            append_noting(&db.conn, &batch, &mut rolled_back)
                .await
                .is_ok()
        );
        let stored = rows().await;
        assert_eq!(stored.len(), 4);
        assert_eq!(verify_rows(GENESIS, &stored), Ok(4));
        // The checkpoint names the newest row, as the chain computes it.
        let mut expected = GENESIS.to_owned();
        for record in batch.iter().chain(&batch) {
            expected = chain_hash(&expected, record);
        }
        let tail = checkpoint(&db.conn).await.ok().flatten();
        assert_eq!(
            tail,
            stored.last().map(|row| Checkpoint {
                id: row.id,
                hash: expected,
            })
        );
    }

    /// Needs PostgreSQL (`TEST_DATABASE_URL`); skipped without it.
    #[tokio::test]
    async fn a_retry_waits_for_a_commit_still_in_flight_and_does_not_store_twice() {
        use entity::audit_event;
        use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set, TransactionTrait};
        let Some(db) = migration::testing::TestDatabase::postgres().await else {
            return;
        };
        let db = db.migrated().await;
        let batch = [
            AuditRecord::new(AuditEventKind::ProxyRequest, "first"),
            AuditRecord::new(AuditEventKind::ProxyRequest, "second"),
        ];
        // The first try, as the server still holds it: chain lock taken, rows inserted, COMMIT
        // not yet done. Its caller already saw the connection drop.
        let in_flight = db.conn.begin().await.expect("begin");
        in_flight
            .execute_unprepared(&format!("SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})"))
            .await
            .expect("chain lock");
        let mut prev = GENESIS.to_owned();
        for record in &batch {
            let hash = chain_hash(&prev, record);
            audit_event::ActiveModel {
                occurred_at: Set(record.occurred_at),
                kind: Set(record.kind),
                reason: Set(record.reason.clone()),
                detail: Set(record.detail.clone()),
                prev_hash: Set(std::mem::replace(&mut prev, hash.clone())),
                hash: Set(hash),
                ..Default::default()
            }
            .insert(&in_flight)
            .await
            .expect("insert");
        }
        let mut attempt = Some(Attempt {
            after_id: 0,
            last_hash: prev,
        });
        let conn = db.conn.clone();
        let retry = tokio::spawn(async move {
            let stored = append_noting(&conn, &batch, &mut attempt).await;
            stored.map_err(|error| error.to_string())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!retry.is_finished(), "the retry waits for the chain lock");
        in_flight.commit().await.expect("commit");
        assert_eq!(retry.await.expect("join"), Ok(()));
        let stored = audit_event::Entity::find()
            .all(&db.conn)
            .await
            .expect("rows");
        assert_eq!(stored.len(), 2, "the batch is stored once");
        db.drop_database().await;
    }

    /// Needs PostgreSQL (`TEST_DATABASE_URL`). With REPEATABLE READ as the database's default,
    /// an appender's snapshot would be taken as it starts waiting for the chain lock, and the
    /// tail read once the lock is granted would miss the rows the lock's previous holder (here
    /// another instance, played by the test) committed: the chain would fork.
    #[tokio::test]
    async fn an_append_sees_the_tail_committed_while_it_waited_under_repeatable_read() {
        use entity::audit_event;
        use sea_orm::TransactionTrait;
        use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, QueryOrder, Set};
        let Some(db) = migration::testing::TestDatabase::postgres().await else {
            return;
        };
        let db = db.migrated().await;
        let name = db.postgres_name().expect("PostgreSQL").to_owned();
        db.conn
            .execute_unprepared(&format!(
                r#"ALTER DATABASE "{name}" SET default_transaction_isolation = 'repeatable read'"#
            ))
            .await
            .expect("alter database");
        // A pool opened after the change: its sessions default to REPEATABLE READ.
        let repeatable = migration::connect(&db.url).await.expect("connect");
        let other_instance = repeatable.begin().await.expect("begin");
        other_instance
            .execute_unprepared(&format!("SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})"))
            .await
            .expect("chain lock");
        let first = AuditRecord::new(AuditEventKind::ProxyRequest, "the other instance's");
        let hash = chain_hash(GENESIS, &first);
        audit_event::ActiveModel {
            occurred_at: Set(first.occurred_at),
            kind: Set(first.kind),
            reason: Set(first.reason.clone()),
            detail: Set(first.detail.clone()),
            prev_hash: Set(GENESIS.to_owned()),
            hash: Set(hash),
            ..Default::default()
        }
        .insert(&other_instance)
        .await
        .expect("insert");
        let conn = repeatable.clone();
        let ours = tokio::spawn(async move {
            let record = AuditRecord::new(AuditEventKind::ProxyRequest, "ours");
            append(&conn, &[record])
                .await
                .map_err(|error| error.to_string())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!ours.is_finished(), "the append waits for the chain lock");
        other_instance.commit().await.expect("commit");
        assert_eq!(ours.await.expect("join"), Ok(()));
        let rows = audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Id)
            .all(&repeatable)
            .await
            .expect("rows");
        assert_eq!(verify_rows(GENESIS, &rows), Ok(2), "the chain forked");
        repeatable.close().await.expect("close");
        db.drop_database().await;
    }

    /// The chain lock's key, as `PG_CHAIN_LOCK_SQL` spells it.
    const CHAIN_LOCK_KEY: i64 = i64::from_be_bytes(*b"PORTAUDT");

    #[test]
    fn the_postgres_lock_statement_takes_the_chain_lock() {
        let call = format!("pg_advisory_xact_lock({CHAIN_LOCK_KEY})");
        assert!(PG_CHAIN_LOCK_SQL.ends_with(&call), "{PG_CHAIN_LOCK_SQL}");
    }

    #[test]
    fn postgres_binds_each_hash_once_and_names_it_as_the_next_rows_prev_hash() {
        let postgres = build_insert_sql(DatabaseBackend::Postgres, 3);
        let values = postgres.split_once(" VALUES ").map(|(_, v)| v);
        assert_eq!(
            values,
            Some(concat!(
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17), ",
                "($18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $17, $33), ",
                "($34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $33, $49)"
            ))
        );
        assert!(postgres.starts_with("INSERT INTO \"audit_event\" (\"occurred_at\""));
        // SQLite: plain positional parameters, 17 per row.
        let sqlite = build_insert_sql(DatabaseBackend::Sqlite, 2);
        assert!(sqlite.starts_with("INSERT OR FAIL INTO \"audit_event\""));
        assert_eq!(sqlite.matches('?').count(), 34);
        assert!(!sqlite.contains('$'));
        // One text per row count, shared across batches (the statement cache keys on it).
        let first = insert_sql(DatabaseBackend::Sqlite, 7);
        assert!(std::sync::Arc::ptr_eq(
            &first,
            &insert_sql(DatabaseBackend::Sqlite, 7)
        ));
        assert_eq!(
            &*insert_sql(DatabaseBackend::Postgres, 7),
            build_insert_sql(DatabaseBackend::Postgres, 7)
        );
    }

    /// The original encoding: build a `serde_json::Value`, then print it with keys sorted.
    /// Rows already stored were hashed this way, so [`chain_hash`] must agree byte for byte.
    fn value_based_hash(prev_hash: &str, record: &AuditRecord) -> String {
        fn canonical(value: &Value, out: &mut String) {
            match value {
                Value::Object(map) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    out.push('{');
                    for (i, key) in keys.into_iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&Value::String(key.clone()).to_string());
                        out.push(':');
                        canonical(&map[key], out);
                    }
                    out.push('}');
                }
                Value::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        canonical(item, out);
                    }
                    out.push(']');
                }
                scalar => out.push_str(&scalar.to_string()),
            }
        }
        let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        let id = |v: &Option<Uuid>| v.map_or(Value::Null, |id| Value::String(id.to_string()));
        let content = serde_json::json!({
            "occurred_at": record.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "kind": audit_kind_str(&record.kind),
            "request_id": opt(&record.request_id),
            "principal_id": id(&record.principal_id),
            "api_key_id": id(&record.api_key_id),
            "grant_id": id(&record.grant_id),
            "client_ip": opt(&record.client_ip),
            "method": opt(&record.method),
            "path": opt(&record.path),
            "route_id": id(&record.route_id),
            "decision": record.decision.as_ref().map_or(Value::Null, |d| Value::String(decision_str(d).into())),
            "reason": record.reason,
            "status": record.status,
            "latency_us": record.latency_us,
            "detail": record.detail,
        });
        let mut text = String::new();
        text.push_str(prev_hash);
        canonical(&content, &mut text);
        hex::encode(digest::digest(&digest::SHA256, text.as_bytes()))
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    prop_compose! {
        fn any_record()(
            micros in 0_i64..4_102_444_800_000_000,
            kind in prop_oneof![
                Just(AuditEventKind::ProxyRequest),
                Just(AuditEventKind::Management),
                Just(AuditEventKind::Webhook),
            ],
            strings in prop::collection::vec(prop::option::of(any::<String>()), 4),
            ids in prop::collection::vec(prop::option::of(any::<u128>()), 4),
            decision in prop::option::of(any::<bool>()),
            reason in any::<String>(),
            status in prop::option::of(any::<i32>()),
            latency_us in prop::option::of(any::<i64>()),
            detail in json_value(),
        ) -> AuditRecord {
            let id = |i: usize| ids[i].map(Uuid::from_u128);
            let text = |i: usize| strings[i].clone();
            AuditRecord {
                occurred_at: DateTime::from_timestamp_micros(micros).unwrap_or_default(),
                kind,
                request_id: text(0),
                principal_id: id(0),
                api_key_id: id(1),
                grant_id: id(2),
                client_ip: text(1),
                method: text(2),
                path: text(3),
                route_id: id(3),
                decision: decision.map(|d| if d { AuditDecision::Allow } else { AuditDecision::Deny }),
                reason,
                status,
                latency_us,
                detail,
                permission_id: None,
            }
        }
    }

    proptest! {
        #[test]
        fn matches_the_value_based_encoding(record in any_record(), prev in "[0-9a-f]{64}") {
            prop_assert_eq!(chain_hash(&prev, &record), value_based_hash(&prev, &record));
        }
    }

    #[test]
    fn strings_and_hashes_are_written_as_serde_json_and_hex_write_them() {
        for value in [
            "",
            "plain",
            "/a b/c?d=e",
            "quote\"",
            "back\\slash",
            "\u{1f}",
            "\n",
            "\u{7f}",
            "é✓",
        ] {
            let mut out = Vec::new();
            json_str(&mut out, value);
            assert_eq!(
                String::from_utf8(out).ok(),
                serde_json::to_string(value).ok(),
                "{value:?}"
            );
        }
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(lower_hex(&bytes), hex::encode(&bytes));
    }

    #[test]
    fn a_typical_proxy_record_hashes_as_before() {
        let mut record = AuditRecord::new(AuditEventKind::ProxyRequest, "allowed_by_binding");
        record.request_id = Some("0193a0f4-1c1e-7000-8000-000000000001".into());
        record.principal_id = Some(Uuid::from_u128(1));
        record.api_key_id = Some(Uuid::from_u128(2));
        record.client_ip = Some("127.0.0.1".into());
        record.method = Some("GET".into());
        record.path = Some("/demo/x\"\u{1}é".into());
        record.route_id = Some(Uuid::from_u128(3));
        record.decision = Some(AuditDecision::Allow);
        record.status = Some(200);
        record.latency_us = Some(87);
        let mut buf = Vec::new();
        for prev in [GENESIS, &"a".repeat(64)] {
            assert_eq!(
                chain_hash_with(&mut buf, prev, &record),
                value_based_hash(prev, &record)
            );
        }
    }

    #[test]
    fn the_hash_ignores_json_key_order_but_not_content() {
        let mut a = AuditRecord::new(AuditEventKind::ProxyRequest, "ok");
        a.detail = serde_json::json!({"b": 1, "a": {"y": 2, "x": 3}});
        let mut b = a.clone();
        b.detail = serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 1}"#).unwrap_or_default();
        assert_eq!(chain_hash(GENESIS, &a), chain_hash(GENESIS, &b));
        b.reason = "ok!".into();
        assert_ne!(chain_hash(GENESIS, &a), chain_hash(GENESIS, &b));
        assert_ne!(chain_hash(GENESIS, &a), chain_hash(&"1".repeat(64), &a));
    }
}
