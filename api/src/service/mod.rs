//! Business operations shared by GraphQL resolvers, webhooks and jobs. Services own transactions.

pub mod feed;
