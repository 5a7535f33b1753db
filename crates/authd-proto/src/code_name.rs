//! The names of gRPC status codes, in the two spellings authd prints.

use tonic::Code;

/// The canonical name from the gRPC spec, as grpcurl prints it (`UNAUTHENTICATED`,
/// `RESOURCE_EXHAUSTED`, ...). authd-bench reports outcomes by these names.
pub fn canonical(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The name as go-grpc-prometheus (Go's `codes.Code.String()`) prints it (`Unauthenticated`,
/// `Canceled`, ...): the server's `grpc_code` metric label and the `code` of its log lines.
pub fn go(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_follow_the_grpc_spec() {
        assert_eq!(canonical(Code::Ok), "OK");
        assert_eq!(canonical(Code::Cancelled), "CANCELLED");
        assert_eq!(canonical(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(canonical(Code::Unauthenticated), "UNAUTHENTICATED");
        for i in 0..=16 {
            let name = canonical(Code::from_i32(i));
            assert!(
                name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{name}"
            );
        }
    }

    #[test]
    fn go_names_follow_go_grpc() {
        assert_eq!(go(Code::Ok), "OK");
        assert_eq!(go(Code::Cancelled), "Canceled");
        assert_eq!(go(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(go(Code::Unauthenticated), "Unauthenticated");
    }
}
