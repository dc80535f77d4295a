//! Playbooks as typed data: the JSON columns of `remediation_playbook` parsed into
//! [`Playbook`], and the builtin defaults seeded at start.
//!
//! A row whose JSON does not parse is skipped with an error log, never a panic: one bad
//! playbook must not stop the others.

use std::collections::BTreeMap;

use chrono::Utc;
use entity::{remediation_playbook, security_event::Severity};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// What starts a run of a playbook (`remediation_playbook.trigger`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A security event of one of `event_kinds` with at least `min_severity`. The SNS webhook
    /// writes its notifications as security events too (`key_leaked`, `cloudwatch_alarm`,
    /// `sns_notification`), so SNS triggers are expressed the same way.
    SecurityEvent {
        /// Detector kinds, e.g. `failed_auth_burst`.
        event_kinds: Vec<String>,
        /// Lowest severity that starts a run.
        #[serde(default = "lowest_severity")]
        min_severity: Severity,
        /// Every entry must match the event's `detail` field of that name: exactly, or by
        /// prefix when the pattern ends in `*`. This is how a playbook reacts to one SNS
        /// topic, one CloudWatch alarm or one state, e.g.
        /// `{"alarm_name": "payments-*", "new_state": "ALARM"}` or `{"topic_arn": "arn:…"}`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        detail: BTreeMap<String, String>,
    },
    /// Started once per period of `every_secs` (periods are aligned to the Unix epoch, so
    /// every worker agrees on them). Only actions that need no triggering event make sense
    /// here (see [`ActionTemplate::needs_event`]); a period with nothing to do records no run.
    Schedule {
        /// Period in seconds (at least [`MIN_SCHEDULE_SECS`]).
        every_secs: u64,
    },
    /// Only started by an operator (GraphQL) or a service call.
    Manual,
}

/// The shortest schedule period accepted: workers look for due schedules every few hundred
/// milliseconds, but a sweep per second would only load the database.
pub const MIN_SCHEDULE_SECS: u64 = 10;

fn lowest_severity() -> Severity {
    Severity::Low
}

/// Checks that suppress false positives (`remediation_playbook.diagnose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Diagnose {
    /// The event's key was already revoked on purpose (by an operator, not by remediation).
    pub suppress_if_key_revoked: bool,
    /// The event's client IP is inside an active `allow` IP rule.
    pub suppress_if_ip_allowed: bool,
    /// The event's principal holds an active (approved, unexpired) incident grant.
    pub suppress_if_incident_grant: bool,
}

impl Default for Diagnose {
    fn default() -> Self {
        Self {
            suppress_if_key_revoked: true,
            suppress_if_ip_allowed: true,
            suppress_if_incident_grant: true,
        }
    }
}

/// One action of a playbook, resolved against the trigger when a run is planned
/// (`remediation_playbook.actions` is an array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionTemplate {
    /// Deny the event's client for `duration_secs`: its IPv4 address, or the /64 of its IPv6
    /// address (`proxy::detect::client_subnet`).
    BlockIp {
        /// How long the block lasts.
        duration_secs: i64,
    },
    /// Suspend the event's key (reversible; the owner is asked).
    SuspendKey,
    /// Revoke the event's key for good.
    RevokeKey,
    /// Rotate the event's key into its managed secret, if a secret holds it.
    RotateKey,
    /// Delete the event principal's role bindings (only `role_id`'s, when given).
    RevokeBindings {
        /// Only bindings of this role.
        #[serde(default)]
        role_id: Option<Uuid>,
    },
    /// Revoke the event principal's active incident grants.
    RevokeGrants,
    /// Multiply the event principal's (or key's) rate limit by `factor` for `duration_secs`.
    TightenRateLimit {
        /// E.g. 0.5 halves the limit.
        factor: f64,
        /// How long the override lasts.
        duration_secs: i64,
    },
    /// Close every open access review past its deadline: undecided items get the campaign's
    /// default decision, revocations take effect.
    ApplyOverdueReviews,
    /// Rotate an upstream credential: `secret_id`, or else the credential of the event's
    /// route.
    RotateUpstreamCredential {
        /// The managed secret (kind `upstream_credential`).
        #[serde(default)]
        secret_id: Option<String>,
    },
}

impl ActionTemplate {
    /// Whether the action acts on the triggering event's IP, key, principal or route, and so
    /// cannot run from a schedule.
    pub fn needs_event(&self) -> bool {
        match self {
            Self::ApplyOverdueReviews => false,
            Self::RotateUpstreamCredential { secret_id } => secret_id.is_none(),
            _ => true,
        }
    }

    /// The snake_case name, as in the JSON.
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A playbook whose JSON parses but which cannot work as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InconsistentPlaybook {
    /// The column at fault: `trigger` or `actions`.
    pub column: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Checks that go beyond the JSON shape: a schedule's period, that a scheduled playbook only
/// has actions that need no event, and the actions' numbers.
pub fn check(trigger: &Trigger, actions: &[ActionTemplate]) -> Result<(), InconsistentPlaybook> {
    let actions_error = |message: String| InconsistentPlaybook {
        column: "actions",
        message,
    };
    if let Trigger::Schedule { every_secs } = trigger {
        if *every_secs < MIN_SCHEDULE_SECS {
            return Err(InconsistentPlaybook {
                column: "trigger",
                message: format!(
                    "a schedule runs at most every {MIN_SCHEDULE_SECS} seconds (every_secs: {every_secs})"
                ),
            });
        }
        if let Some(action) = actions.iter().find(|a| a.needs_event()) {
            return Err(actions_error(format!(
                "action {:?} needs a triggering event and cannot run on a schedule",
                action.name()
            )));
        }
    }
    for action in actions {
        match action {
            ActionTemplate::BlockIp { duration_secs }
            | ActionTemplate::TightenRateLimit { duration_secs, .. }
                if *duration_secs <= 0 =>
            {
                return Err(actions_error(format!(
                    "action {:?}: duration_secs must be positive",
                    action.name()
                )));
            }
            ActionTemplate::TightenRateLimit { factor, .. }
                if !(factor.is_finite() && *factor > 0.0 && *factor < 1.0) =>
            {
                return Err(actions_error(format!(
                    "action \"tighten_rate_limit\": factor must be between 0 and 1 (got {factor})"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Who is told (`remediation_playbook.notify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySpec {
    /// Send a notification at the end of the run.
    pub enabled: bool,
    /// `event_type` attribute; default: the trigger's kind.
    pub event_type: Option<String>,
    /// `severity` attribute; default: the trigger's severity.
    pub severity: Option<Severity>,
    /// Topic; default: the configured `notify_topic_arn`.
    pub topic_arn: Option<String>,
}

impl Default for NotifySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            event_type: None,
            severity: None,
            topic_arn: None,
        }
    }
}

/// A parsed, valid playbook.
#[derive(Debug, Clone, PartialEq)]
pub struct Playbook {
    /// Row id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Disabled playbooks never start runs.
    pub enabled: bool,
    /// Plan only.
    pub dry_run: bool,
    /// When.
    pub trigger: Trigger,
    /// Suppression checks.
    pub diagnose: Diagnose,
    /// What, in order.
    pub actions: Vec<ActionTemplate>,
    /// Who is told.
    pub notify: NotifySpec,
}

/// Why a playbook row is unusable.
#[derive(Debug, thiserror::Error)]
#[error("playbook {name:?}: invalid {column}")]
pub struct InvalidPlaybook {
    /// The playbook's name.
    pub name: String,
    /// Which JSON column.
    pub column: &'static str,
    /// The parse error.
    #[source]
    pub source: serde_json::Error,
}

impl Playbook {
    /// Parses the JSON columns of `row`.
    pub fn parse(row: &remediation_playbook::Model) -> Result<Self, InvalidPlaybook> {
        fn column<T: serde::de::DeserializeOwned>(
            name: &str,
            column: &'static str,
            value: &Value,
        ) -> Result<T, InvalidPlaybook> {
            serde_json::from_value(value.clone()).map_err(|source| InvalidPlaybook {
                name: name.to_owned(),
                column,
                source,
            })
        }
        Ok(Self {
            id: row.id,
            name: row.name.clone(),
            enabled: row.enabled,
            dry_run: row.dry_run,
            trigger: column(&row.name, "trigger", &row.trigger)?,
            diagnose: column(&row.name, "diagnose", &row.diagnose)?,
            actions: column(&row.name, "actions", &row.actions)?,
            notify: column(&row.name, "notify", &row.notify)?,
        })
    }

    /// The schedule period, for an enabled scheduled playbook.
    pub fn schedule_period(&self) -> Option<u64> {
        match self.trigger {
            Trigger::Schedule { every_secs } if self.enabled => Some(every_secs),
            _ => None,
        }
    }

    /// Whether a security event of `kind`, `severity` and `detail` starts this playbook.
    pub fn matches_event(&self, kind: &str, severity: Severity, detail: &Value) -> bool {
        let Trigger::SecurityEvent {
            event_kinds,
            min_severity,
            detail: filter,
        } = &self.trigger
        else {
            return false;
        };
        self.enabled
            && severity >= *min_severity
            && event_kinds.iter().any(|k| k == kind)
            && filter.iter().all(|(field, pattern)| {
                detail
                    .get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|value| matches_pattern(value, pattern))
            })
    }
}

/// `pattern` is the exact value, or a prefix followed by `*`.
fn matches_pattern(value: &str, pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == pattern,
    }
}

/// Every enabled, valid playbook; invalid rows are logged and skipped.
pub async fn load_enabled<C: ConnectionTrait>(db: &C) -> Result<Vec<Playbook>, DbErr> {
    let rows = remediation_playbook::Entity::find()
        .filter(remediation_playbook::Column::Enabled.eq(true))
        .all(db)
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| match Playbook::parse(row) {
            Ok(playbook) => Some(playbook),
            Err(error) => {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "skipping an invalid playbook"
                );
                None
            }
        })
        .collect())
}

/// One builtin playbook.
struct Builtin {
    name: &'static str,
    description: &'static str,
    trigger: Value,
    diagnose: Value,
    actions: Value,
    notify: Value,
}

fn builtins() -> Vec<Builtin> {
    let event = |kinds: &[&str]| json!({ "kind": "security_event", "event_kinds": kinds });
    vec![
        Builtin {
            name: "failed-auth-burst",
            description: "A burst of failed logins from one IP: block the IP for 15 minutes and notify.",
            trigger: event(&["failed_auth_burst"]),
            diagnose: json!({ "suppress_if_key_revoked": false }),
            actions: json!([{ "action": "block_ip", "duration_secs": 900 }]),
            notify: json!({ "enabled": true }),
        },
        Builtin {
            name: "leaked-key",
            description: "A key was reported leaked: rotate it into its managed secret (if any), revoke it at once, notify.",
            trigger: event(&["key_leaked"]),
            diagnose: json!({ "suppress_if_ip_allowed": false, "suppress_if_incident_grant": false }),
            actions: json!([{ "action": "revoke_key" }, { "action": "rotate_key" }]),
            notify: json!({ "enabled": true }),
        },
        Builtin {
            name: "key-new-network",
            description: "A key was used from a network it never used: suspend it and ask the owner.",
            trigger: event(&["key_new_network"]),
            diagnose: json!({}),
            actions: json!([{ "action": "suspend_key" }]),
            notify: json!({ "enabled": true }),
        },
        Builtin {
            name: "traffic-spike",
            description: "A principal's traffic spiked: halve its rate limit for 10 minutes and notify.",
            trigger: event(&["traffic_spike"]),
            diagnose: json!({}),
            actions: json!([{ "action": "tighten_rate_limit", "factor": 0.5, "duration_secs": 600 }]),
            notify: json!({ "enabled": true }),
        },
        Builtin {
            name: "overdue-review",
            description: "An access review passed its deadline: apply its default decision to undecided items, carry out the revocations, close it, notify.",
            trigger: json!({ "kind": "schedule", "every_secs": 60 }),
            diagnose: json!({}),
            actions: json!([{ "action": "apply_overdue_reviews" }]),
            notify: json!({ "enabled": true, "event_type": "access_review_overdue" }),
        },
        Builtin {
            name: "revoked-key-used",
            description: "A revoked key was presented again: notify.",
            trigger: event(&["revoked_key_used"]),
            diagnose: json!({ "suppress_if_key_revoked": false }),
            actions: json!([]),
            notify: json!({ "enabled": true }),
        },
    ]
}

/// Inserts the builtin playbooks that are missing (by name). Existing rows, including edited
/// or disabled builtins, are left alone, so calling this at every start is safe.
pub async fn seed_builtin_playbooks<C: ConnectionTrait>(db: &C) -> Result<usize, DbErr> {
    let mut inserted = 0;
    for builtin in builtins() {
        let exists = remediation_playbook::Entity::find()
            .filter(remediation_playbook::Column::Name.eq(builtin.name))
            .one(db)
            .await?
            .is_some();
        if exists {
            continue;
        }
        let now = Utc::now();
        let result = remediation_playbook::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(builtin.name.to_owned()),
            description: Set(builtin.description.to_owned()),
            enabled: Set(true),
            dry_run: Set(false),
            builtin: Set(true),
            trigger: Set(builtin.trigger),
            diagnose: Set(builtin.diagnose),
            actions: Set(builtin.actions),
            notify: Set(builtin.notify),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(db)
        .await;
        match result {
            Ok(_) => inserted += 1,
            // Another process seeded it at the same moment.
            Err(error)
                if matches!(
                    error.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(trigger: Value, actions: Value) -> remediation_playbook::Model {
        let now = Utc::now();
        remediation_playbook::Model {
            id: Uuid::now_v7(),
            name: "t".into(),
            description: String::new(),
            enabled: true,
            dry_run: false,
            builtin: false,
            trigger,
            diagnose: json!({}),
            actions,
            notify: json!({}),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn every_builtin_parses() {
        for builtin in builtins() {
            let mut model = row(builtin.trigger, builtin.actions);
            model.diagnose = builtin.diagnose;
            model.notify = builtin.notify;
            let playbook = Playbook::parse(&model).unwrap_or_else(|e| panic!("{e:?}"));
            assert!(playbook.notify.enabled);
            assert_eq!(check(&playbook.trigger, &playbook.actions), Ok(()));
        }
    }

    #[test]
    fn invalid_json_is_an_error_not_a_panic() {
        let bad = row(json!({ "kind": "nope" }), json!([]));
        assert!(Playbook::parse(&bad).is_err());
        let bad = row(
            json!({ "kind": "manual" }),
            json!([{ "action": "block_ip", "duration_secs": "soon" }]),
        );
        let error = Playbook::parse(&bad).err().map(|e| e.column);
        assert_eq!(error, Some("actions"));
    }

    #[test]
    fn schedules_refuse_event_actions_and_short_periods() {
        let schedule = Trigger::Schedule { every_secs: 60 };
        assert_eq!(
            check(&schedule, &[ActionTemplate::ApplyOverdueReviews]),
            Ok(())
        );
        let named = ActionTemplate::RotateUpstreamCredential {
            secret_id: Some("s".into()),
        };
        assert_eq!(check(&schedule, &[named]), Ok(()));
        let error = check(&schedule, &[ActionTemplate::SuspendKey]).expect_err("needs an event");
        assert_eq!(error.column, "actions");
        assert!(error.message.contains("suspend_key"), "{error}");
        let error = check(
            &schedule,
            &[ActionTemplate::RotateUpstreamCredential { secret_id: None }],
        )
        .expect_err("needs the event's route");
        assert!(
            error.message.contains("rotate_upstream_credential"),
            "{error}"
        );
        let error = check(&Trigger::Schedule { every_secs: 1 }, &[]).expect_err("too often");
        assert_eq!(error.column, "trigger");
        assert!(error.message.contains("every_secs"), "{error}");
        // The same actions are fine when an event triggers them.
        assert_eq!(
            check(&Trigger::Manual, &[ActionTemplate::SuspendKey]),
            Ok(())
        );
        let bad_factor = ActionTemplate::TightenRateLimit {
            factor: 2.0,
            duration_secs: 60,
        };
        assert!(check(&Trigger::Manual, &[bad_factor]).is_err());
    }

    #[test]
    fn severity_threshold_and_kind_decide_a_match() {
        let model = row(
            json!({ "kind": "security_event", "event_kinds": ["traffic_spike"], "min_severity": "high" }),
            json!([]),
        );
        let playbook = Playbook::parse(&model).unwrap_or_else(|e| panic!("{e:?}"));
        let detail = json!({});
        assert!(playbook.matches_event("traffic_spike", Severity::Critical, &detail));
        assert!(!playbook.matches_event("traffic_spike", Severity::Medium, &detail));
        assert!(!playbook.matches_event("failed_auth_burst", Severity::Critical, &detail));
    }

    #[test]
    fn a_detail_filter_picks_one_alarm_and_state() {
        let model = row(
            json!({ "kind": "security_event", "event_kinds": ["cloudwatch_alarm"],
                    "detail": { "alarm_name": "payments-*", "new_state": "ALARM" } }),
            json!([]),
        );
        let playbook = Playbook::parse(&model).unwrap_or_else(|e| panic!("{e:?}"));
        let event = |name: &str, state: &str| json!({ "alarm_name": name, "new_state": state });
        let high = Severity::High;
        assert!(playbook.matches_event("cloudwatch_alarm", high, &event("payments-5xx", "ALARM")));
        assert!(!playbook.matches_event("cloudwatch_alarm", high, &event("search-5xx", "ALARM")));
        assert!(!playbook.matches_event("cloudwatch_alarm", high, &event("payments-5xx", "OK")));
        // A field the event lacks does not match.
        assert!(!playbook.matches_event(
            "cloudwatch_alarm",
            high,
            &json!({ "new_state": "ALARM" })
        ));
    }
}
