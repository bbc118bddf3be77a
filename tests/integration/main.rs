//! Integration tests against a real PostgreSQL, run once per runtime by
//! `cargo xtask test-all-runtimes`.

mod support;

mod connect;
mod failure;
mod pipeline;
mod query;
