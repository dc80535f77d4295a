//! `playbooks`, `remediationRuns`, `remediationRun`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{PlaybookOut, RemediationRunFilter, RemediationRunOut};
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{management::REMEDIATION_READ, playbooks},
};

/// Remediation queries.
#[derive(Default)]
pub struct RemediationQuery;

#[Object]
impl RemediationQuery {
    /// Remediation playbooks, oldest first (the builtin defaults included).
    #[graphql(
        guard = "RequirePermission(REMEDIATION_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn playbooks(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<PlaybookOut>> {
        let page = page_request(first, after)?;
        let rows = playbooks::list(&services(ctx)?.db, &page).await?;
        Ok(connection(rows, |r| r.id.to_string(), PlaybookOut::from))
    }

    /// Remediation runs, newest first, with their steps.
    #[graphql(
        guard = "RequirePermission(REMEDIATION_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn remediation_runs(
        &self,
        ctx: &Context<'_>,
        filter: Option<RemediationRunFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<RemediationRunOut>> {
        let page = page_request(first, after)?;
        let filter = filter.map(Into::into).unwrap_or_default();
        let rows = playbooks::list_runs(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(
            rows,
            |r| r.id.to_string(),
            RemediationRunOut::from,
        ))
    }

    /// Run `id`, or null.
    #[graphql(guard = "RequirePermission(REMEDIATION_READ)")]
    async fn remediation_run(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> ApiResult<Option<RemediationRunOut>> {
        Ok(playbooks::get_run(&services(ctx)?.db, id)
            .await?
            .map(Into::into))
    }
}
