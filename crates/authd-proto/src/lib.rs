//! authd's gRPC API, package `authd.v1` (`proto/authd/v1/*.proto` at the top of the repository).
//!
//! The messages, the `AuthService` and `UserService` clients and servers, the encoded descriptor set
//! for server reflection, and the vocabulary that goes with them ([`code_name`]s of gRPC status codes, and
//! [`rlimit`] for processes that hold many connections). A client or the
//! load tool uses the API through this crate without depending on the server.
//!
//! The code in `src/generated/` is generated and checked in, as tokio-rs/console's `console-api`
//! does: `cargo test -p authd-proto` regenerates it with protox and tonic-prost-build (no `protoc`)
//! and fails if the checked-in files differ, leaving the fresh ones in place to commit. The
//! generated file is long (about 3,000 lines) because it is generated; it is never edited by hand.

/// The generated code of package `authd.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!("generated/authd.v1.rs");
}

pub use v1::*;

/// The encoded `FileDescriptorSet` of the API for server reflection: `authd/v1/*.proto` with their
/// imports, plus `google/rpc/error_details.proto`, so that reflection clients such as grpcurl can
/// decode the `google.rpc.ErrorInfo` details of error replies.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/authd_descriptor.bin");

/// The `domain` of the `google.rpc.ErrorInfo` details that authd sends; the `reason` is the name of
/// an [`ErrorReason`] value ([`ErrorReason::as_str_name`]).
pub const ERROR_DOMAIN: &str = "authd";

/// Login and Refresh return the same token pair: `LoginResponse` and `RefreshResponse` have the
/// same fields and numbers (both were `TokenPair`), and are separate messages so that each can grow
/// on its own. A client that keeps either as its current pair converts a refresh with `.into()`.
impl From<RefreshResponse> for LoginResponse {
    fn from(r: RefreshResponse) -> Self {
        LoginResponse {
            access_token: r.access_token,
            refresh_token: r.refresh_token,
            token_type: r.token_type,
            expires_in: r.expires_in,
            refresh_expires_in: r.refresh_expires_in,
            session_id: r.session_id,
            mfa_required: false,
            mfa_token: String::new(),
        }
    }
}

pub mod code_name;
pub mod codec;
pub mod rlimit;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reason_names_are_the_wire_strings() {
        assert_eq!(ErrorReason::TokenExpired.as_str_name(), "TOKEN_EXPIRED");
        assert_eq!(
            ErrorReason::ServiceKeyInvalid.as_str_name(),
            "SERVICE_KEY_INVALID"
        );
    }
}
