//! What the tests share: a layer over a TestServer, one call through it, logins, logouts and
//! revocation polling.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authd_client::{AuthLayer, AuthLayerBuilder, Clock, Principal, ServiceKey};
use authd_testkit::{TestServer, with_bearer};
use chrono::{DateTime, Utc};
use http::HeaderValue;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{Layer, ServiceExt};

/// The layer's clock: the wall time of the server's `ManualClock` (so that tokens issued after the
/// test moved the server's clock are not "from the future"), the real monotonic time (so that the
/// fail-closed bound follows real silence).
pub struct ServerClock {
    pub server: Arc<authd::clock::ManualClock>,
    pub origin: Instant,
}

impl Clock for ServerClock {
    fn now(&self) -> DateTime<Utc> {
        authd::clock::Clock::now(&*self.server)
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

pub fn channel_to(srv: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", srv.addr))
        .unwrap()
        .connect_lazy()
}

/// A builder for a layer that talks to `srv`, with a fresh service key and the server's clock.
pub async fn builder(srv: &TestServer) -> AuthLayerBuilder {
    let key = ServiceKey::new(srv.service_key().await).unwrap();
    AuthLayer::builder(channel_to(srv), key).clock(Arc::new(ServerClock {
        server: srv.clock.clone(),
        origin: Instant::now(),
    }))
}

/// A local-mode layer whose snapshot has arrived.
pub async fn ready(layer: AuthLayer) -> AuthLayer {
    assert!(
        layer.wait_ready(Duration::from_secs(15)).await,
        "the WatchRevocations snapshot did not arrive"
    );
    layer
}

/// One call of `path` through `layer` around an inner service that answers with the principal it
/// was given: Ok(principal), or the status the layer answered.
pub async fn call_raw(
    layer: &AuthLayer,
    path: &str,
    authorization: Option<HeaderValue>,
) -> Result<Principal, Status> {
    let svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
        Ok::<_, Infallible>(http::Response::new(
            req.extensions().get::<Principal>().cloned(),
        ))
    }));
    let mut req = http::Request::builder()
        .uri(format!("http://protected.example{path}"))
        .body(())
        .unwrap();
    if let Some(v) = authorization {
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    let resp = svc.oneshot(req).await.unwrap();
    let status = Status::from_header_map(resp.headers());
    match resp.into_body() {
        Some(p) => Ok(p),
        None => Err(status.expect("a refusal carries grpc-status")),
    }
}

pub const PATH: &str = "/demo.v1.Demo/Get";
pub const ADMIN_PATH: &str = "/demo.v1.Demo/Delete";

pub async fn call(layer: &AuthLayer, token: &str) -> Result<Principal, Status> {
    call_path(layer, PATH, token).await
}

pub async fn call_path(layer: &AuthLayer, path: &str, token: &str) -> Result<Principal, Status> {
    let v = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    call_raw(layer, path, Some(v)).await
}

pub async fn logout(srv: &TestServer, token: &str) {
    srv.auth()
        .await
        .logout(with_bearer(authd::proto::LogoutRequest::default(), token))
        .await
        .expect("logout");
}

/// Polls until `layer` refuses `token` (UNAUTHENTICATED); returns how long after `since` that was.
pub async fn refused_after(layer: &AuthLayer, token: &str, since: Instant) -> Duration {
    let limit = Duration::from_secs(15);
    loop {
        match call(layer, token).await {
            Err(s) if s.code() == Code::Unauthenticated => return since.elapsed(),
            Err(s) => panic!("unexpected refusal while waiting for the revocation: {s:?}"),
            Ok(_) => {}
        }
        assert!(
            since.elapsed() < limit,
            "the revocation did not arrive within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls until a call gets `code`; returns how long that took.
pub async fn until_code(layer: &AuthLayer, token: &str, code: Code, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        match call(layer, token).await {
            Err(s) if s.code() == code => return t0.elapsed(),
            _ if t0.elapsed() > limit => panic!("no {code:?} within {limit:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

pub fn reason(s: &Status) -> String {
    authd_testkit::reason(s).unwrap_or_default()
}
