//! `portcullis worker` as an AWS Lambda function: the runtime loop around
//! [`api::lambda::handle_worker_event`], used when `AWS_LAMBDA_RUNTIME_API` is set.

use std::time::SystemTime;

use api::remediation::Engine;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;

/// Set by Lambda (and by emulators of its Runtime API) in the function's environment.
const RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";

/// `lambda_runtime` panics at start-up when one of these is missing; Lambda always sets
/// them, so their absence means a misconfigured emulator, reported as an error instead.
const REQUIRED: [&str; 3] = [
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// Whether this process runs inside Lambda (or an emulator of its Runtime API).
pub fn on_lambda() -> bool {
    std::env::var_os(RUNTIME_API).is_some()
}

/// Serves invocations until the runtime stops: Secrets Manager rotation steps and
/// EventBridge scheduled events, one at a time.
pub async fn run_worker(engine: Engine) -> anyhow::Result<()> {
    let missing: Vec<_> = REQUIRED
        .into_iter()
        .filter(|name| std::env::var_os(name).is_none())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{RUNTIME_API} is set but {} is not: not a Lambda environment",
            missing.join(", ")
        );
    }
    tracing::info!("worker running as a Lambda function (rotation steps, scheduled passes)");
    let engine = &engine;
    lambda_runtime::run(service_fn(move |event| invoke(engine, event)))
        .await
        .map_err(|error| anyhow::anyhow!("Lambda runtime failed: {error}"))
}

async fn invoke(engine: &Engine, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let (payload, context) = event.into_parts();
    // A deadline already past leaves no budget rather than failing the invocation.
    let time_left = context
        .deadline()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    api::lambda::handle_worker_event(engine, payload, time_left)
        .await
        .map_err(|error| {
            tracing::error!(request_id = %context.request_id, %error, "invocation failed");
            Diagnostic {
                error_type: error.kind().to_owned(),
                error_message: error.to_string(),
            }
        })
}
