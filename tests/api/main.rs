//! Integration tests: the real server in-process on 127.0.0.1:0, real tonic clients, and a real
//! PostgreSQL (one private cluster per test process, a fresh database per test), all from
//! `authd-testkit`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod addresses;
mod admin;
mod auth_flows;
mod bcrypt_pool;
mod bootstrap;
mod connections;
mod email_change;
mod ext_authz;
mod fast_path;
mod keys;
mod mail;
mod mfa;
mod redaction;
mod refresh_batch;
mod refresh_format;
mod refresh_rules;
mod reset;
mod security;
mod self_service;
mod smoke;
mod throttle;
mod tokens;
mod verify;
mod watch;
