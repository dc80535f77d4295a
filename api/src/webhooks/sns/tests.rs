//! Unit tests of the SNS webhook.
