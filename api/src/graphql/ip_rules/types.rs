//! GraphQL shapes of IP rules.

use async_graphql::{Enum, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use entity::ip_rule::{self, IpRuleAction, IpRuleSource};
use uuid::Uuid;

use crate::service::ip_rules;

/// Allow or deny.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "IpRuleAction")]
pub enum IpRuleActionOut {
    /// When any allow rule exists, a client must match one.
    Allow,
    /// Matching clients are refused (deny wins).
    Deny,
}

impl From<IpRuleActionOut> for IpRuleAction {
    fn from(a: IpRuleActionOut) -> Self {
        match a {
            IpRuleActionOut::Allow => Self::Allow,
            IpRuleActionOut::Deny => Self::Deny,
        }
    }
}

/// An allow or deny rule for a network.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "IpRule")]
pub struct IpRuleOut {
    /// Rule id.
    pub id: Uuid,
    /// Network, canonical CIDR.
    pub cidr: String,
    /// Allow or deny.
    pub action: IpRuleActionOut,
    /// Only this route; null = every route.
    pub route_id: Option<Uuid>,
    /// End of validity.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why.
    pub reason: String,
    /// `manual` or `remediation`.
    pub source: String,
    /// Who created it.
    pub created_by: Option<String>,
    /// Created at.
    pub created_at: DateTime<Utc>,
}

impl From<ip_rule::Model> for IpRuleOut {
    fn from(r: ip_rule::Model) -> Self {
        Self {
            id: r.id,
            cidr: r.cidr,
            action: match r.action {
                IpRuleAction::Allow => IpRuleActionOut::Allow,
                IpRuleAction::Deny => IpRuleActionOut::Deny,
            },
            route_id: r.route_id,
            expires_at: r.expires_at,
            reason: r.reason,
            source: match r.source {
                IpRuleSource::Manual => "manual".into(),
                IpRuleSource::Remediation => "remediation".into(),
            },
            created_by: r.created_by,
            created_at: r.created_at,
        }
    }
}

/// Input of `createIpRule`.
#[derive(InputObject, Clone, Debug)]
pub struct CreateIpRuleInput {
    /// Network (`10.0.0.0/8`) or address.
    pub cidr: String,
    /// Allow or deny.
    pub action: IpRuleActionOut,
    /// Only this route; absent = every route.
    pub route_id: Option<Uuid>,
    /// End of validity, in the future.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why (≤ 256 characters).
    pub reason: String,
}

impl From<CreateIpRuleInput> for ip_rules::NewIpRule {
    fn from(input: CreateIpRuleInput) -> Self {
        Self {
            cidr: input.cidr,
            action: input.action.into(),
            route_id: input.route_id,
            expires_at: input.expires_at,
            reason: input.reason,
        }
    }
}

/// Filter of `ipRules`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct IpRuleFilter {
    /// Only rules of this route.
    pub route_id: Option<Uuid>,
}
