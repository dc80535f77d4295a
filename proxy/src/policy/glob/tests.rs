#![expect(clippy::unwrap_used, reason = "tests")]

use http::Method;
use proptest::prelude::*;

use super::*;

fn glob(pattern: &str) -> PathGlob {
    PathGlob::parse(pattern).unwrap()
}

/// (pattern, path, matches?)
const MATCHES: &[(&str, &str, bool)] = &[
    // Root and literals; trailing slash is significant after a literal.
    ("/", "/", true),
    ("/", "/a", false),
    ("/users", "/users", true),
    ("/users", "/users/", false),
    ("/users/", "/users/", true),
    ("/users/", "/users", false),
    ("/users", "/Users", false),
    ("/users", "/users/42", false),
    ("/users", "/user", false),
    ("/users", "/usersx", false),
    // `*` is exactly one non-empty segment; trailing slash ignored after it.
    ("/*", "/", false),
    ("/*", "/a", true),
    ("/*", "/a/", true),
    ("/*", "/a/b", false),
    ("/users/*", "/users", false),
    ("/users/*", "/users/", false),
    ("/users/*", "/users/42", true),
    ("/users/*", "/users/42/", true),
    ("/users/*", "/users/42/keys", false),
    ("/users/*/keys", "/users/42/keys", true),
    ("/users/*/keys", "/users/42/keys/", false),
    ("/users/*/keys", "/users/keys", false),
    ("/users/*/keys", "/users/42/43/keys", false),
    ("/*/*", "/a/b", true),
    ("/*/*", "/a", false),
    // `**` is zero or more segments, anywhere.
    ("/**", "/", true),
    ("/**", "/a", true),
    ("/**", "/a/b/c/", true),
    ("/users/**", "/users", true),
    ("/users/**", "/users/", true),
    ("/users/**", "/users/42", true),
    ("/users/**", "/users/42/keys/7", true),
    ("/users/**", "/usersx", false),
    ("/users/**", "/admin/users", false),
    ("/**/keys", "/keys", true),
    ("/**/keys", "/a/b/keys", true),
    ("/**/keys", "/a/b/keys/x", false),
    ("/**/keys", "/a/b/keys/", false),
    ("/a/**/z", "/a/z", true),
    ("/a/**/z", "/a/b/c/z", true),
    ("/a/**/z", "/a/b/c/y", false),
    ("/a/**/z", "/a/z/z/z", true),
    // Several `**`, mixed with `*`.
    ("/**/b/**", "/b", true),
    ("/**/b/**", "/a/b/c", true),
    ("/**/b/**", "/a/c", false),
    ("/a/**/b/**/c", "/a/b/c", true),
    ("/a/**/b/**/c", "/a/x/b/y/z/c", true),
    ("/a/**/b/**/c", "/a/x/y/z/c", false),
    ("/a/**/b/**/c", "/a/b/b/c/c", true),
    ("/**/*/x", "/x", false),
    ("/**/*/x", "/a/x", true),
    ("/**/*/x", "/a/b/x", true),
    ("/*/**/*", "/a", false),
    ("/*/**/*", "/a/b", true),
    ("/*/**/*", "/a/b/c/d", true),
    // Escapes are compared verbatim (both sides are normalised).
    ("/files/a%20b", "/files/a%20b", true),
    ("/files/a%20b", "/files/a b", false),
    // Non-paths never match.
    ("/**", "", false),
    ("/**", "relative", false),
];

#[test]
fn star_and_double_star_semantics() {
    let mut failures = Vec::new();
    for &(pattern, path, expected) in MATCHES {
        if glob(pattern).matches(path) != expected {
            failures.push(format!("{pattern} vs {path}: expected {expected}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_patterns_are_refused() {
    let cases = [
        ("", GlobError::Empty),
        ("users", GlobError::MissingLeadingSlash),
        ("*", GlobError::MissingLeadingSlash),
        ("//", GlobError::EmptySegment),
        ("/a//b", GlobError::EmptySegment),
        ("/***", GlobError::InvalidWildcard("***".into())),
        ("/a*b", GlobError::InvalidWildcard("a*b".into())),
        ("/*.json", GlobError::InvalidWildcard("*.json".into())),
        ("/users*", GlobError::InvalidWildcard("users*".into())),
        ("/.", GlobError::NotNormalised(".".into())),
        ("/a/../b", GlobError::NotNormalised("..".into())),
        ("/%7euser", GlobError::NotNormalised("%7euser".into())),
        ("/a%2fb", GlobError::NotNormalised("a%2fb".into())),
        ("/a%2Fb", GlobError::NotNormalised("a%2Fb".into())),
        ("/a%20b%2a", GlobError::NotNormalised("a%20b%2a".into())),
        ("/a b", GlobError::NotNormalised("a b".into())),
        ("/..;x", GlobError::NotNormalised("..;x".into())),
        ("/users/*/", GlobError::TrailingSlashAfterWildcard),
        ("/users/**/", GlobError::TrailingSlashAfterWildcard),
    ];
    for (pattern, expected) in cases {
        assert_eq!(PathGlob::parse(pattern), Err(expected), "{pattern}");
    }
}

#[test]
fn valid_patterns_keep_their_source() {
    for pattern in ["/", "/**", "/a;v=1/*", "/a:b@c/~x", "/files/%C3%A9"] {
        let parsed: PathGlob = pattern.parse().unwrap();
        assert_eq!(parsed.as_str(), pattern);
        assert_eq!(parsed.to_string(), pattern);
    }
}

#[test]
fn method_sets() {
    let any = MethodSet::parse("*").unwrap();
    assert!(any.is_any());
    assert!(any.contains(&Method::DELETE));
    assert!(any.contains(&Method::from_bytes(b"PROPFIND").unwrap()));
    assert_eq!(MethodSet::parse("").unwrap(), any);
    assert_eq!(MethodSet::from_methods([]), any);
    assert_eq!(MethodSet::default(), any);

    let read = MethodSet::parse("GET, HEAD").unwrap();
    assert!(read.contains(&Method::GET));
    assert!(read.contains(&Method::HEAD));
    assert!(!read.contains(&Method::POST));
    assert!(!read.contains(&Method::from_bytes(b"PROPFIND").unwrap()));
    assert_eq!(read.to_string(), "GET,HEAD");

    let dav = MethodSet::parse("PROPFIND,GET").unwrap();
    assert!(dav.contains(&Method::from_bytes(b"PROPFIND").unwrap()));
    assert!(!dav.contains(&Method::from_bytes(b"MKCOL").unwrap()));
    assert_eq!(dav.to_string().parse::<MethodSet>().unwrap(), dav);

    assert_eq!(
        MethodSet::parse("get"),
        Err(MethodSetError::NotUppercase("get".into()))
    );
    assert_eq!(
        MethodSet::parse("GET,,POST"),
        Err(MethodSetError::Invalid(String::new()))
    );
    assert_eq!(
        MethodSet::parse("GE T"),
        Err(MethodSetError::Invalid("GE T".into()))
    );
}

/// Patterns over a tiny alphabet so matches are frequent.
fn pattern_segments() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(
        prop_oneof![Just("a"), Just("b"), Just("*"), Just("**")],
        0..6,
    )
}

fn path_segments() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 0..8)
}

/// Obviously-correct exponential reference matcher over segment lists.
fn reference(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.split_first(), path.split_first()) {
        (None, None) => true,
        (Some((&"**", rest)), _) => {
            reference(rest, path) || (!path.is_empty() && reference(pattern, &path[1..]))
        }
        (Some((&"*", rest)), Some((_, path_rest))) => reference(rest, path_rest),
        (Some((lit, rest)), Some((seg, path_rest))) => lit == seg && reference(rest, path_rest),
        _ => false,
    }
}

proptest! {
    #[test]
    fn matcher_agrees_with_reference(
        pattern in pattern_segments(),
        path in path_segments(),
        path_trailing in any::<bool>(),
    ) {
        let glob = glob(&format!("/{}", pattern.join("/")));
        let mut path_str = format!("/{}", path.join("/"));
        if path_trailing && !path.is_empty() {
            path_str.push('/');
        }
        // Wildcard-ended patterns ignore the trailing slash; literal ends require none here.
        let wildcard_end = matches!(pattern.last(), Some(&"*" | &"**"));
        let expected = reference(&pattern, &path)
            && (wildcard_end || !path_trailing || path.is_empty());
        prop_assert_eq!(glob.matches(&path_str), expected, "{} vs {}", glob, path_str);
    }

    #[test]
    fn parse_and_match_never_panic(pattern in any::<String>(), path in any::<String>()) {
        if let Ok(glob) = PathGlob::parse(&pattern) {
            let _ = glob.matches(&path);
        }
    }
}
