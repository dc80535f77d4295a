#![expect(clippy::unwrap_used, reason = "tests")]

use proptest::prelude::*;

use super::*;

use BadTarget as E;

const DEFAULT: NormalizeOptions = NormalizeOptions {
    allow_semicolon_params: false,
};
const SEMICOLONS: NormalizeOptions = NormalizeOptions {
    allow_semicolon_params: true,
};

/// Raw path → exact expected result, with default options.
const CORPUS: &[(&str, Result<&str, BadTarget>)] = &[
    // Plain and canonical paths are unchanged.
    ("/", Ok("/")),
    ("/users", Ok("/users")),
    ("/users/", Ok("/users/")),
    ("/Users/Alice", Ok("/Users/Alice")),
    ("/a/b/c", Ok("/a/b/c")),
    ("/a:b@c!$&'()*+,=", Ok("/a:b@c!$&'()*+,=")),
    ("/v1/items/~me_1-2.3", Ok("/v1/items/~me_1-2.3")),
    // Double slashes collapse; trailing slash is kept.
    ("//", Ok("/")),
    ("//admin", Ok("/admin")),
    ("/a//b", Ok("/a/b")),
    ("/a///b//", Ok("/a/b/")),
    // Dot segments (RFC 3986 §5.2.4).
    ("/.", Ok("/")),
    ("/./", Ok("/")),
    ("/a/.", Ok("/a/")),
    ("/a/./b", Ok("/a/b")),
    ("/a/..", Ok("/")),
    ("/a/../", Ok("/")),
    ("/a/b/..", Ok("/a/")),
    ("/a/b/../c", Ok("/a/c")),
    ("/a/b/../../c", Ok("/c")),
    ("/public/../admin", Ok("/admin")),
    ("/a//..", Ok("/")),
    ("/a/.../b", Ok("/a/.../b")),
    ("/a/..b/.c", Ok("/a/..b/.c")),
    // `..` above the root is refused, not clamped.
    ("/..", Err(E::AboveRoot)),
    ("/../admin", Err(E::AboveRoot)),
    ("/a/../..", Err(E::AboveRoot)),
    ("/a/../../admin", Err(E::AboveRoot)),
    // Encoded dot segments are dot segments.
    ("/%2e", Ok("/")),
    ("/a/%2E%2E/admin", Ok("/admin")),
    ("/a/%2e%2e/admin", Ok("/admin")),
    ("/a/.%2E/admin", Ok("/admin")),
    ("/%2E%2E/admin", Err(E::AboveRoot)),
    ("/%2e%2e/%2e%2e/etc/passwd", Err(E::AboveRoot)),
    // Unreserved escapes are decoded; others kept, hex uppercased.
    ("/%61dmin", Ok("/admin")),
    ("/%41%5a%7E%2D%5F", Ok("/AZ~-_")),
    ("/a%20b", Ok("/a%20b")),
    ("/a%2ab", Ok("/a%2Ab")),
    ("/%25", Ok("/%25")),
    ("/%252F", Ok("/%252F")),
    ("/%3b", Ok("/%3B")),
    ("/%3F%23", Ok("/%3F%23")),
    ("/caf%c3%a9", Ok("/caf%C3%A9")),
    ("/%E2%82%AC", Ok("/%E2%82%AC")),
    ("/%F0%9F%98%80", Ok("/%F0%9F%98%80")),
    // Encoded separators.
    ("/a%2Fb", Err(E::EncodedSlash)),
    ("/a%2fb", Err(E::EncodedSlash)),
    ("/%2F", Err(E::EncodedSlash)),
    ("/..%2Fadmin", Err(E::EncodedSlash)),
    ("/a%5Cb", Err(E::EncodedBackslash)),
    ("/a%5cb", Err(E::EncodedBackslash)),
    ("/a\\b", Err(E::Backslash)),
    ("/..\\admin", Err(E::Backslash)),
    // NUL and control characters.
    ("/a%00", Err(E::Nul)),
    ("/a%00.json", Err(E::Nul)),
    ("/a\0b", Err(E::Nul)),
    ("/a%0Ab", Err(E::ControlCharacter)),
    ("/a%0d%0aSet-Cookie:x", Err(E::ControlCharacter)),
    ("/a%7F", Err(E::ControlCharacter)),
    ("/a\tb", Err(E::ControlCharacter)),
    ("/a\x7fb", Err(E::ControlCharacter)),
    // Malformed escapes.
    ("/%", Err(E::MalformedEscape)),
    ("/a%", Err(E::MalformedEscape)),
    ("/%4", Err(E::MalformedEscape)),
    ("/%G1", Err(E::MalformedEscape)),
    ("/%1G", Err(E::MalformedEscape)),
    ("/%%41", Err(E::MalformedEscape)),
    // Invalid and overlong UTF-8.
    ("/%C0%AF", Err(E::OverlongUtf8)),
    ("/%c0%ae%c0%ae/admin", Err(E::OverlongUtf8)),
    ("/%E0%80%AF", Err(E::OverlongUtf8)),
    ("/%F0%80%80%AF", Err(E::OverlongUtf8)),
    ("/%C1%9C", Err(E::OverlongUtf8)),
    ("/%C0", Err(E::OverlongUtf8)),
    ("/%FF", Err(E::InvalidUtf8)),
    ("/%C3", Err(E::InvalidUtf8)),
    ("/%C3a", Err(E::InvalidUtf8)),
    ("/%C3/%A9", Err(E::InvalidUtf8)),
    ("/%A9", Err(E::InvalidUtf8)),
    ("/%ED%A0%80", Err(E::InvalidUtf8)),
    // Raw non-ASCII, whitespace and other characters outside `pchar`.
    ("/café", Err(E::NonAscii)),
    ("/a b", Err(E::Whitespace)),
    ("/a\"b", Err(E::IllegalCharacter('"'))),
    ("/a<b>", Err(E::IllegalCharacter('<'))),
    ("/a{b}", Err(E::IllegalCharacter('{'))),
    ("/a|b", Err(E::IllegalCharacter('|'))),
    ("/a?b", Err(E::IllegalCharacter('?'))),
    ("/a#b", Err(E::IllegalCharacter('#'))),
    ("/a[0]", Err(E::IllegalCharacter('['))),
    // Path parameters are refused by default.
    ("/admin;x/", Err(E::SemicolonParam)),
    ("/a/..;/admin", Err(E::SemicolonParam)),
    ("/a;jsessionid=1", Err(E::SemicolonParam)),
    // Not origin-form paths.
    ("", Err(E::MissingLeadingSlash)),
    ("admin", Err(E::MissingLeadingSlash)),
    ("*", Err(E::MissingLeadingSlash)),
    ("%2Fadmin", Err(E::MissingLeadingSlash)),
];

#[test]
fn corpus_normalises_to_exact_results() {
    assert!(CORPUS.len() >= 50);
    let mut failures = Vec::new();
    for &(raw, expected) in CORPUS {
        let got = normalize_path(raw, &DEFAULT);
        if got.as_deref().map_err(|e| *e) != expected {
            failures.push(format!("{raw:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_outputs_are_fixed_points() {
    for &(raw, expected) in CORPUS {
        if let Ok(path) = expected {
            assert_eq!(
                normalize_path(path, &DEFAULT).as_deref(),
                Ok(path),
                "{raw:?}"
            );
        }
    }
}

#[test]
fn semicolons_are_kept_when_allowed() {
    assert_eq!(normalize_path("/a;v=1/b", &SEMICOLONS).unwrap(), "/a;v=1/b");
    assert_eq!(
        normalize_path("/a/b;x/../c;y", &SEMICOLONS).unwrap(),
        "/a/c;y"
    );
}

#[test]
fn dot_segments_with_params_are_refused_even_when_semicolons_are_allowed() {
    for raw in ["/a/..;/admin", "/a/.;x/b", "/a/%2E%2E;/admin", "/..;"] {
        assert_eq!(
            normalize_path(raw, &SEMICOLONS),
            Err(E::DotSegmentWithParams),
            "{raw}"
        );
    }
}

#[test]
fn every_error_has_a_message() {
    for &(_, expected) in CORPUS {
        if let Err(e) = expected {
            assert!(!e.to_string().is_empty());
        }
    }
}

fn split(target: &str, host: Option<&str>) -> Result<(String, Option<String>), BadTarget> {
    let uri: http::Uri = target.parse().unwrap();
    split_target(&uri, host)
}

#[test]
fn origin_form_is_split_and_normalised() {
    assert_eq!(
        split("/a/./b/%7euser?x=%2F&y", Some("api.example.com")),
        Ok(("/a/b/~user".to_owned(), Some("x=%2F&y".to_owned())))
    );
    assert_eq!(split("/a", None), Ok(("/a".to_owned(), None)));
    assert_eq!(split("/a%2Fb?q", None), Err(E::EncodedSlash));
}

#[test]
fn absolute_form_for_the_expected_host_is_accepted() {
    let ok = |target, host| split(target, host).map(|(p, _)| p);
    assert_eq!(
        ok("http://api.example.com/a", Some("api.example.com")),
        Ok("/a".into())
    );
    assert_eq!(
        ok("https://API.example.com/a", Some("api.example.com")),
        Ok("/a".into())
    );
    assert_eq!(
        ok("http://api.example.com:80/a", Some("api.example.com")),
        Ok("/a".into())
    );
    assert_eq!(
        ok(
            "https://api.example.com:8443/a",
            Some("api.example.com:8443")
        ),
        Ok("/a".into())
    );
    assert_eq!(
        ok("http://[::1]:8080/a", Some("[::1]:8080")),
        Ok("/a".into())
    );
    assert_eq!(
        ok("http://api.example.com", Some("api.example.com")),
        Ok("/".into())
    );
    assert_eq!(ok("http://anything.example/a", None), Ok("/a".into()));
}

#[test]
fn absolute_form_for_another_host_is_refused() {
    let cases = [
        (
            "http://evil.example/a",
            Some("api.example.com"),
            E::ForeignHost,
        ),
        (
            "http://api.example.com:8080/a",
            Some("api.example.com"),
            E::ForeignHost,
        ),
        (
            "https://api.example.com/a",
            Some("api.example.com:8443"),
            E::ForeignHost,
        ),
        (
            "http://api.example.com.evil/a",
            Some("api.example.com"),
            E::ForeignHost,
        ),
        ("http://[::2]:8080/a", Some("[::1]:8080"), E::ForeignHost),
        (
            "http://user@api.example.com/a",
            Some("api.example.com"),
            E::UserInfo,
        ),
        (
            "ftp://api.example.com/a",
            Some("api.example.com"),
            E::UnsupportedScheme,
        ),
    ];
    for (target, host, expected) in cases {
        assert_eq!(split(target, host), Err(expected), "{target}");
    }
}

#[test]
fn asterisk_and_authority_forms_are_refused() {
    assert_eq!(split("*", None), Err(E::AsteriskForm));
    assert_eq!(split("api.example.com:443", None), Err(E::AuthorityForm));
}

#[test]
fn split_target_with_honours_options() {
    let uri: http::Uri = "/a;v=1".parse().unwrap();
    assert_eq!(split_target(&uri, None), Err(E::SemicolonParam));
    assert_eq!(
        split_target_with(&uri, None, &SEMICOLONS),
        Ok(("/a;v=1".to_owned(), None))
    );
}

/// Paths built from the characters that make normalisation interesting.
fn raw_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("/./".to_owned()),
        Just("/../".to_owned()),
        Just(";".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%41".to_owned()),
        Just("%7e".to_owned()),
        Just("%c3%a9".to_owned()),
        Just("%20".to_owned()),
        Just("%25".to_owned()),
        Just("%00".to_owned()),
        "[a-zA-Z0-9._~-]{1,4}",
        "%[0-9a-fA-F]{2}",
        "[\\x00-\\x7f]",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|parts| format!("/{}", parts.concat()))
}

fn assert_canonical(out: &str) {
    assert!(out.starts_with('/'), "{out:?}");
    for bad in ["//", "/./", "/../", "%2F", "%00"] {
        assert!(!out.contains(bad), "{out:?} contains {bad:?}");
    }
    assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{out:?}");
}

proptest! {
    #[test]
    fn normalisation_is_idempotent_and_canonical(raw in raw_path(), semis in any::<bool>()) {
        let opts = NormalizeOptions { allow_semicolon_params: semis };
        if let Ok(once) = normalize_path(&raw, &opts) {
            assert_canonical(&once);
            let again = normalize_path(&once, &opts);
            prop_assert_eq!(again.as_deref(), Ok(once.as_str()));
        }
    }

    #[test]
    fn arbitrary_input_never_panics(raw in any::<String>()) {
        if let Ok(out) = normalize_path(&raw, &DEFAULT) {
            assert_canonical(&out);
            let again = normalize_path(&out, &DEFAULT);
            prop_assert_eq!(again.as_deref(), Ok(out.as_str()));
        }
    }

    #[test]
    fn arbitrary_slash_prefixed_input_never_panics(tail in any::<String>()) {
        let raw = format!("/{tail}");
        if let Ok(out) = normalize_path(&raw, &SEMICOLONS) {
            assert_canonical(&out);
            let again = normalize_path(&out, &SEMICOLONS);
            prop_assert_eq!(again.as_deref(), Ok(out.as_str()));
        }
    }
}

#[test]
fn host_headers_must_be_a_host_and_an_optional_port() {
    for good in [
        "localhost",
        "api.example:8443",
        "192.0.2.1",
        "192.0.2.1:80",
        "[2001:db8::1]",
        "[2001:db8::1]:443",
        "API.Example.",
        "xn--bcher-kva.example",
        "internal_host:8080",
    ] {
        assert_eq!(check_host(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        ":80",
        "api.example:",
        "api.example:http",
        "api.example:70000",
        "api.example:1:2",
        "2001:db8::1",
        "[2001:db8::1",
        "user@api.example",
        "api.example/path",
        "api.example?q",
        "api example",
        "api.example:+80",
        "[api.example]",
        "a[::1]",
        "good.example,evil.example",
        "api.example;x",
        "[::1]x",
        "[::1]:",
    ] {
        assert_eq!(check_host(bad), Err(BadTarget::BadHost), "{bad:?}");
    }
}

#[test]
fn split_host_port_takes_only_a_digit_port_and_keeps_anything_else_in_the_host() {
    assert_eq!(
        split_host_port("api.example:8443"),
        ("api.example", Some(8443))
    );
    assert_eq!(
        split_host_port("[2001:db8::1]:443"),
        ("[2001:db8::1]", Some(443))
    );
    assert_eq!(split_host_port("[2001:db8::1]"), ("[2001:db8::1]", None));
    // A suffix that is not a port can only make the comparison fail, never match more.
    assert_eq!(
        split_host_port("api.example:+80"),
        ("api.example:+80", None)
    );
    assert_eq!(
        split_host_port("api.example:70000"),
        ("api.example:70000", None)
    );
    assert_eq!(split_host_port("api.example:"), ("api.example:", None));
}
