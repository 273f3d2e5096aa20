//! `-db` URLs. Never panics, and the password never shows in the redacted form that logs and
//! errors use:
//! - non-interference: changing only the password (the part fnlb redacts) does not change the
//!   redacted text;
//! - what a URL parser (the `url` crate, as the SQL drivers use) takes for the password lies
//!   inside the part fnlb redacts;
//! - `redact_url` never panics on anything.
#![no_main]
use fnlb::discovery::db_url::{redact_url, DbUrl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = redact_url(s);
    let url = match DbUrl::parse(s) {
        Ok(url) => url,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let redacted = url.redacted();
    assert_eq!(redacted, url.to_string());
    let (DbUrl::Postgres(stored) | DbUrl::Mysql(stored)) = &url else { return };
    let Some(pw) = url.password() else {
        if let Ok(parsed) = url::Url::parse(stored) {
            assert!(parsed.password().is_none_or(str::is_empty), "{stored:?}: a password fnlb does not see");
        }
        return;
    };
    let start = pw.as_ptr() as usize - stored.as_ptr() as usize;
    let range = start..start + pw.len();

    if let Ok(parsed) = url::Url::parse(stored) {
        if let Some(theirs) = parsed.password() {
            // The parser gives its own serialization (it percent-encodes `@`, spaces, non-ASCII,
            // and drops tabs and newlines anywhere, as WHATWG URL parsing does); compare what
            // both stand for.
            let theirs_raw = percent_decode(theirs);
            let ours_raw = percent_decode(&pw.replace(['\t', '\n', '\r'], ""));
            assert!(
                theirs_raw.is_empty() || ours_raw.windows(theirs_raw.len()).any(|w| w == theirs_raw),
                "{stored:?}: the driver's password {theirs:?} is not inside fnlb's {pw:?}"
            );
        }
    }

    // Only where the stored text is the input (the Go MySQL form is rewritten).
    if stored == s {
        let other: String = pw.chars().map(|c| if c == 'x' { 'y' } else { 'x' }).collect();
        let changed = format!("{}{}{}", &s[..range.start], other, &s[range.end..]);
        if let Ok(url2) = DbUrl::parse(&changed) {
            if url2.password().map(str::len) == Some(other.len()) {
                assert_eq!(url2.redacted(), redacted, "the redacted text depends on the password");
            }
        }
    }
});

/// `%XX` sequences as the bytes they stand for; anything else as is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}
