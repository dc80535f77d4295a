//! `auditEvents`, `securityEvents`, `verifyAuditChain`.

use async_graphql::{Context, Object};

use super::types::{
    AuditAnchorInput, AuditEventFilter, AuditEventOut, ChainVerificationOut, SecurityEventFilter,
    SecurityEventOut,
};
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{audit, management::AUDIT_READ},
};

/// Audit queries.
#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Audit events, newest first.
    #[graphql(
        guard = "RequirePermission(AUDIT_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditEventFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<AuditEventOut>> {
        let page = page_request(first, after)?;
        let filter = filter.unwrap_or_default().into();
        let rows = audit::list_events(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(rows, |e| e.id.to_string(), AuditEventOut::from))
    }

    /// Security events, newest first.
    #[graphql(
        guard = "RequirePermission(AUDIT_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn security_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<SecurityEventFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<SecurityEventOut>> {
        let page = page_request(first, after)?;
        let filter = filter.unwrap_or_default().into();
        let rows = audit::list_security_events(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(
            rows,
            |e| e.id.to_string(),
            SecurityEventOut::from,
        ))
    }

    /// Verifies the audit hash chain over events `fromId..=toId` (default: all; at most
    /// 100,000 events per call, see `lastCheckedId`), reporting the first broken link, and
    /// checks that each anchor's event is still stored with the anchored hash: deleted newest
    /// events, or events rewritten and rehashed, pass the chain check but not an anchor taken
    /// before. An anchor outside the range verified fails the call (at most 100 anchors).
    #[graphql(guard = "RequirePermission(AUDIT_READ)")]
    async fn verify_audit_chain(
        &self,
        ctx: &Context<'_>,
        from_id: Option<i64>,
        to_id: Option<i64>,
        #[graphql(default)] anchors: Vec<AuditAnchorInput>,
    ) -> ApiResult<ChainVerificationOut> {
        let anchors: Vec<audit::Anchor> = anchors.into_iter().map(Into::into).collect();
        Ok(
            audit::verify_chain(&services(ctx)?.db, from_id, to_id, &anchors)
                .await?
                .into(),
        )
    }
}
