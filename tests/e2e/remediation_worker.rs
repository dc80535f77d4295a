//! `portcullis worker`, the real binary: reacts to a security event written by a proxy
//! (blocks the IP, publishes to SNS through the AWS SDK's standard endpoint variables) and
//! shuts down cleanly on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use api::aws::dev_mock::DevAws;
use entity::{
    ip_rule,
    security_event::{self, SecurityEventStatus, Severity},
};
use migration::testing::TestDatabase;
use sea_orm::EntityTrait;

use crate::{
    remediation_support::{TOPIC, insert_event, worker_command},
    support::eventually,
};

#[tokio::test]
async fn the_worker_binary_blocks_a_bursting_ip_notifies_and_stops_on_sigterm() {
    let database = TestDatabase::sqlite().await.migrated().await;
    let aws = DevAws::start().await;
    let data = tempfile::tempdir().unwrap();
    let child = worker_command(&database.url, data.path(), &aws)
        .env("PORTCULLIS_API__REMEDIATION__POLL_INTERVAL_MS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let id = insert_event(
        &database.conn,
        "failed_auth_burst",
        Severity::High,
        None,
        None,
        Some("192.0.2.77"),
    )
    .await;

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
