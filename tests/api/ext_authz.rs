//! Envoy ext_authz (`envoy.service.auth.v3.Authorization/Check`) on the API port, called by a real
//! tonic client of envoy-types' `AuthorizationClient`, as Envoy calls it: the caller's `x-api-key`
//! in the gRPC metadata, the user's token in the HTTP request's `authorization` header, the route's
//! `authd_required_role` in `context_extensions`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use authd::proto;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::Code;
use tonic::transport::Channel;

use authd_testkit::*;

async fn client(srv: &TestServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(srv.channel().await)
}

/// A CheckRequest as Envoy sends it: the client's HTTP headers, and the route's extensions.
fn check_request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }),
    }
}

/// Check with service key `key`, bearer `token` (none when empty) and a required role (if any).
async fn check(srv: &TestServer, key: &str, token: &str, role: Option<&str>) -> CheckResponse {
    let bearer = format!("Bearer {token}");
    let headers: Vec<(&str, &str)> = if token.is_empty() {
        vec![]
    } else {
        vec![("authorization", bearer.as_str())]
    };
    let ext: Vec<(&str, &str)> = role
        .map(|r| ("authd_required_role", r))
        .into_iter()
        .collect();
    client(srv)
        .await
        .check(with_key(check_request(&headers, &ext), key))
        .await
        .expect("Check answers")
        .into_inner()
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map_or(-1, |s| s.code)
}

/// The denied response's HTTP status and headers.
fn denied(r: &CheckResponse) -> (i32, HashMap<String, String>) {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            (d.status.as_ref().map_or(0, |s| s.code), headers(&d.headers))
        }
        other => panic!("expected a denied_response, got {other:?}"),
    }
}

fn headers(hs: &[HeaderValueOption]) -> HashMap<String, String> {
    hs.iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn assert_unauthenticated(r: &CheckResponse) {
    assert_eq!(code(r), Code::Unauthenticated as i32, "{r:?}");
    let (http, hs) = denied(r);
    assert_eq!(http, 401);
    assert_eq!(
        hs.get("www-authenticate").map(String::as_str),
        Some(r#"Bearer error="invalid_token""#)
    );
}

#[tokio::test]
async fn a_live_token_is_allowed_with_the_identity_headers_which_overwrite_and_are_removed() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (user, pair) = srv.user_session().await;
    let bearer = format!("bearer {}", pair.access_token); // the scheme is case-insensitive
    let req = check_request(
        &[
            ("authorization", bearer.as_str()),
            ("x-authd-role", "ROLE_ADMIN"),
            ("x-authd-user-id", "smuggled"),
        ],
        &[],
    );
    let r = client(&srv)
        .await
        .check(with_key(req, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 0, "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("expected an ok_response: {r:?}");
    };
    let set = headers(&ok.headers);
    assert_eq!(set["x-authd-user-id"], user.id);
    assert_eq!(set["x-authd-session-id"], pair.session_id);
    assert_eq!(set["x-authd-role"], "ROLE_USER");
    assert_eq!(set["x-authd-amr"], "pwd");
    assert_eq!(set.len(), 4);
    for h in &ok.headers {
        assert_eq!(
            h.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        #[allow(deprecated)] // Envoy reads `append` first when it is set: it must not be true.
        let append = h.append;
        assert!(append.is_none_or(|a| !a.value));
    }
    // The same identity as dynamic metadata, for Envoy's route-level request_headers_to_add.
    let meta: HashMap<String, String> = r
        .dynamic_metadata
        .as_ref()
        .expect("dynamic metadata")
        .fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(meta["user_id"], user.id);
    assert_eq!(meta["session_id"], pair.session_id);
    assert_eq!(meta["role"], "ROLE_USER");
    assert_eq!(meta["amr"], "pwd");
    let mut removed = ok.headers_to_remove.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            "x-authd-amr",
            "x-authd-role",
            "x-authd-session-id",
            "x-authd-user-id"
        ]
    );
}

#[tokio::test]
async fn missing_malformed_tampered_expired_and_revoked_tokens_get_401() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;

    assert_unauthenticated(&check(&srv, &key, "", None).await);
    assert_unauthenticated(&check(&srv, &key, "not.a.jwt", None).await);
    // A non-bearer scheme.
    let basic = client(&srv)
        .await
        .check(with_key(
            check_request(&[("authorization", "Basic dXNlcjpwdw==")], &[]),
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_unauthenticated(&basic);
    // One flipped character in the signature.
    let mut tampered = pair.access_token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_unauthenticated(&check(&srv, &key, &tampered, None).await);

    // Revoked: Logout ends the session.
    let (_, other) = srv.user_session().await;
    assert_eq!(code(&check(&srv, &key, &other.access_token, None).await), 0);
    srv.auth()
        .await
        .logout(with_bearer(
            proto::LogoutRequest::default(),
            &other.access_token,
        ))
        .await
        .unwrap();
    assert_unauthenticated(&check(&srv, &key, &other.access_token, None).await);

    // Expired: past the access token TTL (the injected clock).
    assert_eq!(code(&check(&srv, &key, &pair.access_token, None).await), 0);
    srv.clock.advance(
        chrono::Duration::from_std(srv.config.access_token_ttl).unwrap()
            + chrono::Duration::seconds(120),
    );
    let r = check(&srv, &key, &pair.access_token, None).await;
    assert_unauthenticated(&r);
}

#[tokio::test]
async fn roles_are_ordered_and_an_insufficient_one_gets_403() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, user) = srv.user_session().await;
    let admin = srv.admin_session().await;

    for (token, role, allowed) in [
        (&user.access_token, "ROLE_USER", true),
        (&user.access_token, "ROLE_MODERATOR", false),
        (&user.access_token, "ROLE_ADMIN", false),
        (&admin.access_token, "ROLE_USER", true),
        (&admin.access_token, "ROLE_MODERATOR", true),
        (&admin.access_token, "ROLE_ADMIN", true),
    ] {
        let r = check(&srv, &key, token, Some(role)).await;
        if allowed {
            assert_eq!(code(&r), 0, "{role}: {r:?}");
        } else {
            assert_eq!(code(&r), Code::PermissionDenied as i32, "{role}: {r:?}");
            assert_eq!(denied(&r).0, 403);
        }
    }
    // A role check never turns a bad token into a 403.
    assert_unauthenticated(&check(&srv, &key, "garbage", Some("ROLE_ADMIN")).await);
    // An unknown role is a configuration error: denied with 500, whoever asks.
    for token in [&user.access_token, &admin.access_token] {
        let r = check(&srv, &key, token, Some("admin")).await;
        assert_eq!(code(&r), Code::Internal as i32, "{r:?}");
        assert_eq!(denied(&r).0, 500);
    }
}

#[tokio::test]
async fn the_caller_needs_a_service_key() {
    let srv = TestServer::start().await;
    let (_, pair) = srv.user_session().await;
    let bearer = format!("Bearer {}", pair.access_token);
    let req = || check_request(&[("authorization", bearer.as_str())], &[]);
    let err = client(&srv).await.check(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err).as_deref(), Some("SERVICE_KEY_MISSING"));
    let err = client(&srv)
        .await
        .check(with_key(req(), "ak_not-a-key"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err).as_deref(), Some("SERVICE_KEY_INVALID"));

    // AUTHD_VALIDATE_REQUIRE_KEY=false: any caller may ask, as for ValidateToken.
    let open = TestServer::start_with(|c| c.validate_require_key = false).await;
    let (_, pair) = open.user_session().await;
    let bearer = format!("Bearer {}", pair.access_token);
    let r = client(&open)
        .await
        .check(check_request(&[("authorization", bearer.as_str())], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 0);
}

#[tokio::test]
async fn a_session_revoked_in_the_database_is_denied_within_a_second() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;
    // Cached as allowed first, so the cache cannot be what denies it later.
    for _ in 0..2 {
        assert_eq!(code(&check(&srv, &key, &pair.access_token, None).await), 0);
    }
    // Behind this replica's back, as another replica would.
    srv.exec(&format!(
        "UPDATE sessions SET revoke_time = now(), revoke_reason = 'test' WHERE id = '{}'",
        pair.session_id
    ))
    .await;
    let start = Instant::now();
    loop {
        let r = check(&srv, &key, &pair.access_token, None).await;
        if code(&r) == Code::Unauthenticated as i32 {
            assert_unauthenticated(&r);
            break;
        }
        assert_eq!(code(&r), 0);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still allowed after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stale_revocation_view_gets_503_not_a_failed_rpc() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, pair) = srv.user_session().await;
    assert_eq!(code(&check(&srv, &key, &pair.access_token, None).await), 0);
    // The view's poll reads service_keys: without the table every poll fails, and after 3 s
    // (views::MAX_STALENESS) the view is stale.
    srv.exec("ALTER TABLE service_keys RENAME TO service_keys_hidden")
        .await;
    let start = Instant::now();
    let r = loop {
        let r = check(&srv, &key, &pair.access_token, None).await;
        if code(&r) != 0 {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never stale");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code(&r), Code::Unavailable as i32, "{r:?}");
    assert_eq!(denied(&r).0, 503);
    srv.exec("ALTER TABLE service_keys_hidden RENAME TO service_keys")
        .await;
    wait_until("the view recovers", Duration::from_secs(10), || async {
        code(&check(&srv, &key, &pair.access_token, None).await) == 0
    })
    .await;
}

#[tokio::test]
async fn concurrent_checks_agree() {
    let srv = TestServer::start().await;
    let key = srv.service_key().await;
    let (_, user) = srv.user_session().await;
    let admin = srv.admin_session().await;
    let channel = srv.channel().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = AuthorizationClient::new(channel.clone());
        let key = key.clone();
        let (token, expect) = match i % 3 {
            0 => (user.access_token.clone(), Code::PermissionDenied as i32),
            1 => (admin.access_token.clone(), 0),
            _ => ("tampered".to_owned(), Code::Unauthenticated as i32),
        };
        tasks.push(tokio::spawn(async move {
            let bearer = format!("Bearer {token}");
            let r = c
                .check(with_key(
                    check_request(
                        &[("authorization", bearer.as_str())],
                        &[("authd_required_role", "ROLE_MODERATOR")],
                    ),
                    &key,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(code(&r), expect, "{r:?}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
