//! `notifications`.

use async_graphql::{Context, Object};

use super::types::{NotificationFilter, NotificationOut};
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{management::REMEDIATION_READ, notifications},
};

/// Notification queries.
#[derive(Default)]
pub struct NotificationQuery;

#[Object]
impl NotificationQuery {
    /// Notifications of the SNS outbox, newest first.
    #[graphql(
        guard = "RequirePermission(REMEDIATION_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        filter: Option<NotificationFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<NotificationOut>> {
        let page = page_request(first, after)?;
        let filter = filter.map(Into::into).unwrap_or_default();
        let rows = notifications::list(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(
            rows,
            |r| r.id.to_string(),
            NotificationOut::from,
        ))
    }
}
