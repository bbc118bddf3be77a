//! mogrify's placeholder lexer and literal writer: any SQL, with either setting of
//! standard_conforming_strings, never panics; text without a placeholder comes back as is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(sql) = std::str::from_utf8(rest) else {
        return;
    };
    let scs = flags & 1 == 1;
    let text = "it's a \\ \"test\" $1";
    let bytes: &[u8] = &[0, 255, 39];
    let params: [&(dyn aiopg_core::types::ToSql + Sync); 5] = [
        &1i32,
        &text,
        &None::<i64>,
        &bytes,
        &vec![Some(1.5f64), None],
    ];
    let n = (flags >> 1) as usize % (params.len() + 1);
    if let Ok(out) = aiopg_core::mogrify::mogrify(sql, &params[..n], scs) {
        if !sql.contains('$') {
            assert_eq!(out, sql);
        }
    }
});
