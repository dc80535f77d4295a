#![expect(clippy::unwrap_used, reason = "tests")]

use std::net::IpAddr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use http::Method;
use ipnet::IpNet;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::policy::{MethodSet, PathGlob, Role};

// === fixtures ===

const fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const ALICE: PrincipalId = PrincipalId(id(1));
const DEVS: PrincipalId = PrincipalId(id(2));
const OPS: PrincipalId = PrincipalId(id(3));
const BOB: PrincipalId = PrincipalId(id(4));

const READER: RoleId = RoleId(id(10));
const WRITER: RoleId = RoleId(id(11));
const BILLING: RoleId = RoleId(id(12));
const ADMIN: RoleId = RoleId(id(13));
const MISSING: RoleId = RoleId(id(99));

const P_READ: Uuid = id(100);
const P_WRITE: Uuid = id(101);
const P_BILLING: Uuid = id(102);
const P_ADMIN: Uuid = id(103);
const P_GRANT_DEBUG: Uuid = id(104);

const BILLING_ROUTE: Uuid = id(500);
const OTHER_ROUTE: Uuid = id(501);

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn permission(id: Uuid, name: &str, methods: &str, path: &str, route: Option<Uuid>) -> Permission {
    Permission {
        id,
        name: name.to_owned(),
        methods: MethodSet::parse(methods).unwrap(),
        path: PathGlob::parse(path).unwrap(),
        route_id: route,
    }
}

fn roles() -> Roles {
    let role = |id, name: &str, permissions| Role {
        id,
        name: name.to_owned(),
        permissions,
    };
    Roles::new([
        role(
            READER,
            "reader",
            vec![permission(
                P_READ,
                "users:read",
                "GET,HEAD",
                "/users/**",
                None,
            )],
        ),
        role(
            WRITER,
            "writer",
            vec![permission(
                P_WRITE,
                "users:write",
                "POST,PUT",
                "/users/*",
                None,
            )],
        ),
        role(
            BILLING,
            "billing",
            vec![permission(
                P_BILLING,
                "billing:read",
                "GET",
                "/**",
                Some(BILLING_ROUTE),
            )],
        ),
        role(
            ADMIN,
            "admin",
            vec![permission(P_ADMIN, "admin:all", "*", "/**", None)],
        ),
    ])
}

fn binding(n: u128, principal: PrincipalId, role: RoleId) -> Binding {
    Binding {
        id: BindingId(id(n)),
        role_id: role,
        principal_id: principal,
        expires_at: None,
        cidrs: Vec::new(),
    }
}

fn expiring(mut b: Binding, expires_at: DateTime<Utc>) -> Binding {
    b.expires_at = Some(expires_at);
    b
}

fn within(mut b: Binding, cidrs: &[&str]) -> Binding {
    b.cidrs = cidrs.iter().map(|c| c.parse::<IpNet>().unwrap()).collect();
    b
}

fn grant(n: u128, role: Option<RoleId>, permissions: Vec<Permission>) -> Grant {
    Grant {
        id: GrantId(id(n)),
        principal_id: ALICE,
        role_id: role,
        permissions,
        expires_at: now() + Duration::hours(1),
        revoked: false,
    }
}

fn debug_permission() -> Permission {
    permission(P_GRANT_DEBUG, "debug:read", "GET", "/debug/**", None)
}

fn b_id(n: u128) -> BindingId {
    BindingId(id(n))
}

fn g_id(n: u128) -> GrantId {
    GrantId(id(n))
}

/// One table row: a subject (Alice, member of DEVS and OPS), a request, the expected reason.
struct Case {
    name: &'static str,
    bindings: Vec<Binding>,
    grants: Vec<Grant>,
    method: Method,
    path: &'static str,
    ip: &'static str,
    route: Option<Uuid>,
    required: Option<&'static str>,
    now: DateTime<Utc>,
    expected: Reason,
}

fn case(name: &'static str, expected: Reason) -> Case {
    Case {
        name,
        bindings: Vec::new(),
        grants: Vec::new(),
        method: Method::GET,
        path: "/users/42",
        ip: "10.0.0.1",
        route: None,
        required: None,
        now: now(),
        expected,
    }
}

impl Case {
    fn bindings(mut self, bindings: impl IntoIterator<Item = Binding>) -> Self {
        self.bindings.extend(bindings);
        self
    }
    fn grants(mut self, grants: impl IntoIterator<Item = Grant>) -> Self {
        self.grants.extend(grants);
        self
    }
    fn req(mut self, method: Method, path: &'static str) -> Self {
        self.method = method;
        self.path = path;
        self
    }
    fn ip(mut self, ip: &'static str) -> Self {
        self.ip = ip;
        self
    }
    fn route(mut self, route: Uuid) -> Self {
        self.route = Some(route);
        self
    }
    fn required(mut self, name: &'static str) -> Self {
        self.required = Some(name);
        self
    }

    fn run(&self, roles: &Roles) -> Decision {
        let client_ip: IpAddr = self.ip.parse().unwrap();
        let subject = Subject {
            principal_id: ALICE,
            group_ids: &[DEVS, OPS],
            bindings: &self.bindings,
            grants: &self.grants,
        };
        let req = RequestFacts {
            method: &self.method,
            path: self.path,
            route_id: self.route,
            client_ip,
            now: self.now,
            required_permission: self.required,
        };
        evaluate(roles, &subject, &req)
    }
}

fn allowed_by(n: u128, role: RoleId, permission: Uuid, via_group: Option<PrincipalId>) -> Reason {
    Reason::Binding {
        binding_id: b_id(n),
        role_id: role,
        permission_id: permission,
        via_group,
    }
}

fn cases() -> Vec<Case> {
    let t = now();
    vec![
        // --- allows ---
        case("own binding allows", allowed_by(20, READER, P_READ, None))
            .bindings([binding(20, ALICE, READER)]),
        case(
            "group binding allows",
            allowed_by(20, READER, P_READ, Some(DEVS)),
        )
        .bindings([binding(20, DEVS, READER)]),
        case(
            "own binding preferred over group binding",
            allowed_by(21, ADMIN, P_ADMIN, None),
        )
        .bindings([binding(20, DEVS, READER), binding(21, ALICE, ADMIN)]),
        case(
            "smallest own binding id wins",
            allowed_by(22, ADMIN, P_ADMIN, None),
        )
        .bindings([binding(23, ALICE, READER), binding(22, ALICE, ADMIN)]),
        case(
            "smallest group binding id wins",
            allowed_by(24, READER, P_READ, Some(OPS)),
        )
        .bindings([binding(25, DEVS, ADMIN), binding(24, OPS, READER)]),
        case(
            "`*` matches one segment",
            allowed_by(20, WRITER, P_WRITE, None),
        )
        .bindings([binding(20, ALICE, WRITER)])
        .req(Method::POST, "/users/42"),
        case(
            "`**` matches many segments",
            allowed_by(20, READER, P_READ, None),
        )
        .bindings([binding(20, ALICE, READER)])
        .req(Method::HEAD, "/users/42/keys/7"),
        case(
            "`**` matches zero segments",
            allowed_by(20, READER, P_READ, None),
        )
        .bindings([binding(20, ALICE, READER)])
        .req(Method::GET, "/users"),
        case(
            "binding just before expiry allows",
            allowed_by(20, READER, P_READ, None),
        )
        .bindings([expiring(
            binding(20, ALICE, READER),
            t + Duration::nanoseconds(1),
        )]),
        case(
            "IPv4 CIDR contains client",
            allowed_by(20, READER, P_READ, None),
        )
        .bindings([within(
            binding(20, ALICE, READER),
            &["192.0.2.0/24", "10.0.0.0/8"],
        )]),
        case(
            "IPv6 CIDR contains client",
            allowed_by(20, READER, P_READ, None),
        )
        .bindings([within(binding(20, ALICE, READER), &["2001:db8::/32"])])
        .ip("2001:db8::7"),
        case(
            "IPv4-mapped IPv6 client matches IPv4 CIDR",
            allowed_by(20, READER, P_READ, None),
        )
        .bindings([within(binding(20, ALICE, READER), &["10.0.0.0/8"])])
        .ip("::ffff:10.1.2.3"),
        case(
            "route-scoped permission on its route",
            allowed_by(20, BILLING, P_BILLING, None),
        )
        .bindings([binding(20, ALICE, BILLING)])
        .req(Method::GET, "/invoices/1")
        .route(BILLING_ROUTE),
        case(
            "required permission present",
            allowed_by(21, READER, P_READ, None),
        )
        // Admin's permission allows everything but has another name.
        .bindings([binding(20, ALICE, ADMIN), binding(21, ALICE, READER)])
        .required("users:read"),
        case(
            "active grant with own permission",
            Reason::Grant {
                grant_id: g_id(30),
                permission_id: P_GRANT_DEBUG,
            },
        )
        .grants([grant(30, None, vec![debug_permission()])])
        .req(Method::GET, "/debug/heap"),
        case(
            "active grant via role",
            Reason::Grant {
                grant_id: g_id(30),
                permission_id: P_WRITE,
            },
        )
        .grants([grant(30, Some(WRITER), vec![debug_permission()])])
        .req(Method::PUT, "/users/42"),
        case(
            "smallest grant id wins",
            Reason::Grant {
                grant_id: g_id(31),
                permission_id: P_GRANT_DEBUG,
            },
        )
        .grants([
            grant(32, None, vec![debug_permission()]),
            grant(31, None, vec![debug_permission()]),
        ])
        .req(Method::GET, "/debug/heap"),
        case(
            "binding preferred over grant",
            allowed_by(20, READER, P_READ, None),
        )
        .bindings([binding(20, ALICE, READER)])
        .grants([grant(30, Some(ADMIN), vec![])]),
        case(
            "group grant applies",
            Reason::Grant {
                grant_id: g_id(30),
                permission_id: P_ADMIN,
            },
        )
        .grants([Grant {
            principal_id: OPS,
            ..grant(30, Some(ADMIN), vec![])
        }]),
        // --- denials ---
        case("no bindings", Reason::NoBindings),
        case("only another principal's binding", Reason::NoBindings)
            .bindings([binding(20, BOB, ADMIN)])
            .grants([Grant {
                principal_id: BOB,
                ..grant(30, Some(ADMIN), vec![])
            }]),
        case("method not covered", Reason::NoMatchingPermission)
            .bindings([binding(20, ALICE, READER)])
            .req(Method::DELETE, "/users/42"),
        case("path not covered", Reason::NoMatchingPermission)
            .bindings([binding(20, ALICE, READER)])
            .req(Method::GET, "/admin/users/42"),
        case(
            "`*` does not match two segments",
            Reason::NoMatchingPermission,
        )
        .bindings([binding(20, ALICE, WRITER)])
        .req(Method::POST, "/users/42/keys"),
        case(
            "`*` does not match zero segments",
            Reason::NoMatchingPermission,
        )
        .bindings([binding(20, ALICE, WRITER)])
        .req(Method::POST, "/users"),
        case(
            "route-scoped permission on another route",
            Reason::NoMatchingPermission,
        )
        .bindings([binding(20, ALICE, BILLING)])
        .route(OTHER_ROUTE),
        case(
            "route-scoped permission without a route",
            Reason::NoMatchingPermission,
        )
        .bindings([binding(20, ALICE, BILLING)]),
        case("required permission absent", Reason::NoMatchingPermission)
            .bindings([binding(20, ALICE, ADMIN)])
            .required("users:read"),
        case(
            "matching binding expired",
            Reason::BindingExpired {
                binding_id: b_id(20),
            },
        )
        .bindings([expiring(
            binding(20, ALICE, READER),
            t - Duration::minutes(5),
        )]),
        case(
            "binding expiring exactly now is expired",
            Reason::BindingExpired {
                binding_id: b_id(20),
            },
        )
        .bindings([expiring(binding(20, ALICE, READER), t)]),
        case(
            "expired match beats live non-match",
            Reason::BindingExpired {
                binding_id: b_id(21),
            },
        )
        .bindings([
            binding(20, ALICE, WRITER),
            expiring(binding(21, DEVS, READER), t),
        ]),
        case(
            "only expired bindings, none matching",
            Reason::OnlyExpiredBindings,
        )
        .bindings([
            expiring(binding(20, ALICE, WRITER), t),
            expiring(binding(21, DEVS, BILLING), t),
        ]),
        case(
            "IPv4 client outside CIDR",
            Reason::CidrConditionNotMet {
                binding_id: b_id(20),
            },
        )
        .bindings([within(binding(20, ALICE, READER), &["192.0.2.0/24"])]),
        case(
            "IPv6 client outside CIDR",
            Reason::CidrConditionNotMet {
                binding_id: b_id(20),
            },
        )
        .bindings([within(binding(20, ALICE, READER), &["2001:db8::/32"])])
        .ip("2001:db9::1"),
        case(
            "IPv6 client vs IPv4-only CIDR",
            Reason::CidrConditionNotMet {
                binding_id: b_id(20),
            },
        )
        .bindings([within(binding(20, ALICE, READER), &["10.0.0.0/8"])])
        .ip("fe80::1"),
        case(
            "CIDR failure beats expiry",
            Reason::CidrConditionNotMet {
                binding_id: b_id(21),
            },
        )
        .bindings([
            expiring(binding(20, ALICE, READER), t),
            within(binding(21, ALICE, ADMIN), &["192.0.2.0/24"]),
        ]),
        case(
            "smallest CIDR-failing binding reported",
            Reason::CidrConditionNotMet {
                binding_id: b_id(20),
            },
        )
        .bindings([
            within(binding(21, ALICE, ADMIN), &["192.0.2.0/24"]),
            within(binding(20, DEVS, READER), &["192.0.2.0/24"]),
        ]),
        case("grant expired", Reason::GrantExpired { grant_id: g_id(30) }).grants([Grant {
            expires_at: t - Duration::seconds(1),
            ..grant(30, Some(READER), vec![])
        }]),
        case(
            "grant expiring exactly now is expired",
            Reason::GrantExpired { grant_id: g_id(30) },
        )
        .grants([Grant {
            expires_at: t,
            ..grant(30, Some(READER), vec![])
        }]),
        case("grant revoked", Reason::GrantRevoked { grant_id: g_id(30) }).grants([Grant {
            revoked: true,
            ..grant(30, Some(READER), vec![])
        }]),
        case(
            "revoked and non-matching grants only",
            Reason::OnlyExpiredBindings,
        )
        .grants([Grant {
            revoked: true,
            ..grant(30, Some(WRITER), vec![])
        }]),
        case("live grant without a match", Reason::NoMatchingPermission).grants([grant(
            30,
            None,
            vec![debug_permission()],
        )]),
        case(
            "binding to a role missing from the snapshot",
            Reason::UnknownRole { role_id: MISSING },
        )
        .bindings([binding(20, ALICE, MISSING), binding(21, ALICE, WRITER)]),
        case(
            "grant of a role missing from the snapshot",
            Reason::UnknownRole { role_id: MISSING },
        )
        .grants([grant(30, Some(MISSING), vec![])]),
        case(
            "expired binding to a missing role",
            Reason::OnlyExpiredBindings,
        )
        .bindings([expiring(binding(20, ALICE, MISSING), t)]),
    ]
}

// === tests ===

#[test]
fn table_of_decisions() {
    let roles = roles();
    let mut failures = Vec::new();
    for case in cases() {
        let decision = case.run(&roles);
        if decision.reason != case.expected || decision.allowed != case.expected.is_allow() {
            failures.push(format!(
                "{}: expected {:?}, got {decision:?}",
                case.name, case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_reason_is_covered_by_the_table() {
    let codes: std::collections::BTreeSet<_> = cases().iter().map(|c| c.expected.code()).collect();
    for code in [
        "allowed_by_binding",
        "allowed_by_grant",
        "no_bindings",
        "no_matching_permission",
        "only_expired_bindings",
        "binding_expired",
        "cidr_condition_not_met",
        "grant_expired",
        "grant_revoked",
        "unknown_role",
    ] {
        assert!(codes.contains(code), "no case for {code}");
    }
}

#[test]
fn decisions_do_not_depend_on_row_order() {
    let roles = roles();
    for mut case in cases() {
        let forward = case.run(&roles);
        case.bindings.reverse();
        case.grants.reverse();
        assert_eq!(case.run(&roles), forward, "{}", case.name);
    }
}

#[test]
fn reasons_display_their_evidence() {
    let reason = allowed_by(20, READER, P_READ, Some(DEVS));
    let shown = reason.to_string();
    assert!(shown.contains(&b_id(20).to_string()), "{shown}");
    assert!(shown.contains(&DEVS.to_string()), "{shown}");
    assert_eq!(
        Decision::deny(Reason::NoBindings).to_string(),
        "deny: no role bindings or grants"
    );
    for case in cases() {
        assert!(!case.expected.to_string().is_empty());
    }
}

// === properties ===

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
const PATHS: [&str; 6] = [
    "/",
    "/users",
    "/users/42",
    "/users/42/keys",
    "/debug/heap",
    "/invoices/1",
];
const IPS: [&str; 4] = ["10.0.0.1", "192.0.2.9", "2001:db8::7", "::ffff:10.0.0.1"];
const CIDRS: [&str; 3] = ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"];
const PRINCIPALS: [PrincipalId; 4] = [ALICE, DEVS, OPS, BOB];
const ROLE_IDS: [RoleId; 5] = [READER, WRITER, BILLING, ADMIN, MISSING];
const REQUIRED: [Option<&str>; 3] = [None, Some("users:read"), Some("admin:all")];

/// Up to `max` bindings with distinct ids (as in the database), in random order.
fn any_bindings(max: usize) -> impl Strategy<Value = Vec<Binding>> {
    proptest::collection::vec(any_binding(), 0..max)
        .prop_map(|mut v| {
            v.sort_by_key(|b| b.id);
            v.dedup_by_key(|b| b.id);
            v
        })
        .prop_shuffle()
}

/// Up to `max` grants with distinct ids, in random order.
fn any_grants(max: usize) -> impl Strategy<Value = Vec<Grant>> {
    proptest::collection::vec(any_grant(), 0..max)
        .prop_map(|mut v| {
            v.sort_by_key(|g| g.id);
            v.dedup_by_key(|g| g.id);
            v
        })
        .prop_shuffle()
}

fn any_binding() -> impl Strategy<Value = Binding> {
    (
        0_u128..8,
        0..PRINCIPALS.len(),
        0..ROLE_IDS.len(),
        proptest::option::of(-3_i64..3),
        proptest::collection::vec(0..CIDRS.len(), 0..3),
    )
        .prop_map(|(n, p, r, expiry, cidrs)| {
            let b = binding(20 + n, PRINCIPALS[p], ROLE_IDS[r]);
            let cidrs: Vec<&str> = cidrs.into_iter().map(|i| CIDRS[i]).collect();
            let b = within(b, &cidrs);
            match expiry {
                Some(mins) => expiring(b, now() + Duration::minutes(mins)),
                None => b,
            }
        })
}

fn any_grant() -> impl Strategy<Value = Grant> {
    (
        0_u128..4,
        0..PRINCIPALS.len(),
        proptest::option::of(0..ROLE_IDS.len()),
        any::<bool>(),
        -3_i64..3,
        any::<bool>(),
    )
        .prop_map(|(n, p, r, own, mins, revoked)| Grant {
            principal_id: PRINCIPALS[p],
            expires_at: now() + Duration::minutes(mins),
            revoked,
            ..grant(
                30 + n,
                r.map(|r| ROLE_IDS[r]),
                if own {
                    vec![debug_permission()]
                } else {
                    vec![]
                },
            )
        })
}

#[derive(Debug)]
struct Request {
    method: Method,
    path: &'static str,
    ip: IpAddr,
    route: Option<Uuid>,
    required: Option<&'static str>,
}

fn any_request() -> impl Strategy<Value = Request> {
    (
        0..METHODS.len(),
        0..PATHS.len(),
        0..IPS.len(),
        proptest::option::of(prop_oneof![Just(BILLING_ROUTE), Just(OTHER_ROUTE)]),
        0..REQUIRED.len(),
    )
        .prop_map(|(m, p, i, route, r)| Request {
            method: METHODS[m].clone(),
            path: PATHS[p],
            ip: IPS[i].parse().unwrap(),
            route,
            required: REQUIRED[r],
        })
}

fn decide(roles: &Roles, bindings: &[Binding], grants: &[Grant], r: &Request) -> Decision {
    let subject = Subject {
        principal_id: ALICE,
        group_ids: &[DEVS, OPS],
        bindings,
        grants,
    };
    let req = RequestFacts {
        method: &r.method,
        path: r.path,
        route_id: r.route,
        client_ip: r.ip,
        now: now(),
        required_permission: r.required,
    };
    evaluate(roles, &subject, &req)
}

proptest! {
    #[test]
    fn every_allow_is_justified_by_its_evidence(
        bindings in any_bindings(6),
        grants in any_grants(3),
        r in any_request(),
    ) {
        let roles = roles();
        let decision = decide(&roles, &bindings, &grants, &r);
        prop_assert_eq!(decision.allowed, decision.reason.is_allow());
        let req = RequestFacts {
            method: &r.method,
            path: r.path,
            route_id: r.route,
            client_ip: r.ip,
            now: now(),
            required_permission: r.required,
        };
        match decision.reason {
            Reason::Binding { binding_id, role_id, permission_id, via_group } => {
                let b = bindings.iter().find(|b| b.id == binding_id && b.role_id == role_id);
                let b = b.filter(|b| {
                    b.principal_id == via_group.unwrap_or(ALICE)
                        && b.is_active_at(now())
                        && b.allows_ip(r.ip)
                });
                prop_assert!(b.is_some(), "{:?}", decision);
                let role = roles.get(role_id).unwrap();
                let p = role.permissions.iter().find(|p| p.id == permission_id).unwrap();
                prop_assert!(p.matches(&req));
            }
            Reason::Grant { grant_id, .. } => {
                prop_assert!(grants.iter().any(|g| g.id == grant_id && g.is_active_at(now())
                    && [ALICE, DEVS, OPS].contains(&g.principal_id)));
            }
            _ => {}
        }
    }

    #[test]
    fn without_bindings_only_grants_can_allow(
        grants in any_grants(3),
        r in any_request(),
    ) {
        let roles = roles();
        let decision = decide(&roles, &[], &grants, &r);
        let by_grant = matches!(decision.reason, Reason::Grant { .. });
        prop_assert!(!decision.allowed || by_grant);
        let decision = decide(&roles, &[], &[], &r);
        prop_assert_eq!(decision, Decision::deny(Reason::NoBindings));
    }

    #[test]
    fn removing_all_bindings_always_denies(
        bindings in any_bindings(6),
        r in any_request(),
    ) {
        let roles = roles();
        let _ = decide(&roles, &bindings, &[], &r);
        prop_assert!(!decide(&roles, &[], &[], &r).allowed);
        prop_assert!(!decide(&Roles::default(), &bindings, &[], &r).allowed);
    }

    #[test]
    fn row_order_never_changes_the_decision(
        bindings in any_bindings(6),
        grants in any_grants(3),
        r in any_request(),
    ) {
        let roles = roles();
        let forward = decide(&roles, &bindings, &grants, &r);
        let (mut bindings, mut grants) = (bindings, grants);
        bindings.reverse();
        grants.reverse();
        prop_assert_eq!(decide(&roles, &bindings, &grants, &r), forward);
    }

    #[test]
    fn evaluate_never_panics_on_arbitrary_paths(path in any::<String>(), r in any_request()) {
        let roles = roles();
        let bindings = [binding(20, ALICE, ADMIN), binding(21, DEVS, READER)];
        let req = RequestFacts {
            method: &r.method,
            path: &path,
            route_id: r.route,
            client_ip: r.ip,
            now: now(),
            required_permission: r.required,
        };
        let subject = Subject { principal_id: ALICE, group_ids: &[DEVS], bindings: &bindings, grants: &[] };
        let _ = evaluate(&roles, &subject, &req);
    }
}
