//! The library's deliberate public surface next to [`crate::server`], [`crate::config`],
//! [`crate::clock`] and [`crate::proto`]. `domain`, `db` and `grpc` are private to the crate; what
//! the outside needs from them is re-exported here, by name:
//!
//! - the service object [`Authd`] and the types its operations take and return, for the binary's
//!   CLI commands, the testkit and the tests that drive the service directly;
//! - [`role_arg`], the request's role number as the handlers read it, and the input rules in
//!   [`validate`], [`password`], [`opaque`], [`audit`] and [`mfa`], for the fuzz targets and benchmarks;
//! - [`tokens`], the signing keyring and the verified-token cache, for the benchmarks.

pub use crate::domain::accounts::{Account, AdminUpdate, NewAccount, ProfileUpdate, RoleArg};
pub use crate::domain::mfa::{Enrollment, RecoveryCodes};
pub use crate::domain::service_keys::{ServiceKeyInfo, ServiceKeySpec};
pub use crate::domain::sessions::{LoginIdentifier, LoginOutcome, MfaTicket, TokenPair};
pub use crate::domain::{
    Authd, ClientInfo, ClientKey, Error, MAX_USER_AGENT_CHARS, Principal, REDACTED, Role,
};
pub use crate::grpc::role_arg;

/// The rules of e-mails, usernames, names, labels, ids and CIDR lists in requests.
pub mod validate {
    pub use crate::domain::validate::{
        MAX_CIDRS, MAX_EMAIL_CHARS, MAX_IDENTIFIER_BYTES, MAX_NAME_CHARS, cidrs, email,
        is_valid_email, is_valid_username, label, normalize_email, person_name, username, uuid,
    };
}

/// The rules of new and presented passwords, and the bcrypt pool's test hold.
pub mod password {
    pub use crate::domain::passwords::{
        Hold, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, check_strength, new_password, normalize,
        presented_password,
    };
}

/// Refresh tokens: their format, their hash and the sealed successor of a grace replay.
pub mod opaque {
    pub use crate::domain::opaque::{
        HashedToken, MAX_OPAQUE_BYTES, REFRESH_SECRET, REFRESH_TOKEN_PREFIX, RefreshClaims,
        RefreshFormat, ReplayBox, mint_refresh_token, new_refresh_token, refresh_format,
    };
}

/// The second factor's pure parts (RFC 6238 codes, recovery codes, the QR PNG), for the benchmarks.
pub mod mfa {
    pub use crate::domain::mfa::{qr, recovery, totp};
}

/// How audit events record what a client sent.
pub mod audit {
    pub use crate::domain::audit::{MAX_IDENTIFIER_CHARS, sanitize};
}

/// Signing and verifying access tokens, and the verified-token cache.
pub mod tokens {
    pub use crate::domain::tokens::{AccessClaims, Keyring, TokenCache, Verifier, generate_key};
}

/// The outbox and mail delivery (issue I).
pub mod mail {
    pub use crate::domain::mail::templates::{Rendered, Templates};
    pub use crate::domain::mail::transport::{FileTransport, SendError, SmtpTransport, Transport};
    pub use crate::domain::mail::{
        CLAIM_BATCH, CLAIM_LEASE, DeliveryReport, MAX_BACKOFF, Mail, MailSettings, Mailer, backoff,
    };
}

/// The in-memory revocation view.
pub mod views {
    pub use crate::domain::views::MAX_STALENESS;
}

/// The feed that WatchRevocations streams read: its ring of recent revocations.
pub mod revocation_feed {
    pub use crate::domain::revocation_feed::RING_CAPACITY;
}
