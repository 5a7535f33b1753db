//! The old home of [`Authd`] and its types, kept as re-exports so that callers written against
//! `domain::service::…` keep compiling. New code imports from the files of each behaviour.

pub use super::access::{Caller, Introspection};
pub use super::accounts::{Account, NewAccount};
pub use super::authd::{Authd, REDACTED};
pub use super::service_keys::{ServiceKeyInfo, ServiceKeySpec};
pub use super::sessions::{LoginIdentifier, TokenPair};
