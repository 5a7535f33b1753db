//! authd's test support, shared by every test binary and bench of the workspace (a dev-dependency
//! of `authd`; modelled on crates.io's `crates_io_test_db`):
//!
//! - [`cluster`]: one private PostgreSQL per test process, a template database with the migrations
//!   applied once, a fresh copy per test, dropped when the test's thread ends;
//! - [`server`]: the in-process [`TestServer`] on 127.0.0.1:0 with a `ManualClock`;
//! - [`requests`]: request builders, metadata helpers, fixture values and status assertions;
//! - [`client`]: the one typed test client: the RPC wrappers, over a [`TestServer`];
//! - [`outcomes`]: the outcomes of many calls counted by status code ([`Codes`]);
//! - [`rows`]: direct database access (row shapes, sealed boxes) for tests that look behind the API;
//! - [`totp`]: the tests' own RFC 6238 codes (an authenticator app), independent of the server's;
//! - [`wait`]: waiting for background work;
//! - [`mailbox`]: the links (tokens) of the messages a server sent, from `.eml` files or SMTP;
//! - [`capture`]: an in-memory sink for captured log output.
//!
//! Test support panics on a broken fixture (a failed connection, a refused setup call): that is the
//! test failing, with the message saying which step.

pub mod capture;
pub mod client;
pub mod cluster;
pub mod mailbox;
pub mod outcomes;
pub mod requests;
pub mod rows;
pub mod server;
pub mod smtp;
pub mod totp;
pub mod wait;

pub use client::*;
pub use cluster::{connect_db, db_url, fresh_database, fresh_named_database};
pub use outcomes::{Codes, join_all};
pub use requests::*;
pub use rows::{Count, TextRow, hex, insert_signing_key, open_sealed};
pub use server::{TestServer, test_config};
pub use wait::wait_until;
