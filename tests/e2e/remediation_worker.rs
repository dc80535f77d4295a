//! `portcullis worker`, the real binary: reacts to a security event written by a proxy
//! (blocks the IP, publishes to SNS through the AWS SDK's standard endpoint variables) and
//! shuts down cleanly on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use api::aws::dev_mock::DevAws;
use chrono::Utc;
use entity::{
    ip_rule,
    security_event::{self, SecurityEventStatus, Severity},
};
use migration::testing::TestDatabase;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::json;
use uuid::Uuid;

use crate::{
    remediation_support::TOPIC,
    support::{TEST_PEPPER_HEX, eventually},
};

#[tokio::test]
async fn the_worker_binary_blocks_a_bursting_ip_notifies_and_stops_on_sigterm() {
    let database = TestDatabase::sqlite().await.migrated().await;
    let aws = DevAws::start().await;
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &database.url)
        .env("PORTCULLIS_DATA_DIR", data.path())
        .env("PORTCULLIS_KEY_PEPPER", TEST_PEPPER_HEX)
        .env("PORTCULLIS_TOKEN_SIGNING_KEY", TEST_PEPPER_HEX)
        .env("PORTCULLIS_API__NOTIFY_TOPIC_ARN", TOPIC)
        .env("PORTCULLIS_API__REMEDIATION__POLL_INTERVAL_MS", "50")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL_SNS", aws.sns_endpoint())
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", aws.secrets_endpoint())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let id = Uuid::now_v7();
    let now = Utc::now();
    security_event::ActiveModel {
        id: Set(id),
        kind: Set("failed_auth_burst".into()),
        severity: Set(Severity::High),
        occurred_at: Set(now),
        principal_id: Set(None),
        api_key_id: Set(None),
        client_ip: Set(Some("192.0.2.77".into())),
        route_id: Set(None),
        fingerprint: Set("failed_auth_burst:ip:192.0.2.77".into()),
        detail: Set(json!({ "failures": 20 })),
        status: Set(SecurityEventStatus::New),
        handled_by_run_id: Set(None),
        created_at: Set(now),
    }
    .insert(&database.conn)
    .await
    .unwrap();

    let notified = eventually(Duration::from_secs(20), || async {
        !aws.published().is_empty()
    })
    .await;
    let rules = ip_rule::Entity::find().all(&database.conn).await.unwrap();
    let event = security_event::Entity::find_by_id(id)
        .one(&database.conn)
        .await
        .unwrap()
        .unwrap();

    // Graceful stop on SIGTERM.
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        notified.is_some(),
        "no notification; worker said:\n{stderr}"
    );
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].cidr, "192.0.2.77/32");
    assert_eq!(event.status, SecurityEventStatus::Handled);
    let message = &aws.published()[0];
    assert_eq!(message.topic_arn, TOPIC);
    assert_eq!(message.attributes["event_type"], "failed_auth_burst");
}
