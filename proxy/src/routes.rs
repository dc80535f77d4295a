//! The route table: host + path prefix + method → route. Part of the immutable policy snapshot.

use std::sync::Arc;

use http::Method;
use ipnet::IpNet;
use uuid::Uuid;

/// How a route accepts callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: Bearer pk_…` or `x-api-key`.
    ApiKey,
    /// An OIDC access token (JWT).
    Oidc,
    /// An incident-grant token.
    Grant,
    /// No credential required.
    Anonymous,
}

impl AuthMethod {
    /// Parses the stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "api_key" => Some(Self::ApiKey),
            "oidc" => Some(Self::Oidc),
            "grant" => Some(Self::Grant),
            "anonymous" => Some(Self::Anonymous),
            _ => None,
        }
    }
}

/// An IP rule as enforced (already parsed; expired rules are filtered at evaluation time).
#[derive(Debug, Clone)]
pub struct IpRule {
    /// Row id, for audit.
    pub id: Uuid,
    /// The network.
    pub net: IpNet,
    /// Allow or deny.
    pub allow: bool,
    /// End of validity, if temporary.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where a route's upstream credential comes from and which header carries it.
#[derive(Debug, Clone)]
pub struct UpstreamCredential {
    /// Secret id (name or ARN) in the secret store.
    pub secret_id: String,
    /// Header the value is injected into (replacing any client value).
    pub header: http::HeaderName,
}

/// One route, compiled for matching.
#[derive(Debug, Clone)]
pub struct Route {
    /// Row id.
    pub id: Uuid,
    /// Unique name (shown in audit).
    pub name: String,
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    /// Normalised prefix without trailing slash (`""` for the root).
    pub path_prefix: String,
    /// Empty = any method.
    pub methods: Vec<Method>,
    /// Scheme + authority (+ optional base path) of the upstream, without trailing slash.
    pub upstream: http::Uri,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// Accepted credentials.
    pub auth_methods: Vec<AuthMethod>,
    /// A permission every caller must hold, if set.
    pub required_permission: Option<String>,
    /// Per-route upstream timeout.
    pub timeout: Option<std::time::Duration>,
    /// Route-scoped IP rules.
    pub ip_rules: Vec<IpRule>,
    /// A credential injected into every upstream request of this route.
    pub upstream_credential: Option<UpstreamCredential>,
    /// Rate limit for callers whose key has none; `None` = the configured default.
    pub rate_limit: Option<crate::ratelimit::Limit>,
}

impl Route {
    /// Whether `path` (normalised) is under this route's prefix, on a segment boundary.
    fn matches_path(&self, path: &str) -> bool {
        match path.strip_prefix(self.path_prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || self.path_prefix.is_empty(),
            None => false,
        }
    }

    /// The path the upstream receives.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        let path = if self.strip_prefix {
            match path.strip_prefix(self.path_prefix.as_str()) {
                Some("") => "/",
                Some(rest) => rest,
                None => path,
            }
        } else {
            path
        };
        let base = self.upstream.path().trim_end_matches('/');
        if base.is_empty() {
            path.into()
        } else {
            format!("{base}{path}").into()
        }
    }
}

/// Routes ordered most specific first (host-bound before any-host, longer prefix first).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

/// Why no route was returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMiss {
    /// Nothing matches host and path.
    NoRoute,
}

impl RouteTable {
    /// Builds the table, ordering routes by specificity.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
                .then(a.name.cmp(&b.name))
        });
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// The most specific route for host, normalised path and method.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<Arc<Route>> {
        self.routes
            .iter()
            .find(|route| {
                route
                    .host
                    .as_deref()
                    .is_none_or(|h| host.is_some_and(|host| host.eq_ignore_ascii_case(h)))
                    && route.matches_path(path)
                    && (route.methods.is_empty() || route.methods.contains(method))
            })
            .cloned()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// `net` as the proxy compares addresses: an IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`,
/// n ≥ 96, as a dual-stack log writes an IPv4 client) becomes the IPv4 network it names.
/// Client addresses are made IPv4 before any rule sees them, so a mapped deny rule kept as
/// IPv6 would never match.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(|v4| IpNet::V4(v4.trunc()))
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// Whether `ip` may pass `rules` at `now`: any active deny that matches refuses; if there are
/// active allow rules, one of them must match. Expired rules are ignored.
pub fn ip_permitted(
    rules: &[IpRule],
    ip: std::net::IpAddr,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let active = rules
        .iter()
        .filter(|r| r.expires_at.is_none_or(|at| at > now));
    let mut has_allow = false;
    let mut allowed = false;
    for rule in active {
        let hit = rule.net.contains(&ip);
        if rule.allow {
            has_allow = true;
            allowed |= hit;
        } else if hit {
            return false;
        }
    }
    !has_allow || allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, prefix: &str, upstream: &str, strip: bool) -> Route {
        Route {
            id: Uuid::nil(),
            name: name.into(),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            methods: vec![],
            upstream: upstream.parse().unwrap_or_default(),
            strip_prefix: strip,
            auth_methods: vec![AuthMethod::ApiKey],
            required_permission: None,
            timeout: None,
            ip_rules: vec![],
            upstream_credential: None,
            rate_limit: None,
        }
    }

    #[test]
    fn prefix_matches_on_segment_boundaries_only() {
        let table = RouteTable::new(vec![route("a", None, "/demo", "http://u", false)]);
        assert!(table.find(None, "/demo", &Method::GET).is_some());
        assert!(table.find(None, "/demo/x", &Method::GET).is_some());
        assert!(table.find(None, "/demox", &Method::GET).is_none());
        assert!(table.find(None, "/", &Method::GET).is_none());
    }

    #[test]
    fn the_most_specific_route_wins() {
        let table = RouteTable::new(vec![
            route("root", None, "", "http://root", false),
            route("api", None, "/api", "http://api", false),
            route("api-v2", None, "/api/v2", "http://v2", false),
            route("host", Some("admin.example"), "/api", "http://admin", false),
        ]);
        let name = |host, path| table.find(host, path, &Method::GET).map(|r| r.name.clone());
        assert_eq!(name(None, "/api/v2/x").as_deref(), Some("api-v2"));
        assert_eq!(name(None, "/api/v1").as_deref(), Some("api"));
        assert_eq!(
            name(Some("ADMIN.example"), "/api/v1").as_deref(),
            Some("host")
        );
        assert_eq!(name(None, "/other").as_deref(), Some("root"));
    }

    #[test]
    fn strip_prefix_and_upstream_base_path_compose() {
        let r = route("a", None, "/demo", "http://u:1/base/", true);
        assert_eq!(r.upstream_path("/demo/x/y"), "/base/x/y");
        assert_eq!(r.upstream_path("/demo"), "/base/");
        let keep = route("b", None, "/demo", "http://u:1", false);
        assert_eq!(keep.upstream_path("/demo/x"), "/demo/x");
    }

    #[test]
    fn ip_rules_deny_first_then_require_an_allow_when_any_exists() {
        let now = chrono::Utc::now();
        let rule = |cidr: &str, allow: bool, expires_in: Option<i64>| IpRule {
            id: Uuid::nil(),
            net: cidr
                .parse()
                .unwrap_or_else(|_| IpNet::from(std::net::IpAddr::from([0, 0, 0, 0]))),
            allow,
            expires_at: expires_in.map(|s| now + chrono::Duration::seconds(s)),
        };
        let ip = |s: &str| {
            s.parse::<std::net::IpAddr>()
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
        };
        assert!(ip_permitted(&[], ip("10.0.0.1"), now));
        assert!(!ip_permitted(
            &[rule("10.0.0.0/8", false, None)],
            ip("10.1.2.3"),
            now
        ));
        assert!(
            ip_permitted(&[rule("10.0.0.0/8", false, Some(-1))], ip("10.1.2.3"), now),
            "expired deny ignored"
        );
        let allow_only = [rule("192.168.0.0/16", true, None)];
        assert!(ip_permitted(&allow_only, ip("192.168.1.1"), now));
        assert!(!ip_permitted(&allow_only, ip("10.0.0.1"), now));
        let v6 = [rule("2001:db8::/32", false, None)];
        assert!(!ip_permitted(&v6, ip("2001:db8::1"), now));
        assert!(ip_permitted(&v6, ip("2001:db9::1"), now));
        let both = [
            rule("10.0.0.0/8", true, None),
            rule("10.6.6.6/32", false, Some(60)),
        ];
        assert!(
            !ip_permitted(&both, ip("10.6.6.6"), now),
            "deny beats allow"
        );
    }

    #[test]
    fn methods_restrict_a_route() {
        let mut r = route("a", None, "/x", "http://u", false);
        r.methods = vec![Method::GET];
        let table = RouteTable::new(vec![r]);
        assert!(table.find(None, "/x", &Method::GET).is_some());
        assert!(table.find(None, "/x", &Method::DELETE).is_none());
    }

    #[test]
    fn ipv4_mapped_networks_are_read_as_ipv4() {
        let net = |s: &str| s.parse::<IpNet>().unwrap_or_else(|_| panic!("{s}"));
        assert_eq!(
            canonical_net(net("::ffff:203.0.113.9/128")),
            net("203.0.113.9/32")
        );
        assert_eq!(
            canonical_net(net("::ffff:10.1.0.0/112")),
            net("10.1.0.0/16")
        );
        // Too wide to be one IPv4 network, or not mapped at all: unchanged.
        assert_eq!(canonical_net(net("::ffff:0:0/95")), net("::ffff:0:0/95"));
        assert_eq!(canonical_net(net("2001:db8::/32")), net("2001:db8::/32"));
        assert_eq!(canonical_net(net("10.0.0.0/8")), net("10.0.0.0/8"));
        let mapped = IpRule {
            id: uuid::Uuid::nil(),
            net: canonical_net(net("::ffff:203.0.113.9/128")),
            allow: false,
            expires_at: None,
        };
        let client = "203.0.113.9"
            .parse()
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        assert!(!ip_permitted(&[mapped], client, chrono::Utc::now()));
    }
}
