//! `envoy.service.auth.v3.Authorization` (Envoy's ext_authz over gRPC), served on the API port.
//!
//! A thin handler: it reads the caller (Envoy's `x-api-key` from `grpc_service.initial_metadata`,
//! or its client certificate), the HTTP request's `authorization` header and the route's
//! `context_extensions["authd_required_role"]` (`ROLE_USER`, `ROLE_MODERATOR` or `ROLE_ADMIN`),
//! asks the domain ([`Authd::ext_authz_check`]) and turns its [`Decision`] into a CheckResponse:
//!
//! | decision | `status.code` | HTTP to the client | headers |
//! |---|---|---|---|
//! | allowed | 0 OK | (forwarded) | `x-authd-user-id`, `x-authd-session-id`, `x-authd-role`, `x-authd-amr` set (overwriting), and listed in `headers_to_remove`; the same as dynamic metadata |
//! | no, invalid, expired or revoked token | 16 UNAUTHENTICATED | 401 | `www-authenticate: Bearer error="invalid_token"` |
//! | role below the route's | 7 PERMISSION_DENIED | 403 | |
//! | unknown `authd_required_role` | 13 INTERNAL | 500, body names the problem | (logged at ERROR) |
//! | stale revocation view, database down | 14 UNAVAILABLE | 503 | `retry-after: 1` |
//!
//! **Envoy applies `headers_to_remove` after the headers it sets** (Envoy 1.40, checked by
//! scripts/envoy-test.sh): the allowed response sets the four headers *and* lists them for
//! removal, as issue H asks, so Envoy forwards none of them, neither the client's nor authd's.
//! The allowed response therefore also carries the identity as dynamic metadata
//! (`envoy.filters.http.ext_authz` namespace, keys `user_id`, `session_id`, `role`, `amr`), and the
//! shipped configs (deploy/envoy/) put it back with the virtual host's `request_headers_to_remove`
//! plus `request_headers_to_add: %DYNAMIC_METADATA(envoy.filters.http.ext_authz:user_id)%`, which
//! the router applies after every filter. A client can therefore smuggle nothing: on routes
//! where ext_authz is disabled too.
//!
//! `x-authd-role` carries the proto enum name (`ROLE_USER`, `ROLE_MODERATOR`, `ROLE_ADMIN`), the
//! same words as `authd_required_role`. `x-authd-amr` carries the token's `amr` comma-separated
//! (`pwd`, or `pwd,otp` after a second factor). Only a caller that fails authentication gets a failed RPC
//! (UNAUTHENTICATED): every answer about the token is a CheckResponse, so that even an Envoy with
//! `failure_mode_allow: true` never forwards a request authd did not allow.
//!
//! [`FILE_DESCRIPTOR_SET`] serves the service in reflection: it is
//! `envoy/service/auth/v3/external_auth.proto` and its imports, cut from the descriptor set that
//! envoy-types ships (which it does not export); a unit test below regenerates it.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Code, Request, Response, Status};

use envoy_types::pb::envoy::service::auth::v3::authorization_server;

use super::{caller, client_address};
use crate::domain::ext_authz::{Decision, RequiredRole};
use crate::domain::{AuthFailure, Authd, Principal, Role};
use crate::proto;

/// The service's full name, as reflection lists it.
pub const SERVICE_NAME: &str = authorization_server::SERVICE_NAME;

/// The encoded descriptors of `envoy.service.auth.v3` (see the module doc), for reflection and the
/// metrics layer's method table.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("ext_authz_descriptor.bin");

/// The proto file whose service this module serves (the descriptor test cuts from it).
#[cfg(test)]
const EXT_AUTHZ_PROTO: &str = "envoy/service/auth/v3/external_auth.proto";

/// The header that carries the user id to the upstream.
pub const USER_ID_HEADER: &str = "x-authd-user-id";
/// The header that carries the session id to the upstream.
pub const SESSION_ID_HEADER: &str = "x-authd-session-id";
/// The header that carries the role (`ROLE_USER`, `ROLE_MODERATOR`, `ROLE_ADMIN`) to the upstream.
pub const ROLE_HEADER: &str = "x-authd-role";
/// The header that carries the authentication methods (RFC 8176 `amr`, comma-separated: `pwd` or
/// `pwd,otp`) to the upstream, so that it can demand a second factor.
pub const AMR_HEADER: &str = "x-authd-amr";
/// The dynamic metadata keys of the allowed response: user id, session id, role, amr (the same
/// values as the four headers).
pub const METADATA_KEYS: [&str; 4] = ["user_id", "session_id", "role", "amr"];
/// The `context_extensions` key that names the role a route requires.
pub const REQUIRED_ROLE_KEY: &str = "authd_required_role";

/// The Authorization implementation.
#[derive(Debug, Clone)]
pub struct ExtAuthzApi {
    svc: Arc<Authd>,
    /// Whether verified client certificates authenticate callers (`AUTHD_TLS_CLIENT_CA` is set).
    client_certificates: bool,
}

impl ExtAuthzApi {
    pub fn new(svc: Arc<Authd>, client_certificates: bool) -> Self {
        Self {
            svc,
            client_certificates,
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let source = client_address(&req)?;
        let check = req.get_ref();
        let decision = self
            .svc
            .ext_authz_check(
                caller(&req, self.client_certificates),
                source,
                authorization_header(check),
                required_role(check),
            )
            .await?;
        Ok(Response::new(check_response(decision)))
    }
}

/// The HTTP request's `authorization` header: from `headers`, or from `header_map` when Envoy
/// sends raw headers (`encode_raw_headers: true`). Envoy lowercases header names.
fn authorization_header(check: &CheckRequest) -> Option<&str> {
    let http = check.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    if let Some(v) = http.headers.get("authorization") {
        return Some(v);
    }
    let map = http.header_map.as_ref()?;
    map.headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("authorization"))
        .and_then(|h| {
            if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            }
        })
}

/// The route's `authd_required_role`, by its proto enum name.
fn required_role(check: &CheckRequest) -> RequiredRole {
    let Some(name) = check
        .attributes
        .as_ref()
        .and_then(|a| a.context_extensions.get(REQUIRED_ROLE_KEY))
    else {
        return RequiredRole::Any;
    };
    match proto::Role::from_str_name(name.trim()) {
        Some(proto::Role::User) => RequiredRole::AtLeast(Role::User),
        Some(proto::Role::Moderator) => RequiredRole::AtLeast(Role::Moderator),
        Some(proto::Role::Admin) => RequiredRole::AtLeast(Role::Admin),
        _ => RequiredRole::Unknown,
    }
}

fn role_name(role: Role) -> &'static str {
    super::role_to_proto(role).as_str_name()
}

/// A header the upstream or the client receives, replacing any of the same name.
fn set_header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }),
        // The deprecated `append` stays unset: Envoy then reads append_action (OVERWRITE: its
        // `headers_to_set`), and a client-sent header of the same name is replaced.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The identity as ext_authz dynamic metadata (namespace `envoy.filters.http.ext_authz`, keys
/// [`METADATA_KEYS`]), for Envoy's route-level `request_headers_to_add`: see the module doc.
fn identity_metadata(p: &Principal) -> Struct {
    let [user_id, session_id, role, amr] = METADATA_KEYS;
    let string = |v: String| Value {
        kind: Some(Kind::StringValue(v)),
    };
    Struct {
        fields: [
            (user_id.to_owned(), string(p.user_id.to_string())),
            (session_id.to_owned(), string(p.session_id.to_string())),
            (role.to_owned(), string(role_name(p.role).to_owned())),
            (amr.to_owned(), string(p.amr.join(","))),
        ]
        .into(),
    }
}

fn status(code: Code, message: &str) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: Vec::new(),
    })
}

fn denied(
    code: Code,
    http: HttpStatusCode,
    message: &str,
    headers: Vec<HeaderValueOption>,
) -> CheckResponse {
    CheckResponse {
        status: status(code, message),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body: format!("{message}\n"),
        })),
        ..Default::default()
    }
}

/// The CheckResponse of a decision: see the table in the module doc.
pub fn check_response(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Allow(p) => CheckResponse {
            status: status(Code::Ok, ""),
            dynamic_metadata: Some(identity_metadata(&p)),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![
                    set_header(USER_ID_HEADER, p.user_id.to_string()),
                    set_header(SESSION_ID_HEADER, p.session_id.to_string()),
                    set_header(ROLE_HEADER, role_name(p.role).to_owned()),
                    set_header(AMR_HEADER, p.amr.join(",")),
                ],
                headers_to_remove: [USER_ID_HEADER, SESSION_ID_HEADER, ROLE_HEADER, AMR_HEADER]
                    .map(str::to_owned)
                    .to_vec(),
                ..Default::default()
            })),
        },
        Decision::Deny(failure) => denied(
            Code::Unauthenticated,
            HttpStatusCode::Unauthorized,
            match failure {
                AuthFailure::TokenMissing => "missing bearer token",
                AuthFailure::TokenExpired => "access token expired",
                _ => "invalid or revoked access token",
            },
            vec![set_header(
                "www-authenticate",
                r#"Bearer error="invalid_token""#.to_owned(),
            )],
        ),
        Decision::Forbidden { role, required } => denied(
            Code::PermissionDenied,
            HttpStatusCode::Forbidden,
            &format!(
                "this route requires {}; the caller has {}",
                role_name(required),
                role_name(role)
            ),
            Vec::new(),
        ),
        Decision::Misconfigured => denied(
            Code::Internal,
            HttpStatusCode::InternalServerError,
            "authorization misconfigured: unknown authd_required_role on this route",
            Vec::new(),
        ),
        Decision::Unavailable => denied(
            Code::Unavailable,
            HttpStatusCode::ServiceUnavailable,
            "authorization temporarily unavailable, retry later",
            vec![set_header("retry-after", "1".to_owned())],
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};
    use std::path::PathBuf;

    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    /// The directory of the envoy-types package this build uses, from `cargo metadata`.
    fn envoy_types_dir() -> PathBuf {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "cargo metadata failed");
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let manifest = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "envoy-types")
            .and_then(|p| p["manifest_path"].as_str())
            .unwrap();
        PathBuf::from(manifest).parent().unwrap().to_owned()
    }

    /// `ext_authz_descriptor.bin` is external_auth.proto and its transitive imports, in dependency
    /// order, from envoy-types' `src/generated/types.bin`. Rewrites it (and fails) when it differs.
    #[test]
    fn descriptor_set_is_up_to_date() {
        let all = std::fs::read(envoy_types_dir().join("src/generated/types.bin")).unwrap();
        let all = FileDescriptorSet::decode(all.as_slice()).unwrap();
        let by_name: std::collections::HashMap<&str, &prost_types::FileDescriptorProto> =
            all.file.iter().map(|f| (f.name(), f)).collect();
        // Post-order over the imports: every file after the files it imports.
        let mut ordered = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack: VecDeque<(&str, bool)> = VecDeque::from([(EXT_AUTHZ_PROTO, false)]);
        while let Some((name, expanded)) = stack.pop_back() {
            if expanded {
                ordered.push((*by_name.get(name).unwrap()).clone());
                continue;
            }
            if !seen.insert(name) {
                continue;
            }
            let file = by_name
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in types.bin"));
            stack.push_back((name, true));
            for dep in file.dependency.iter().rev() {
                if !seen.contains(dep.as_str()) {
                    stack.push_back((dep.as_str(), false));
                }
            }
        }
        let fresh = FileDescriptorSet { file: ordered }.encode_to_vec();
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/grpc/ext_authz_descriptor.bin");
        let old = std::fs::read(&path).unwrap_or_default();
        if old != fresh {
            std::fs::write(&path, &fresh).unwrap();
            panic!(
                "src/grpc/ext_authz_descriptor.bin was stale and has been regenerated: review and commit it"
            );
        }
    }

    #[test]
    fn required_roles_are_proto_enum_names() {
        let with = |v: &str| CheckRequest {
            attributes: Some(
                envoy_types::pb::envoy::service::auth::v3::AttributeContext {
                    context_extensions: [(REQUIRED_ROLE_KEY.to_owned(), v.to_owned())].into(),
                    ..Default::default()
                },
            ),
        };
        assert_eq!(required_role(&CheckRequest::default()), RequiredRole::Any);
        assert_eq!(
            required_role(&with("ROLE_ADMIN")),
            RequiredRole::AtLeast(Role::Admin)
        );
        assert_eq!(
            required_role(&with("ROLE_MODERATOR")),
            RequiredRole::AtLeast(Role::Moderator)
        );
        assert_eq!(
            required_role(&with("ROLE_USER")),
            RequiredRole::AtLeast(Role::User)
        );
        for bad in ["admin", "ROLE_UNSPECIFIED", "", "ROLE_ROOT"] {
            assert_eq!(required_role(&with(bad)), RequiredRole::Unknown, "{bad}");
        }
    }
}
