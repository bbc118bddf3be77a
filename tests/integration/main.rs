//! Integration tests against a real PostgreSQL, run once per runtime by
//! `cargo xtask test-all-runtimes`.

mod support;
mod tls_fake;

mod connect;
mod copy;
mod cursor;
mod driver;
mod engine;
mod failover;
mod failure;
mod fault_proxy;
mod faults;
mod from_row;
mod hostile_server;
mod hosts;
mod matrix;
mod metrics;
mod mogrify;
mod notify;
mod pgbouncer;
mod pipeline;
mod pipelined_tx;
mod pool;
mod pool_faults;
mod pool_handout;
mod query;
#[cfg(feature = "sa")]
mod sa;
mod spans;
mod tls;
mod transaction;
mod types;
