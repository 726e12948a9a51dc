//! Acceptance tests of the consumer against the real stack (`scripts/stack up`): the broker,
//! PostgreSQL, Redis and the SMTP sink. Every test has its own database, topics and groups.
//!
//! One test binary (modules below) so the suite links once.
//!
//! Test producers send one record per batch (`linger.ms=0`, `batch.num.messages=1`): the
//! broker's high watermark, which `consumer_lag` reads, is only right that way.
#![allow(clippy::unwrap_used)]

mod batch;
mod cache_refresh;
mod crash;
mod dedup;
mod dlq;
mod groups;
mod ordering;
mod secured_kafka;
mod spans;
mod startup;
mod support;
mod tls;
