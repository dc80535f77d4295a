//! The demo upstream of `portcullis dev`: answers every request with a JSON echo of what it
//! received (method, path, query, headers), so a developer can see exactly what the proxy forwards.

use axum::{Json, Router, extract::Request};
use serde_json::{Map, Value, json};

/// A router that echoes every request as JSON.
pub fn router() -> Router {
    Router::new().fallback(echo)
}

async fn echo(request: Request) -> Json<Value> {
    let mut headers = Map::new();
    for (name, value) in request.headers() {
        let value = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            // Repeated headers become arrays so duplicates stay visible.
            Some(Value::Array(values)) => values.push(value),
            Some(existing) => *existing = Value::Array(vec![existing.clone(), value]),
            None => {
                headers.insert(name.as_str().to_owned(), value);
            }
        }
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body.len(),
    }))
}
