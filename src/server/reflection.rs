//! gRPC server reflection, v1 and v1alpha (grpcurl 1.8.6 speaks only v1alpha), with an allowlist:
//! it lists exactly the services in [`REFLECTED_SERVICES`] (qdrant's `src/tonic/mod.rs` does the
//! same). The descriptor sets stay registered whole, so every message type (for example
//! `google.rpc.ErrorInfo`) can still be looked up and described.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

use crate::grpc::ext_authz;
use crate::proto;
use crate::proto::{auth_service_server, user_service_server};

/// The services reflection lists. A service added to the server is added here.
pub const REFLECTED_SERVICES: &[&str] = &[
    auth_service_server::SERVICE_NAME,
    user_service_server::SERVICE_NAME,
    tonic_health::pb::health_server::SERVICE_NAME,
    ext_authz::SERVICE_NAME,
];

fn builder() -> Builder<'static> {
    let builder = Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(ext_authz::FILE_DESCRIPTOR_SET);
    REFLECTED_SERVICES
        .iter()
        .fold(builder, |b, name| b.with_service_name(*name))
}

/// `grpc.reflection.v1.ServerReflection`.
pub fn v1() -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder().build_v1()
}

/// `grpc.reflection.v1alpha.ServerReflection`, for older clients such as grpcurl 1.8.6.
pub fn v1alpha() -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
    builder().build_v1alpha()
}
