//! Tests of the client address walk and of what each method gets resolved.

use super::*;
use crate::config::parse_net;

fn req(peer: &str, xff: &[&str]) -> http::Request<()> {
    let mut r = http::Request::new(());
    for v in xff {
        r.headers_mut()
            .append("x-forwarded-for", v.parse().unwrap());
    }
    r.extensions_mut().insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: Some(peer.parse().unwrap()),
    });
    r
}

/// What ValidateToken gets: the walk without a proxy key.
fn ip(r: &http::Request<()>, t: &[IpNet]) -> Option<String> {
    resolve_client(
        peer_address(r.extensions()),
        forwarded_hops(r.headers()),
        t,
        None,
    )
    .0
    .map(|i| i.to_string())
}

#[test]
fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let trusted = vec![parse_net("10.0.0.0/8").unwrap()];
    // Untrusted peer: the header is ignored.
    let r = req("203.0.113.9:5000", &["198.51.100.1"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("203.0.113.9"));
    // Trusted peer: right-most untrusted hop.
    let r = req("10.1.2.3:5000", &["198.51.100.1, 192.0.2.7, 10.9.9.9"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("192.0.2.7"));
    // Several header lines are one list.
    let r = req("10.1.2.3:5000", &["198.51.100.1", "192.0.2.8"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("192.0.2.8"));
    // Garbage falls back to the peer.
    let r = req("10.1.2.3:5000", &["not-an-ip"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("10.1.2.3"));
    // No header: the peer.
    let r = req("10.1.2.3:5000", &[]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("10.1.2.3"));
    // Nothing trusted: the peer.
    let r = req("10.1.2.3:5000", &["198.51.100.1"]);
    assert_eq!(ip(&r, &[]).as_deref(), Some("10.1.2.3"));
}

#[test]
fn forwarded_for_walks_from_the_right_past_junk_on_the_left() {
    let trusted = vec![parse_net("10.0.0.0/8").unwrap()];
    // Junk to the left of the client does not matter.
    let r = req("10.1.2.3:5000", &["junk, 198.51.100.9"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("198.51.100.9"));
    let r = req("10.1.2.3:5000", &["junk", "198.51.100.9, 10.0.0.7"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("198.51.100.9"));
    // Ports and brackets are accepted; IPv4-mapped IPv6 is IPv4.
    let r = req("10.1.2.3:5000", &["[2001:db8::5]:443"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("2001:db8::5"));
    let r = req("10.1.2.3:5000", &["192.0.2.1:8443"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("192.0.2.1"));
    let r = req("10.1.2.3:5000", &["::ffff:192.0.2.2"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("192.0.2.2"));
    // Junk reached before any untrusted hop: the nearest trusted hop.
    let r = req("10.1.2.3:5000", &["198.51.100.9, junk, 10.0.0.7"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("10.0.0.7"));
    let r = req("10.1.2.3:5000", &["198.51.100.9, , 10.0.0.7"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("10.0.0.7"));
    let r = req("10.1.2.3:5000", &["198.51.100.9, junk"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("10.1.2.3"));
    // Only trusted hops: the left-most of them.
    let r = req("10.1.2.3:5000", &["10.0.0.1, 10.0.0.2"]);
    assert_eq!(ip(&r, &trusted).as_deref(), Some("10.0.0.1"));
    // A non-ASCII line counts as junk.
    let mut r = req("10.1.2.3:5000", &["198.51.100.9"]);
    r.headers_mut().append(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(&b"\xff"[..]).unwrap(),
    );
    assert_eq!(ip(&r, &trusted).as_deref(), Some("10.1.2.3"));
}

#[test]
fn a_proxy_key_vouches_for_one_hop_from_its_cidrs() {
    let parse =
        |v: &[&str]| -> Vec<Option<IpAddr>> { v.iter().rev().map(|s| s.parse().ok()).collect() };
    let a = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    let trusted = vec![parse_net("127.0.0.1").unwrap()];
    let gw = vec![parse_net("192.0.2.0/24").unwrap()];
    let walk = |peer: &str, xff: &[&str], cidrs: Option<&[IpNet]>| {
        resolve_client(a(peer), parse(xff).into_iter(), &trusted, cidrs)
    };
    // The gateway connects directly and names its user.
    assert_eq!(
        walk("192.0.2.5", &["198.51.100.9"], Some(&gw)),
        (a("198.51.100.9"), true)
    );
    // Only one hop: whatever the user sent to the left is not believed.
    assert_eq!(
        walk("192.0.2.5", &["203.0.113.1", "198.51.100.9"], Some(&gw)),
        (a("198.51.100.9"), true)
    );
    // Through a trusted sidecar that appended the gateway's address.
    assert_eq!(
        walk("127.0.0.1", &["198.51.100.9", "192.0.2.5"], Some(&gw)),
        (a("198.51.100.9"), true)
    );
    // From outside its CIDRs: the header is read as without a key.
    assert_eq!(
        walk("203.0.113.7", &["198.51.100.9"], Some(&gw)),
        (a("203.0.113.7"), false)
    );
    // Empty CIDRs: anywhere.
    assert_eq!(
        walk("203.0.113.7", &["198.51.100.9"], Some(&[])),
        (a("198.51.100.9"), true)
    );
    // No proxy key: the peer.
    assert_eq!(
        walk("192.0.2.5", &["198.51.100.9"], None),
        (a("192.0.2.5"), false)
    );
    // No header: the gateway itself, still through its key.
    assert_eq!(walk("192.0.2.5", &[], Some(&gw)), (a("192.0.2.5"), true));
    // No peer address: unknown.
    assert_eq!(
        resolve_client(None, std::iter::empty(), &trusted, Some(&gw)),
        (None, false)
    );
}

#[test]
fn what_each_method_gets_resolved() {
    let auth = auth_service_server::SERVICE_NAME;
    let users = user_service_server::SERVICE_NAME;
    assert_eq!(
        resolve_for(&format!("/{auth}/ValidateToken")),
        Resolve::Address
    );
    assert_eq!(
        resolve_for(&format!("/{auth}/WatchRevocations")),
        Resolve::Address
    );
    assert_eq!(resolve_for(&format!("/{auth}/GetJwks")), Resolve::Nothing);
    assert_eq!(resolve_for(&format!("/{auth}/Login")), Resolve::Full);
    assert_eq!(resolve_for(&format!("/{users}/UpdateMe")), Resolve::Full);
    assert_eq!(
        resolve_for("/grpc.health.v1.Health/Check"),
        Resolve::Nothing
    );
    assert_eq!(resolve_for("/x"), Resolve::Nothing);
}
