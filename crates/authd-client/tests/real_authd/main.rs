//! authd-client against a real authd: the testkit's in-process server over its own PostgreSQL
//! database, a real WatchRevocations stream or ValidateToken call, and the layer either driven as a
//! tower service (to see the `Principal` it hands over) or in front of a real tonic server (the
//! example). One test binary, so that the server is linked once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod example;
mod local;
mod remote;
mod support;
