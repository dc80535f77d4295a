//! Input checks shared by the services: each failure names the input field it concerns
//! (`BAD_USER_INPUT` with `extensions.field`).

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use proxy::policy::{MethodSet, PathGlob};
use serde_json::Value;

use crate::graphql::error::{ApiError, ApiResult};

/// Longest accepted name, reason, description or other free text.
pub const MAX_TEXT: usize = 256;
/// Largest accepted metadata object, serialised.
pub const MAX_METADATA_BYTES: usize = 4096;

/// A required, non-blank text of at most [`MAX_TEXT`] characters, trimmed.
pub fn text(field: &str, value: &str) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    optional_text(field, Some(value)).map(|v| v.unwrap_or_default())
}

/// Longest accepted justification or other explanatory paragraph.
pub const MAX_PARAGRAPH: usize = 2000;

/// A required, non-blank paragraph of at most [`MAX_PARAGRAPH`] characters, trimmed.
pub fn paragraph(field: &str, value: &str) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    bounded(field, value, MAX_PARAGRAPH)?;
    Ok(value.to_owned())
}

/// An optional text of at most [`MAX_TEXT`] characters, trimmed; blank becomes `None`.
pub fn optional_text(field: &str, value: Option<&str>) -> ApiResult<Option<String>> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    bounded(field, value, MAX_TEXT)?;
    Ok(Some(value.to_owned()))
}

/// At most `max` characters, none of them a control character.
fn bounded(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An instant that must lie in the future.
pub fn future(
    field: &str,
    at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> ApiResult<Option<DateTime<Utc>>> {
    match at {
        Some(at) if at <= now => Err(ApiError::invalid(field, "must be in the future")),
        other => Ok(other),
    }
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (as `/32` or `/128`), in
/// canonical form.
pub fn cidr(field: &str, value: &str) -> ApiResult<IpNet> {
    let value = value.trim();
    let net = value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| ApiError::invalid(field, format!("{value:?} is not a CIDR or IP address")))?;
    // `::ffff:a.b.c.d` is stored as the IPv4 address it is, as the proxy compares it.
    Ok(proxy::routes::canonical_net(net.trunc()))
}

/// A path pattern the proxy accepts ([`PathGlob::parse`]).
pub fn path_glob(field: &str, value: &str) -> ApiResult<String> {
    PathGlob::parse(value)
        .map(|glob| glob.as_str().to_owned())
        .map_err(|error| ApiError::invalid(field, error.to_string()))
}

/// A list of HTTP methods ([`MethodSet::parse`]); empty means any method.
pub fn methods(field: &str, methods: &[String]) -> ApiResult<Vec<String>> {
    let joined = methods.join(",");
    MethodSet::parse(&joined).map_err(|error| ApiError::invalid(field, error.to_string()))?;
    let mut out: Vec<String> = methods
        .iter()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty() && m != "*")
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A permission name `service:action` (more `:`-separated segments are allowed, as in
/// `portcullis:keys:read`); segments are non-empty `[A-Za-z0-9_.-]`.
pub fn permission_name(field: &str, value: &str) -> ApiResult<String> {
    let value = value.trim();
    let segments: Vec<&str> = value.split(':').collect();
    let valid = value.len() <= MAX_TEXT
        && segments.len() >= 2
        && segments.iter().all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if !valid {
        return Err(ApiError::invalid(
            field,
            format!("{value:?} is not of the form service:action"),
        ));
    }
    Ok(value.to_owned())
}

/// A JSON object of at most [`MAX_METADATA_BYTES`]; `None` becomes `{}`.
pub fn metadata(field: &str, value: Option<Value>) -> ApiResult<Value> {
    let value = value.unwrap_or_else(|| Value::Object(Default::default()));
    if !value.is_object() {
        return Err(ApiError::invalid(field, "must be a JSON object"));
    }
    if value.to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_METADATA_BYTES} bytes"),
        ));
    }
    Ok(value)
}

/// Longest Secrets Manager secret id accepted (an ARN or name; AWS allows 2048).
pub const MAX_SECRET_ID: usize = 2048;

/// A required Secrets Manager secret id (name or ARN): non-blank, at most [`MAX_SECRET_ID`]
/// characters, no control characters; trimmed.
pub fn secret_id(field: &str, value: &str) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    bounded(field, value, MAX_SECRET_ID)?;
    Ok(value.to_owned())
}

/// A positive integer within `1..=max`.
pub fn positive(field: &str, value: i64, max: i64) -> ApiResult<i64> {
    if value < 1 || value > max {
        return Err(ApiError::invalid(
            field,
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: ApiResult<impl std::fmt::Debug>) -> String {
        match result {
            Err(ApiError::BadUserInput { field, .. }) => field,
            other => format!("unexpected {other:?}"),
        }
    }

    #[test]
    fn failures_name_the_field() {
        assert_eq!(field(text("input.name", " ")), "input.name");
        assert_eq!(field(text("input.name", &"x".repeat(257))), "input.name");
        assert!(text("input.name", &"x".repeat(256)).is_ok());
        assert_eq!(field(cidr("input.cidr", "10.0.0.0/33")), "input.cidr");
        assert_eq!(field(path_glob("p", "/a*b")), "p");
        assert_eq!(field(methods("m", &["get".into()])), "m");
        assert_eq!(field(permission_name("n", "nocolon")), "n");
        assert_eq!(field(permission_name("n", "a::b")), "n");
        assert_eq!(field(metadata("md", Some(Value::Bool(true)))), "md");
        assert_eq!(field(secret_id("s", " ")), "s");
        assert_eq!(field(secret_id("s", "a\nb")), "s");
        assert_eq!(field(secret_id("s", &"x".repeat(2049))), "s");
        assert!(secret_id("s", &"x".repeat(2048)).is_ok());
    }

    #[test]
    fn good_values_are_canonicalised() {
        assert_eq!(
            cidr("c", "10.1.2.3/8").map(|n| n.to_string()).ok(),
            Some("10.0.0.0/8".into())
        );
        assert_eq!(
            cidr("c", "192.0.2.1").map(|n| n.to_string()).ok(),
            Some("192.0.2.1/32".into())
        );
        assert_eq!(
            methods("m", &["POST".into(), "GET".into(), "GET".into()]).ok(),
            Some(vec!["GET".into(), "POST".into()])
        );
        assert!(permission_name("n", "portcullis:keys:read").is_ok());
    }
}
