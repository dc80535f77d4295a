//! Request-target normalisation: step 1 of the request pipeline (DESIGN.md "Request pipeline").
//!
//! Every later step (routing, policy globs, audit) and the upstream itself see exactly the
//! string [`normalize_path`] returns, so the proxy and the upstream can never disagree about
//! which resource was asked for. Anything that cannot be normalised *unambiguously* is refused
//! with a [`BadTarget`] (400 `bad_request_target` at the edge) instead of being guessed at.
//!
//! The canonical form is:
//! * starts with `/`; no empty segments (`//` runs collapse to `/`);
//! * no `.` or `..` segments (resolved per RFC 3986 §5.2.4, but `..` above the root is refused,
//!   not clamped);
//! * percent-escapes of unreserved characters (`ALPHA DIGIT - . _ ~`, RFC 3986 §2.3) decoded,
//!   every other escape kept with uppercase hex (RFC 3986 §6.2.2.1);
//! * every raw byte is an RFC 3986 `pchar` or `/`;
//! * a trailing slash is kept and case is kept (paths are case-sensitive).
//!
//! Pure: no I/O, no allocation beyond the returned string.

use thiserror::Error;

/// Options for [`normalize_path`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NormalizeOptions {
    /// Accept raw `;` (RFC 3986 path parameters, e.g. `/a;v=1/b`). Off by default because
    /// servlet containers strip `;…` before routing (`/admin;x/` is `/admin/` to them), which
    /// lets a client hide a path from a prefix match.
    pub allow_semicolon_params: bool,
}

/// Why a request target was refused. Every variant maps to 400 `bad_request_target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadTarget {
    /// The path does not start with `/` (or is empty).
    #[error("request path must start with '/'")]
    MissingLeadingSlash,
    /// `%2F` would turn a segment into two for any server that decodes before splitting.
    #[error("encoded '/' (%2F) in request path")]
    EncodedSlash,
    /// `%5C` is a path separator for some servers (IIS, Windows file systems).
    #[error("encoded '\\' (%5C) in request path")]
    EncodedBackslash,
    /// A raw `\` is a path separator for some servers.
    #[error("backslash in request path")]
    Backslash,
    /// `%00` or a raw NUL truncates strings in C-based upstreams.
    #[error("NUL byte in request path")]
    Nul,
    /// A raw or encoded control character (0x01–0x1F, 0x7F).
    #[error("control character in request path")]
    ControlCharacter,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-escape in request path")]
    MalformedEscape,
    /// Escapes decode to an overlong UTF-8 encoding (`%C0%AF` is a disguised `/`).
    #[error("overlong UTF-8 encoding in request path")]
    OverlongUtf8,
    /// Escapes decode to bytes that are not valid UTF-8.
    #[error("percent-escapes decode to invalid UTF-8")]
    InvalidUtf8,
    /// A raw byte ≥ 0x80; clients must percent-encode non-ASCII.
    #[error("raw non-ASCII byte in request path")]
    NonAscii,
    /// A raw space.
    #[error("whitespace in request path")]
    Whitespace,
    /// A raw ASCII character RFC 3986 does not allow in a path (`"`, `<`, `{`, `#`, `?`, …).
    #[error("character {0:?} is not allowed unencoded in a request path")]
    IllegalCharacter(char),
    /// A raw `;` while [`NormalizeOptions::allow_semicolon_params`] is off.
    #[error("';' path parameters are not allowed")]
    SemicolonParam,
    /// A segment like `..;x` or `.;x`: plain data per RFC 3986, but a dot segment to servers
    /// that strip path parameters first (the classic Tomcat `/..;/` bypass).
    #[error("dot segment with path parameters in request path")]
    DotSegmentWithParams,
    /// `..` would climb above `/`.
    #[error("'..' climbs above the root")]
    AboveRoot,
    /// The asterisk-form target `*` (only meaningful for `OPTIONS` to the server itself).
    #[error("asterisk-form request target is not allowed")]
    AsteriskForm,
    /// The authority-form target (`host:port`, used by `CONNECT`).
    #[error("authority-form request target is not allowed")]
    AuthorityForm,
    /// An absolute-form target for a host this proxy was not addressed as.
    #[error("absolute-form request target names a different host")]
    ForeignHost,
    /// An absolute-form target carrying `user@` credentials.
    #[error("userinfo in request target is not allowed")]
    UserInfo,
    /// An absolute-form target whose scheme is neither `http` nor `https`.
    #[error("unsupported scheme in request target")]
    UnsupportedScheme,
    /// A `Host` that is not `host[:port]` (empty, a path, user info, a bad port): the upstream
    /// would get it as `X-Forwarded-Host` and might build links from it.
    #[error("Host (or :authority) is not a valid host[:port]")]
    BadHost,
    /// The target, once joined to the route's upstream path, is longer than a URI may be
    /// (64 KiB).
    #[error("request target too long for the upstream")]
    TooLong,
}

/// Checks a `Host` header value (or an HTTP/2 `:authority`): a DNS-style name (letters,
/// digits, `-`, `.`, `_`), an IPv4 address, or a bracketed IPv6 address, then optionally `:`
/// and a port of digits. Nothing else: commas (which frameworks split `X-Forwarded-Host` on),
/// user info, paths, or a port that is not a number.
pub fn check_host(host: &str) -> Result<(), BadTarget> {
    let (name_ok, port) = if let Some(bracketed) = host.strip_prefix('[') {
        let Some((address, rest)) = bracketed.split_once(']') else {
            return Err(BadTarget::BadHost);
        };
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or(BadTarget::BadHost)?),
        };
        (address.parse::<std::net::Ipv6Addr>().is_ok(), port)
    } else {
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        (name_ok, port)
    };
    let port_ok = port.is_none_or(|port| parse_port(port).is_some());
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(BadTarget::BadHost)
    }
}

/// Normalises the path component of a request target (no query, exactly as received) into
/// the canonical form described in the module docs, or refuses it.
///
/// `%2E%2E` decodes to `..` *before* dot-segment resolution, so it is resolved (or refused)
/// exactly like a literal `..`.
pub fn normalize_path(raw: &str, opts: &NormalizeOptions) -> Result<String, BadTarget> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadTarget::MissingLeadingSlash);
    }

    // Pass 1: validate every byte and decode unreserved escapes into `decoded`.
    let mut decoded = String::with_capacity(raw.len());
    // Bytes ≥ 0x80 that escapes decode to, in order; checked as UTF-8 after the scan.
    // Raw bytes are all ASCII by then, so only escape runs can form multi-byte sequences.
    let mut high_run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&h), Some(&l)) => match (hex_value(h), hex_value(l)) {
                    (Some(h), Some(l)) => (h << 4) | l,
                    _ => return Err(BadTarget::MalformedEscape),
                },
                _ => return Err(BadTarget::MalformedEscape),
            };
            i += 3;
            if value >= 0x80 {
                high_run.push(value);
            } else {
                check_utf8_run(&mut high_run)?;
            }
            match value {
                0 => return Err(BadTarget::Nul),
                0x01..=0x1F | 0x7F => return Err(BadTarget::ControlCharacter),
                b'/' => return Err(BadTarget::EncodedSlash),
                b'\\' => return Err(BadTarget::EncodedBackslash),
                v if is_unreserved(v) => decoded.push(char::from(v)),
                v => push_escape(&mut decoded, v),
            }
            continue;
        }
        check_utf8_run(&mut high_run)?;
        match b {
            0 => return Err(BadTarget::Nul),
            0x01..=0x1F | 0x7F => return Err(BadTarget::ControlCharacter),
            b' ' => return Err(BadTarget::Whitespace),
            b'\\' => return Err(BadTarget::Backslash),
            0x80..=0xFF => return Err(BadTarget::NonAscii),
            b';' if !opts.allow_semicolon_params => return Err(BadTarget::SemicolonParam),
            b'/' => decoded.push('/'),
            b if is_pchar(b) => decoded.push(char::from(b)),
            b => return Err(BadTarget::IllegalCharacter(char::from(b))),
        }
        i += 1;
    }
    check_utf8_run(&mut high_run)?;

    // Pass 2: resolve dot segments and collapse empty segments (RFC 3986 §5.2.4, except
    // that `..` at the root is an error). Collapsing happens first, so `/a//..` is `/`.
    let mut out = String::with_capacity(decoded.len());
    // Byte offsets in `out` where each kept segment's leading '/' starts, for popping on `..`.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    // `decoded` starts with '/', so the first split item is the empty string before it.
    for segment in decoded.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                let start = starts.pop().ok_or(BadTarget::AboveRoot)?;
                out.truncate(start);
                trailing_slash = true;
            }
            s => {
                if opts.allow_semicolon_params && matches!(s.split(';').next(), Some("." | "..")) {
                    return Err(BadTarget::DotSegmentWithParams);
                }
                starts.push(out.len());
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Splits a request target into its normalised path (default [`NormalizeOptions`]) and raw
/// query, refusing the target forms a reverse proxy must not serve (RFC 9112 §3.2):
/// asterisk-form, authority-form, and absolute-form naming another host.
///
/// `expected_host` is the host (optionally `host:port`) this request was addressed to,
/// usually the `Host` header. Absolute-form targets (every HTTP/2 request carries one) must
/// name the same host, compared case-insensitively; when `expected_host` has no port the
/// target may only use the scheme's default port. With `None` there is nothing to compare
/// against and any `http`/`https` authority is accepted; the caller must then route on the
/// URI's authority, never on a `Host` header.
pub fn split_target(
    uri: &http::Uri,
    expected_host: Option<&str>,
) -> Result<(String, Option<String>), BadTarget> {
    split_target_with(uri, expected_host, &NormalizeOptions::default())
}

/// [`split_target`] with explicit [`NormalizeOptions`].
pub fn split_target_with(
    uri: &http::Uri,
    expected_host: Option<&str>,
    opts: &NormalizeOptions,
) -> Result<(String, Option<String>), BadTarget> {
    check_target_form(uri, expected_host)?;
    let path = normalize_path(uri.path(), opts)?;
    Ok((path, uri.query().map(str::to_owned)))
}

fn check_target_form(uri: &http::Uri, expected_host: Option<&str>) -> Result<(), BadTarget> {
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path() == "*" {
        return Err(BadTarget::AsteriskForm);
    }
    let Some(authority) = uri.authority() else {
        return Ok(());
    };
    let Some(scheme) = uri.scheme() else {
        return Err(BadTarget::AuthorityForm);
    };
    let default_port = match scheme.as_str() {
        s if s.eq_ignore_ascii_case("http") => 80,
        s if s.eq_ignore_ascii_case("https") => 443,
        _ => return Err(BadTarget::UnsupportedScheme),
    };
    if authority.as_str().contains('@') {
        return Err(BadTarget::UserInfo);
    }
    if let Some(expected) = expected_host {
        let (expected_name, expected_port) = split_host_port(expected);
        let same_host = authority.host().eq_ignore_ascii_case(expected_name);
        let port = authority.port_u16().unwrap_or(default_port);
        let same_port = port == expected_port.unwrap_or(default_port);
        if !(same_host && same_port) {
            return Err(BadTarget::ForeignHost);
        }
    }
    Ok(())
}

/// Splits `host[:port]` / `[v6]:port`; a suffix that is not a valid port stays in the host
/// (so it can only fail the comparison, never widen it).
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    let port_sep = if s.starts_with('[') {
        s.find(']')
            .and_then(|end| s[end + 1..].starts_with(':').then_some(end + 1))
    } else {
        s.rfind(':')
    };
    match port_sep {
        Some(idx) => match parse_port(&s[idx + 1..]) {
            Some(port) => (&s[..idx], Some(port)),
            None => (s, None),
        },
        None => (s, None),
    }
}

/// A port as `Host` may carry it: 1–5 ASCII digits within `u16`. `u16::from_str` alone would
/// also take a leading `+`.
fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Validates the high bytes collected from one run of consecutive escapes, then clears it.
fn check_utf8_run(run: &mut Vec<u8>) -> Result<(), BadTarget> {
    if run.is_empty() {
        return Ok(());
    }
    let result = match std::str::from_utf8(run) {
        Ok(_) => Ok(()),
        Err(_) if is_overlong(run) => Err(BadTarget::OverlongUtf8),
        Err(_) => Err(BadTarget::InvalidUtf8),
    };
    run.clear();
    result
}

/// Overlong lead bytes per RFC 3629 §4: C0/C1, E0 followed by 80–9F, F0 followed by 80–8F.
fn is_overlong(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| {
        matches!(
            (w[0], w[1]),
            (0xC0 | 0xC1, 0x80..=0xBF) | (0xE0, 0x80..=0x9F) | (0xF0, 0x80..=0x8F)
        )
    }) || matches!(bytes.last(), Some(0xC0 | 0xC1))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(v >> 4)]));
    out.push(char::from(HEX[usize::from(v & 0x0F)]));
}

/// RFC 3986 §2.3 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §3.3 `pchar` minus `pct-encoded` (handled separately).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

#[cfg(test)]
mod tests;
