//! [`Authd`]: the service object every operation hangs off (the pool, its [`Settings`], the
//! keyring, the password hasher, the views and the injected clock), its start-up, and the helpers the
//! behaviours share. The operations themselves live in the files of their behaviour: `accounts/`,
//! `sessions/`, `access.rs`, `service_keys.rs`, `signing_keys.rs` and `housekeeping.rs`.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use crate::clock::SharedClock;
use crate::db::{self, Pool};
use crate::domain::Result;
use crate::domain::keystore::{KeyStore, MasterKey};
use crate::domain::passwords::{self, PasswordHasher};
use crate::domain::sessions::rotations::RotationBatcher;
use crate::domain::settings::Settings;
use crate::domain::throttle::{self, IpRateLimiter, ProxyKeyBudget};
use crate::domain::tokens::{Keyring, TokenCache};
use crate::domain::views::Views;

/// Name of the server secret that keys the audit digests of unknown login identifiers.
pub(in crate::domain) const AUDIT_SECRET: &str = "audit_identifier_hmac";

/// What Debug shows in place of a password, token or key.
pub const REDACTED: &str = "<redacted>";

/// The service. Cheap to share behind an `Arc`.
pub struct Authd {
    pub(in crate::domain) pool: Pool,
    pub(in crate::domain) settings: Settings,
    pub(in crate::domain) clock: SharedClock,
    pub(in crate::domain) hasher: PasswordHasher,
    pub(in crate::domain) keystore: KeyStore,
    pub(in crate::domain) keyring: RwLock<Arc<Keyring>>,
    /// Keys [`crate::domain::audit::identifier_digest`].
    pub(in crate::domain) audit_secret: Vec<u8>,
    pub(in crate::domain) rate_limiter: IpRateLimiter,
    pub(in crate::domain) proxy_budget: ProxyKeyBudget,
    pub(in crate::domain) views: Views,
    pub(in crate::domain) token_cache: TokenCache,
    /// SHA-256 of recently presented valid service keys (see `key_digests`).
    pub(in crate::domain) key_digests: crate::domain::key_digests::KeyDigests,
    /// Bumped whenever the published key set changes (see [`Authd::reload_keys`]), for the
    /// WatchRevocations streams.
    pub(in crate::domain) keys_changed: tokio::sync::watch::Sender<u64>,
    /// Keys WatchRevocations' resume tokens (`domain::watch::resume`).
    pub(in crate::domain) resume_secret: Vec<u8>,
    /// Keys the MAC of refresh tokens (see `opaque::REFRESH_SECRET`).
    pub(in crate::domain) refresh_secret: Vec<u8>,
    /// Open WatchRevocations streams on this replica.
    pub(in crate::domain) watch_streams: Arc<AtomicUsize>,
    /// The outbox (src/domain/mail).
    pub(in crate::domain) mailer: Arc<crate::domain::mail::Mailer>,
    /// Wakes this replica's password-reset job after a local RequestPasswordReset.
    pub(in crate::domain) reset_wake: tokio::sync::Notify,
    /// Keys the hashes of recovery codes (`domain::mfa::recovery`).
    pub(in crate::domain) recovery_secret: Vec<u8>,
    /// Writes concurrent refreshes' rotations in shared statements (`sessions::rotations`).
    pub(in crate::domain) rotations: RotationBatcher,
}

impl std::fmt::Debug for Authd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authd").finish_non_exhaustive()
    }
}

impl Authd {
    /// Loads (or on first start creates) the shared signing key and the audit secret, and prepares
    /// the password hasher. Migrations must have run.
    pub async fn init(settings: Settings, pool: Pool, clock: SharedClock) -> Result<Arc<Self>> {
        let now = clock.now();
        let master = settings
            .keys
            .master_key
            .as_ref()
            .map(|k| k.expose().as_str())
            .filter(|k| !k.is_empty())
            .map(MasterKey::parse)
            .transpose()?;
        if master.is_none() {
            tracing::warn!(
                "AUTHD_MASTER_KEY is not set: signing keys and server secrets are stored \
                 unencrypted in the database"
            );
        }
        let mailer = Arc::new(crate::domain::mail::Mailer::new(
            settings.mail.clone(),
            settings
                .keys
                .master_key
                .as_ref()
                .map(|k| k.expose().as_str())
                .filter(|k| !k.is_empty()),
        )?);
        let keystore = KeyStore::new(master);
        let rate_limiter = IpRateLimiter::new(settings.throttle.rate_limit_per_ip);
        let proxy_budget = ProxyKeyBudget::new(settings.throttle.proxy_key_max_failures_per_minute);
        let hasher = PasswordHasher::from_settings(&settings.passwords).await?;
        let mut conn = db::conn(&pool).await?;
        keystore.ensure_signing_key(&mut conn, now).await?;
        // A fresh "now": a replica starting at the same moment may have created the first key (active
        // from its own "now") after ours was taken; with ours the key would not be active yet.
        let keyring = keystore.load_keyring(&mut conn, clock.now()).await?;
        let audit_secret = keystore.secret(&mut conn, AUDIT_SECRET, now).await?;
        let resume_secret = keystore
            .secret(&mut conn, crate::domain::watch::RESUME_SECRET, now)
            .await?;
        let recovery_secret = keystore
            .secret(&mut conn, crate::domain::mfa::RECOVERY_SECRET, now)
            .await?;
        let refresh_secret = keystore
            .secret(&mut conn, crate::domain::opaque::REFRESH_SECRET, now)
            .await?;
        let views = Views::new();
        let token_cache = TokenCache::new(settings.access.token_cache_size);
        views.sync(&mut conn, clock.now()).await?;
        drop(conn);
        tracing::info!(keys = ?keyring, "keyring loaded");
        let rotations = RotationBatcher::start(
            pool.clone(),
            usize::try_from(settings.sessions.refresh_batch_max).unwrap_or(1),
            usize::try_from(settings.sessions.refresh_batch_writers).unwrap_or(1),
        );
        Ok(Arc::new(Self {
            pool,
            settings,
            clock,
            hasher,
            keystore,
            keyring: RwLock::new(Arc::new(keyring)),
            audit_secret,
            rate_limiter,
            proxy_budget,
            views,
            token_cache,
            key_digests: crate::domain::key_digests::KeyDigests::new(),
            keys_changed: tokio::sync::watch::channel(0).0,
            resume_secret,
            refresh_secret,
            watch_streams: Arc::new(AtomicUsize::new(0)),
            mailer,
            reset_wake: tokio::sync::Notify::new(),
            recovery_secret,
            rotations,
        }))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// "Now" at PostgreSQL's precision (microseconds), so that a time written to the database and
    /// read back compares exactly with the `now` it was computed from (e.g. `refresh_expires_in` is
    /// a whole 7 days, not 6 days 23:59:59, and the grace window is measured exactly).
    pub(in crate::domain) fn now(&self) -> DateTime<Utc> {
        chrono::SubsecRound::trunc_subsecs(self.clock.now(), 6)
    }

    pub(in crate::domain) fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(in crate::domain) fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// For tests: occupies a place in the bcrypt pool until released (see [`PasswordHasher::hold`]).
    #[doc(hidden)]
    pub fn hold_bcrypt(&self) -> Result<passwords::Hold> {
        self.hasher.hold()
    }

    /// For tests: a hold in the bcrypt queue of `client`, counted as a job of `expected` run time
    /// (see [`PasswordHasher::hold_for`]).
    #[doc(hidden)]
    pub fn hold_bcrypt_for(
        &self,
        client: Option<super::ClientKey>,
        expected: std::time::Duration,
    ) -> Result<passwords::Hold> {
        self.hasher.hold_for(client, expected)
    }

    /// For tests: how many password checks wait for a bcrypt thread.
    #[doc(hidden)]
    pub fn bcrypt_waiting(&self) -> usize {
        self.hasher.waiting()
    }

    /// For tests: how many failed password checks were padded to the configured bcrypt cost.
    #[doc(hidden)]
    pub fn bcrypt_padded_checks(&self) -> u64 {
        self.hasher.padded_checks()
    }

    /// For tests: reserves one password check of the login e-mail `email` (normalized) from
    /// `client` (a [`super::ClientKey`] string) and drops it unchecked, as a Login call cancelled
    /// between its reservation and its password check leaves it behind.
    #[doc(hidden)]
    pub async fn abandon_login_reservation(&self, email: &str, client: &str) -> Result<()> {
        let key = throttle::login_key("email", email);
        let mut conn = self.conn().await?;
        let reservation =
            throttle::reserve(&mut conn, self.throttle_policy(), &key, client, self.now()).await?;
        drop(reservation);
        Ok(())
    }

    pub(in crate::domain) fn throttle_policy(&self) -> throttle::Policy {
        throttle::Policy {
            max_failures: self.settings.throttle.login_max_failures,
            max_failures_per_hour: self.settings.throttle.login_max_failures_per_hour,
        }
    }

    /// Takes back a reservation whose password was never checked. Best effort: if this fails, the
    /// reservation stays counted as a failure, which is the safe side.
    pub(in crate::domain) async fn take_back(&self, reservation: throttle::Reservation) {
        let undone = match self.conn().await {
            Ok(mut conn) => reservation.unchecked(&mut conn).await,
            Err(e) => Err(e),
        };
        if let Err(e) = undone {
            tracing::warn!(error = %e, "an unchecked password reservation stays counted");
        }
    }

    /// The failure budget of proxy service keys.
    pub(in crate::domain) fn proxy_budget(&self) -> &ProxyKeyBudget {
        &self.proxy_budget
    }

    /// Forgets idle per-IP rate-limit buckets (call periodically).
    pub fn rate_limit_housekeeping(&self) {
        self.rate_limiter.housekeeping();
    }

    pub(in crate::domain) async fn conn(&self) -> Result<db::Conn> {
        Ok(db::conn(&self.pool).await?)
    }

    /// The in-memory revocation and service-key views.
    pub fn views(&self) -> &Views {
        &self.views
    }

    /// Refreshes the views from the database (the background poll, every 250 ms).
    pub async fn sync_views(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        self.views.sync(&mut conn, self.now()).await?;
        Ok(())
    }
}

/// Converts a configured duration, capped at 100 years so that `now + d` can never overflow.
pub(in crate::domain) fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    let cap = chrono::Duration::days(36_500);
    chrono::Duration::from_std(d).map_or(cap, |d| d.min(cap))
}
