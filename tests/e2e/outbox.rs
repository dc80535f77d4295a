//! The SNS outbox: what a publish looks like on the wire, and that an SNS outage loses
//! nothing and keeps the order within each message group.

use std::time::Duration;

use api::outbox::{self, NewNotification};
use entity::{
    notification_outbox::{self, OutboxStatus},
    security_event::Severity,
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use wiremock::{Mock, ResponseTemplate, matchers::body_string_contains};

use crate::{
    remediation_support::{Fixture, TOPIC, fast_config},
    support::for_each_backend,
};

fn notification(topic: &str, group: &str, n: usize) -> NewNotification {
    NewNotification {
        topic_arn: topic.to_owned(),
        message_group: Some(group.to_owned()),
        dedup_id: format!("{group}-{n}"),
        event_type: "failed_auth_burst".into(),
        severity: Severity::High,
        principal: Some(format!("principal-{group}")),
        subject: format!("{group} #{n}"),
        message: format!("{{\"group\":\"{group}\",\"n\":{n}}}"),
    }
}

#[tokio::test]
async fn a_publish_carries_the_attributes_and_fifo_topics_get_group_and_dedup_ids() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        let engine = fixture.engine(fast_config()).await;
        let fifo = "arn:aws:sns:us-east-1:000000000000:portcullis-alerts.fifo";
        outbox::enqueue(&fixture.db, notification(TOPIC, "a", 1))
            .await
            .unwrap();
        outbox::enqueue(&fixture.db, notification(fifo, "b", 1))
            .await
            .unwrap();

        assert_eq!(engine.dispatcher().dispatch_once().await.unwrap(), 2);

        let published = fixture.aws.published();
        assert_eq!(published.len(), 2);
        let standard = &published[0];
        assert_eq!(standard.topic_arn, TOPIC);
        assert_eq!(standard.subject.as_deref(), Some("a #1"));
        assert_eq!(standard.attributes["event_type"], "failed_auth_burst");
        assert_eq!(standard.attributes["severity"], "high");
        assert_eq!(standard.attributes["principal"], "principal-a");
        assert_eq!(
            standard.message_group_id, None,
            "standard topics get no group id"
        );
        assert_eq!(standard.deduplication_id, None);
        let fifo_message = &published[1];
        assert_eq!(fifo_message.message_group_id.as_deref(), Some("b"));
        assert_eq!(fifo_message.deduplication_id.as_deref(), Some("b-1"));

        // Rows are marked sent with the SNS message id.
        let rows = notification_outbox::Entity::find()
            .all(&fixture.db)
            .await
            .unwrap();
        assert!(
            rows.iter()
                .all(|r| r.status == OutboxStatus::Sent && r.sent_at.is_some())
        );
        assert_eq!(
            rows[0].sns_message_id.as_deref(),
            Some(standard.message_id.as_str())
        );
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn sns_down_for_a_while_loses_nothing_and_keeps_order_per_group() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        let engine = fixture.engine(fast_config()).await;
        // Group "a"'s first message and the next few publishes hit an outage.
        Mock::given(body_string_contains("Action=Publish"))
            .respond_with(ResponseTemplate::new(503).set_body_string(
                "<ErrorResponse><Error><Code>ServiceUnavailable</Code><Message>down</Message></Error></ErrorResponse>",
            ))
            .up_to_n_times(6)
            .with_priority(1)
            .mount(fixture.aws.sns_server())
            .await;
        for n in 1..=4 {
            outbox::enqueue(&fixture.db, notification(TOPIC, "a", n)).await.unwrap();
            outbox::enqueue(&fixture.db, notification(TOPIC, "b", n)).await.unwrap();
        }

        let dispatcher = engine.dispatcher();
        let started = std::time::Instant::now();
        loop {
            dispatcher.dispatch_once().await.unwrap();
            let pending = notification_outbox::Entity::find()
                .filter(notification_outbox::Column::Status.ne(OutboxStatus::Sent))
                .all(&fixture.db)
                .await
                .unwrap();
            if pending.is_empty() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "not delivered: {pending:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let published = fixture.aws.published();
        assert_eq!(published.len(), 8, "every message exactly once");
        for group in ["a", "b"] {
            let order: Vec<_> = published
                .iter()
                .filter(|m| m.subject.as_deref().is_some_and(|s| s.starts_with(group)))
                .map(|m| m.subject.clone().unwrap())
                .collect();
            let expected: Vec<_> = (1..=4).map(|n| format!("{group} #{n}")).collect();
            assert_eq!(order, expected, "order within group {group}");
        }
        let retried = notification_outbox::Entity::find()
            .all(&fixture.db)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.attempts > 1)
            .count();
        assert!(retried > 0, "the outage caused retries");
        fixture.drop().await;
    })
    .await;
}
