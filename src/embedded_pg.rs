//! The embedded PostgreSQL, from the `authd-pg-embed` crate (`crates/authd-pg-embed`): the private
//! cluster authd runs when no `DATABASE_URL` is given. Re-exported here so that the server and the
//! tests keep using `authd::embedded_pg::...`.

pub use authd_pg_embed::*;
