//! A tonic service protected by authd: gRPC health (tonic-health) behind [`AuthLayer`]. The lines
//! marked `// authd` are everything protection takes: without them this is a plain health server.
//!
//! ```sh
//! AUTHD_URL=http://127.0.0.1:50051 AUTHD_SERVICE_KEY=sk_... \
//!     cargo run -p authd-client --example protected_service
//! grpcurl -plaintext -H "authorization: Bearer $ACCESS_TOKEN" 127.0.0.1:50052 grpc.health.v1.Health/Check
//! ```
//!
//! Check needs any valid access token; Watch needs an admin's.

use std::future::Future;

use authd_client::{AuthLayer, Role, ServiceKey}; // authd
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Serves the protected health service on `listener` until `shutdown` completes.
pub async fn serve(
    authd_url: String,
    service_key: String,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let authd = Channel::from_shared(authd_url)?.connect_lazy(); // authd
    let auth = AuthLayer::builder(authd, ServiceKey::new(service_key)?) // authd
        .require_role("/grpc.health.v1.Health/Watch", Role::Admin) // authd
        .local(); // authd
    Server::builder()
        .layer(auth) // authd
        .add_service(health)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = |name: &str| std::env::var(name).map_err(|_| format!("set {name}"));
    let listen = env("LISTEN").unwrap_or_else(|_| "127.0.0.1:50052".into());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(
        env("AUTHD_URL")?,
        env("AUTHD_SERVICE_KEY")?,
        listener,
        ctrl_c,
    )
    .await
}
