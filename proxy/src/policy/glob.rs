//! Path patterns and method sets that permissions match requests against.
//!
//! # Path pattern syntax (strict on purpose: a pattern that does not mean what its author
//! thinks is a hole in the policy)
//! * starts with `/`; segments are separated by single `/`;
//! * a segment is a literal, `*` (exactly one non-empty segment) or `**` (zero or more
//!   segments, anywhere in the pattern, any number of times);
//! * wildcards are whole segments: `a*b`, `*.json`, `***` are refused;
//! * literals must already be in the form [`crate::normalize::normalize_path`] produces
//!   (unreserved characters decoded, other escapes uppercase, no `.`/`..`), or they could
//!   never match a normalised path;
//! * a trailing `/` is significant after a literal (`/users/` matches `/users/` but not
//!   `/users`) and refused after a wildcard; a pattern ending in a wildcard ignores the
//!   request's trailing slash (`/users/*` matches `/users/42` and `/users/42/`);
//! * `/users/**` matches `/users` itself as well as everything below it; `/` matches only
//!   the root and `/**` matches every path.

use std::fmt;

use thiserror::Error;

use crate::normalize::{NormalizeOptions, normalize_path};

/// A compiled path pattern; see the module docs for the syntax.
#[derive(Clone, PartialEq, Eq)]
pub struct PathGlob {
    source: Box<str>,
    segments: Box<[Segment]>,
    /// Only meaningful when the last segment is a literal (or there are no segments).
    trailing_slash: bool,
}

/// Why a path pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GlobError {
    /// The pattern is empty.
    #[error("path pattern is empty")]
    Empty,
    /// The pattern does not start with `/`.
    #[error("path pattern must start with '/'")]
    MissingLeadingSlash,
    /// `//` inside the pattern; normalised paths never contain empty segments.
    #[error("path pattern contains an empty segment ('//')")]
    EmptySegment,
    /// A segment mixes `*` with other characters (`a*b`, `***`).
    #[error("wildcard segment {0:?} must be exactly '*' or '**'")]
    InvalidWildcard(String),
    /// A literal segment that normalisation would change, so no request could match it.
    #[error("literal segment {0:?} is not in normalised form")]
    NotNormalised(String),
    /// `/*/` or `/**/` at the end; the request's trailing slash is ignored after a wildcard.
    #[error("trailing '/' after a wildcard is meaningless")]
    TrailingSlashAfterWildcard,
}

/// A set of HTTP methods a permission covers; [`MethodSet::any`] matches every method.
#[derive(Clone, PartialEq, Eq)]
pub struct MethodSet {
    /// Bit per standard method (see `standard_bit`); all ones for "any".
    standard: u16,
    /// Extension methods (rare), scanned linearly.
    extension: Box<[http::Method]>,
}

/// Why a method list was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MethodSetError {
    /// A token is not a valid HTTP method.
    #[error("{0:?} is not a valid HTTP method")]
    Invalid(String),
    /// Methods are case-sensitive (RFC 9110 §9.1); `get` would never match a `GET` request,
    /// so a lowercase letter is almost certainly a typo.
    #[error("method {0:?} must be uppercase")]
    NotUppercase(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `*`
    One,
    /// `**`
    Any,
}

// === impl PathGlob ===

impl PathGlob {
    /// Parses and compiles a pattern.
    pub fn parse(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let Some(body) = pattern.strip_prefix('/') else {
            return Err(GlobError::MissingLeadingSlash);
        };
        let (body, trailing_slash) = match body.strip_suffix('/') {
            // `//`: the root pattern is `/`, with no segments to put a slash after.
            Some("") => return Err(GlobError::EmptySegment),
            Some(rest) => (rest, true),
            None => (body, false),
        };
        let mut segments = Vec::new();
        if !body.is_empty() {
            for raw in body.split('/') {
                segments.push(parse_segment(raw)?);
            }
        }
        if trailing_slash && matches!(segments.last(), Some(Segment::One | Segment::Any)) {
            return Err(GlobError::TrailingSlashAfterWildcard);
        }
        Ok(Self {
            source: pattern.into(),
            segments: segments.into_boxed_slice(),
            trailing_slash,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether a *normalised* path (see [`crate::normalize`]) matches. Allocation-free;
    /// worst case O(segments × path segments) with several `**`.
    pub fn matches(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let (body, path_trailing) = match body.strip_suffix('/') {
            Some(rest) => (rest, true),
            None => (body, false),
        };
        match self.segments.last() {
            Some(Segment::One | Segment::Any) => {}
            // Literal end (or the root pattern): the trailing slash must agree.
            _ => {
                if path_trailing != self.trailing_slash {
                    return false;
                }
            }
        }
        // `/` has zero segments, not one empty segment.
        let path_segments = PathSegments::new(body);
        match_segments(&self.segments, path_segments)
    }
}

/// Classic wildcard matching with single-star backtracking, lifted from characters to path
/// segments: `*` is `?`, `**` is `*`. Correct for any number of `**`: when a later `**`
/// is reached, backtracking into an earlier one can never produce a match the later one
/// could not.
fn match_segments(pattern: &[Segment], mut path: PathSegments<'_>) -> bool {
    let mut p = 0;
    // (pattern index after the last `**`, path position where that `**` stopped consuming)
    let mut backtrack: Option<(usize, PathSegments<'_>)> = None;
    loop {
        let mut rest = path.clone();
        match rest.next() {
            Some(segment) => {
                match pattern.get(p) {
                    Some(Segment::Any) => {
                        p += 1;
                        backtrack = Some((p, path.clone()));
                        continue;
                    }
                    Some(Segment::One) if !segment.is_empty() => {
                        p += 1;
                        path = rest;
                        continue;
                    }
                    Some(Segment::Literal(lit)) if **lit == *segment => {
                        p += 1;
                        path = rest;
                        continue;
                    }
                    _ => {}
                }
                // Mismatch: let the last `**` swallow one more segment and retry.
                let Some((after_star, mut star_path)) = backtrack.take() else {
                    return false;
                };
                if star_path.next().is_none() {
                    return false;
                }
                p = after_star;
                path = star_path.clone();
                backtrack = Some((after_star, star_path));
            }
            None => {
                // Path exhausted: only `**`s may remain.
                return pattern[p.min(pattern.len())..]
                    .iter()
                    .all(|s| matches!(s, Segment::Any));
            }
        }
    }
}

/// Allocation-free, cloneable cursor over the segments of a path body (without the leading
/// and trailing `/`). An empty body has no segments.
#[derive(Clone)]
struct PathSegments<'a> {
    rest: Option<&'a str>,
}

impl<'a> PathSegments<'a> {
    fn new(body: &'a str) -> Self {
        Self {
            rest: (!body.is_empty()).then_some(body),
        }
    }
}

impl<'a> Iterator for PathSegments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.split_once('/') {
            Some((segment, tail)) => {
                self.rest = Some(tail);
                Some(segment)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn parse_segment(raw: &str) -> Result<Segment, GlobError> {
    match raw {
        "" => Err(GlobError::EmptySegment),
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Any),
        s if s.contains('*') => Err(GlobError::InvalidWildcard(s.to_owned())),
        s => {
            // A literal must survive normalisation unchanged (as its own one-segment path);
            // `;` is accepted because the proxy may be configured to allow it.
            let as_path = format!("/{s}");
            let opts = NormalizeOptions {
                allow_semicolon_params: true,
            };
            match normalize_path(&as_path, &opts) {
                Ok(normalised) if normalised == as_path => Ok(Segment::Literal(s.into())),
                _ => Err(GlobError::NotNormalised(s.to_owned())),
            }
        }
    }
}

impl std::str::FromStr for PathGlob {
    type Err = GlobError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathGlob({:?})", self.source)
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

// === impl MethodSet ===

const ANY_METHOD: u16 = u16::MAX;

impl MethodSet {
    /// Every method.
    pub fn any() -> Self {
        Self {
            standard: ANY_METHOD,
            extension: Box::new([]),
        }
    }

    /// Exactly `methods`; an empty list means any method (the data model's convention).
    pub fn from_methods(methods: impl IntoIterator<Item = http::Method>) -> Self {
        let mut standard = 0_u16;
        let mut extension = Vec::new();
        for method in methods {
            match standard_bit(&method) {
                Some(bit) => standard |= bit,
                None if !extension.contains(&method) => extension.push(method),
                None => {}
            }
        }
        if standard == 0 && extension.is_empty() {
            return Self::any();
        }
        Self {
            standard,
            extension: extension.into_boxed_slice(),
        }
    }

    /// Parses `*`, the empty string (both: any method) or a comma-separated list such as
    /// `GET, HEAD`. Methods must be uppercase.
    pub fn parse(s: &str) -> Result<Self, MethodSetError> {
        let s = s.trim();
        if s.is_empty() || s == "*" {
            return Ok(Self::any());
        }
        let mut methods = Vec::new();
        for token in s.split(',').map(str::trim) {
            if token.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(MethodSetError::NotUppercase(token.to_owned()));
            }
            let method = http::Method::from_bytes(token.as_bytes())
                .map_err(|_| MethodSetError::Invalid(token.to_owned()))?;
            methods.push(method);
        }
        Ok(Self::from_methods(methods))
    }

    /// Whether this set matches every method.
    pub fn is_any(&self) -> bool {
        self.standard == ANY_METHOD
    }

    /// Whether `method` is in the set. Allocation-free.
    pub fn contains(&self, method: &http::Method) -> bool {
        match standard_bit(method) {
            Some(bit) => self.standard & bit != 0,
            None => self.is_any() || self.extension.contains(method),
        }
    }

    fn iter_names(&self) -> impl Iterator<Item = &str> {
        STANDARD_METHODS
            .iter()
            .filter(|(_, bit)| self.standard & bit != 0)
            .map(|(m, _)| m.as_str())
            .chain(self.extension.iter().map(http::Method::as_str))
    }
}

const STANDARD_METHODS: [(http::Method, u16); 9] = [
    (http::Method::GET, 1),
    (http::Method::HEAD, 1 << 1),
    (http::Method::POST, 1 << 2),
    (http::Method::PUT, 1 << 3),
    (http::Method::DELETE, 1 << 4),
    (http::Method::PATCH, 1 << 5),
    (http::Method::OPTIONS, 1 << 6),
    (http::Method::TRACE, 1 << 7),
    (http::Method::CONNECT, 1 << 8),
];

fn standard_bit(method: &http::Method) -> Option<u16> {
    STANDARD_METHODS
        .iter()
        .find(|(m, _)| m == method)
        .map(|&(_, bit)| bit)
}

impl Default for MethodSet {
    /// Any method.
    fn default() -> Self {
        Self::any()
    }
}

impl std::str::FromStr for MethodSet {
    type Err = MethodSetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for MethodSet {
    /// `*` or the comma-separated methods; parses back with [`MethodSet::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            return f.write_str("*");
        }
        for (i, name) in self.iter_names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl fmt::Debug for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MethodSet({self})")
    }
}

#[cfg(test)]
mod tests;
