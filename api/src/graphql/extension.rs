//! The schema extension that gives every error its `extensions.code` (and logs internal
//! ones with their cause chain), and writes one audit event per management mutation —
//! allowed, refused or failed — with the actor and the redacted input.

use std::sync::Arc;

use async_graphql::{
    Name, ServerError, ServerResult, Value, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextRequest, NextResolve, ResolveInfo,
    },
};
use serde_json::{Map, Value as Json};

use super::error::{ApiError, error_chain};
use crate::service::{self, ServiceContext, auth::Caller};

/// The request's variables, so audit records can show the arguments as sent.
#[derive(Debug, Clone)]
pub struct RequestVariables(pub Variables);

/// Factory registered on the schema.
pub struct ManagementExtension;

impl ExtensionFactory for ManagementExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ManagementExtensionImpl)
    }
}

struct ManagementExtensionImpl;

#[async_graphql::async_trait::async_trait]
impl Extension for ManagementExtensionImpl {
    async fn request(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextRequest<'_>,
    ) -> async_graphql::Response {
        let mut response = next.run(ctx).await;
        for error in &mut response.errors {
            let has_code = error
                .extensions
                .as_ref()
                .is_some_and(|ext| ext.get("code").is_some());
            if !has_code {
                // Parse/validation failures (syntax, unknown fields, depth and complexity
                // limits) have no path; input coercion failures do.
                let code = if error.path.is_empty() {
                    "GRAPHQL_VALIDATION_FAILED"
                } else {
                    "BAD_USER_INPUT"
                };
                error
                    .extensions
                    .get_or_insert_with(Default::default)
                    .set("code", code);
            }
        }
        response
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let audited = info.parent_type == "MutationRoot" && info.path_node.parent.is_none();
        let mutation = info.name.to_owned();
        let arguments = audited.then(|| {
            let variables = ctx.data_opt::<RequestVariables>();
            arguments_json(&info, variables)
        });
        let result = next.run(ctx, info).await.map_err(decorate);
        if let Some(detail) = arguments
            && let (Some(services), Some(caller)) =
                (ctx.data_opt::<ServiceContext>(), ctx.data_opt::<Caller>())
        {
            let outcome = match &result {
                Ok(_) => Ok(()),
                Err(error) => Err(audit_reason(error)),
            };
            service::audit::record_mutation(
                &services.db,
                caller,
                &mutation,
                detail,
                outcome.as_ref().map(|_| ()).map_err(String::as_str),
            )
            .await;
        }
        result
    }
}

/// Adds the code (and `field` / `permission`) of an [`ApiError`] source; logs internal errors.
fn decorate(mut error: ServerError) -> ServerError {
    let Some(api) = error.source::<ApiError>() else {
        return error;
    };
    if let ApiError::Internal(source) = api {
        tracing::error!(error = %error_chain(source.as_ref()), path = ?error.path, "management API request failed");
    }
    let extended = async_graphql::ErrorExtensions::extend(api);
    error.message = extended.message;
    error.extensions = extended.extensions;
    error
}

fn audit_reason(error: &ServerError) -> String {
    let code = error
        .extensions
        .as_ref()
        .and_then(|ext| ext.get("code"))
        .map(|code| match code {
            Value::String(s) => s.to_lowercase(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "error".into());
    match error.source::<ApiError>() {
        Some(ApiError::Internal(_)) | None => code,
        Some(api) => format!("{code}: {api}"),
    }
}

/// The field's arguments with variables substituted, as JSON, secrets redacted.
fn arguments_json(info: &ResolveInfo<'_>, variables: Option<&RequestVariables>) -> Json {
    let mut out = Map::new();
    for (name, value) in &info.field.arguments {
        let resolved = value
            .node
            .clone()
            .into_const_with(|var: Name| -> Result<Value, ()> {
                Ok(variables
                    .and_then(|v| v.0.get(&var).cloned())
                    .unwrap_or(Value::Null))
            })
            .unwrap_or(Value::Null);
        let json = resolved.into_json().unwrap_or(Json::Null);
        out.insert(name.node.to_string(), json);
    }
    let mut detail = Json::Object(Map::from_iter([(
        "arguments".to_owned(),
        Json::Object(out),
    )]));
    redact(&mut detail);
    detail
}

/// Replaces values under secret-looking keys, and anything that looks like a Portcullis
/// token, with `"[REDACTED]"`. NEVER LOG OR STORE A SECRET.
pub fn redact(value: &mut Json) {
    match value {
        Json::Object(map) => {
            for (key, value) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if key.contains("password")
                    || key.contains("token")
                    || key.ends_with("secret")
                    || key == "pepper"
                {
                    *value = Json::String("[REDACTED]".into());
                } else {
                    redact(value);
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(redact),
        Json::String(s) if proxy::keys::looks_like_token(s.trim()) => {
            *value = Json::String("[REDACTED]".into());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_hide() {
        let token = proxy::keys::PlainToken::generate(
            proxy::keys::TokenKind::ApiKey,
            proxy::keys::TokenEnv::Test,
        );
        let mut value = json!({
            "input": {"name": "x", "clientSecret": "hunter2", "notes": [token.expose_secret()]},
            "upstreamCredentialSecretId": "arn:aws:secretsmanager:…",
        });
        redact(&mut value);
        assert_eq!(
            value,
            json!({
                "input": {"name": "x", "clientSecret": "[REDACTED]", "notes": ["[REDACTED]"]},
                "upstreamCredentialSecretId": "arn:aws:secretsmanager:…",
            })
        );
    }
}
