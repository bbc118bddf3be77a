//! The connection-string parser (key=value and URI forms): never a panic, and a password
//! never shows in Debug or in an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SECRET: &str = "Zq9xSecretZq9x";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = aiopg_core::Config::parse(text);
    // A password the fuzzer cannot guess, set first so that nothing in the text can turn it
    // into part of another value: it must never be shown.
    let dsn = format!("password={SECRET} {text}");
    let shown = match aiopg_core::Config::parse(&dsn) {
        Ok(config) => format!("{config:?}"),
        Err(e) => format!("{e} {e:?}"),
    };
    assert!(!shown.contains(SECRET), "the password is shown: {shown}");
});
