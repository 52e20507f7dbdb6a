//! The broker's HTTP/1.1 client for AMD KDS (`broker::certsource::http`):
//! the response parser, which reads what the network sends, and the URL
//! parser for the configured KDS base URL.
//!
//! Input: the first byte picks the parser. The response parser runs with
//! small limits so that the limits themselves are reached.
//!
//! Properties: a parsed response respects the limits and its declared
//! length; a parsed URL has a host and a path that can go into a request
//! line as they are (no whitespace or control characters), and its
//! authority and path parse back to the same URL.
#![no_main]

use broker::certsource::http::{read_response, Limits, Url};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_header_bytes: 512,
    max_body_bytes: 4096,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        let mut reader = rest;
        let Ok(r) = read_response(&mut reader, LIMITS) else {
            return;
        };
        assert!((100..=599).contains(&r.status));
        assert!(r.body.len() <= LIMITS.max_body_bytes);
        if let Some(cl) = r.header("content-length") {
            if r.header("transfer-encoding").is_none() {
                let n: usize = cl
                    .split(',')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .parse()
                    .expect("checked");
                assert_eq!(r.body.len(), n);
            }
        }
        for (name, _) in &r.headers {
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(*name, name.to_ascii_lowercase());
        }
        return;
    }
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(url) = Url::parse(s) else {
        return;
    };
    let clean = |t: &str| !t.chars().any(|c| c.is_whitespace() || c.is_control());
    assert!(!url.host.is_empty());
    assert!(clean(&url.host), "host {:?}", url.host);
    assert!(clean(&url.prefix), "path {:?}", url.prefix);
    let scheme = if url.https { "https" } else { "http" };
    let again = Url::parse(&format!("{scheme}://{}{}", url.authority(), url.prefix))
        .unwrap_or_else(|e| panic!("{url:?} does not parse back: {e}"));
    assert_eq!(again, url);
});
