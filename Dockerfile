# authd container image.
#
# Two stages:
#   build    rust:1.95-bookworm. The dependencies are compiled first, against stub sources, in a layer of their
#            own, so that a source change rebuilds only authd itself.
#   runtime  gcr.io/distroless/cc-debian12: glibc and libgcc only, with no shell and no package manager. authd
#            runs as the numeric non-root user 65532 (distroless "nonroot"), so Kubernetes' runAsNonRoot can
#            verify it.
#
# The image has no PostgreSQL, so DATABASE_URL is required. Without it authd would try to start its embedded
# PostgreSQL, whose binaries are not in the image, and exit.
#
#   docker build -t authd .
#   docker run --rm -p 127.0.0.1:50051:50051 \
#     -e DATABASE_URL=postgres://authd:PASSWORD@db.example.internal:5432/authd \
#     -e AUTHD_MASTER_KEY="$(openssl rand -base64 32)" authd
#
# Ports: 50051 is gRPC (AUTHD_LISTEN, set below). 9090 is the HTTP side listener for /metrics,
# /.well-known/jwks.json, /livez and /readyz. It is off unless AUTHD_HTTP_LISTEN=0.0.0.0:9090 is set, as
# docker-compose.yml and deploy/kubernetes/configmap.yaml do.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# 1. Dependencies only. This layer is reused until Cargo.toml or Cargo.lock changes. The stubs stand in for
#    every target that Cargo.toml declares or discovers: the lib, the bin, the build script and the benches.
#    Cargo refuses the manifest if a declared target is missing.
#    The workspace's crates (crates/: the API's generated code, the bench) are copied whole: they are small, and
#    the server depends on them.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && echo 'fn main() {}' > build.rs \
    && echo 'fn main() {}' > benches/login_timing.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && cargo build --release --locked --bin authd \
    && rm -rf src benches build.rs \
        target/release/authd target/release/authd.d \
        target/release/.fingerprint/authd-* target/release/build/authd-* \
        target/release/deps/authd-* target/release/deps/libauthd-*

# 2. authd itself. The stub's fingerprints were removed above, so Cargo rebuilds authd even when the copied
#    sources carry older modification times than the stub build.
#    build.rs reads the git commit for `authd --version` and authd_build_info; .git is not in the context, so pass
#    it in: docker build --build-arg AUTHD_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG AUTHD_GIT_COMMIT=""
COPY build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY benches ./benches
COPY src ./src
RUN cargo build --release --locked --bin authd \
    && install -D -m 0755 target/release/authd /out/authd

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/authd /usr/local/bin/authd
USER 65532:65532
ENV AUTHD_LISTEN=0.0.0.0:50051
EXPOSE 50051 9090
# Exec form, because distroless has no shell. `authd healthcheck` asks grpc.health.v1 for the overall status
# ("", readiness) and exits 0 only when it is SERVING. It asks AUTHD_HEALTH_LISTEN if set, else AUTHD_LISTEN
# (0.0.0.0 becomes loopback), so with TLS on the gRPC port set AUTHD_HEALTH_LISTEN=0.0.0.0:8081 and the
# check follows: it speaks plaintext only.
HEALTHCHECK --interval=10s --timeout=8s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/authd", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/authd"]
CMD ["serve"]
