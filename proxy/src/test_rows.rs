//! Rows the unit tests of several modules need in a real database.

use chrono::{DateTime, Utc};
use entity::{api_key, principal};
use sea_orm::{ActiveModelTrait, DatabaseConnection};
use uuid::Uuid;

/// Inserts a service account named `prefix` and returns a key for it with lookup prefix `prefix`, not yet
/// inserted, for the caller to adjust.
pub(crate) async fn service_account_key(
    db: &DatabaseConnection,
    prefix: &str,
    now: DateTime<Utc>,
) -> api_key::ActiveModel {
    let owner = Uuid::now_v7();
    principal::ActiveModel::new_principal(
        owner,
        principal::PrincipalKind::ServiceAccount,
        prefix,
        prefix,
        now,
    )
    .insert(db)
    .await
    .expect("principal");
    api_key::ActiveModel::new_key(api_key::NewKey {
        id: Uuid::now_v7(),
        principal_id: owner,
        name: prefix,
        prefix,
        hash: "00".repeat(32),
        environment: "test",
        now,
    })
}
