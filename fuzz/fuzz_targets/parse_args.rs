//! The whole command line: Go-style argument rewriting, clap, and every flag's validation, on
//! arbitrary arguments (NUL-separated in the input; any bytes, not only UTF-8). Never panics;
//! rewriting keeps one argument per argument and changes at most a leading dash; an error is
//! exit code 2 with one line; help and version are code 0.
#![no_main]
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use fnlb::config::{parse_args, rewrite_go_args};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut args = vec![OsString::from("fnlb")];
    args.extend(data.split(|b| *b == 0).take(64).map(|a| OsString::from_vec(a.to_vec())));

    let rewritten = rewrite_go_args(args.clone());
    assert_eq!(rewritten.len(), args.len(), "rewriting added or dropped arguments");
    for (before, after) in args.iter().zip(&rewritten) {
        let (b, a) = (before.as_bytes(), after.as_bytes());
        assert!(a == b || (a.len() == b.len() + 1 && a[0] == b'-' && &a[1..] == b), "{before:?} became {after:?}");
    }

    match parse_args(args) {
        Ok(_) => {}
        Err(e) if e.code == 0 => assert!(e.stdout, "help/version not on stdout"),
        Err(e) => {
            assert_eq!(e.code, 2, "{e:?}");
            assert!(!e.message.trim_end().contains('\n'), "multi-line error: {}", e.message);
        }
    }
});
