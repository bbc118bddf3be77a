//! The password-file parser: any bytes, looked up for a fixed connection, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for host in ["localhost", "db.example", "/var/run/postgresql", ""] {
        let _ = aiopg_core::config::fuzz_pgpass_lookup(data, host, 5432, "app", "alice");
    }
});
