//! `ipRules`.

use async_graphql::{Context, Object};

use super::types::{IpRuleFilter, IpRuleOut};
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{ip_rules, management::IP_RULES_READ},
};

/// IP rule queries.
#[derive(Default)]
pub struct IpRuleQuery;

#[Object]
impl IpRuleQuery {
    /// IP rules, oldest first.
    #[graphql(
        guard = "RequirePermission(IP_RULES_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn ip_rules(
        &self,
        ctx: &Context<'_>,
        filter: Option<IpRuleFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<IpRuleOut>> {
        let page = page_request(first, after)?;
        let filter = ip_rules::IpRuleFilter {
            route_id: filter.and_then(|f| f.route_id),
        };
        let rows = ip_rules::list(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(rows, |r| r.id.to_string(), IpRuleOut::from))
    }
}
