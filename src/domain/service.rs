//! [`Authd`]: the operations of the service (accounts, sessions, tokens, service keys) over the pool,
//! the keyring, the password hasher and the injected clock.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::audit::{self, AuditEntry, AuditKind};
use super::keystore::{KeyStore, MasterKey};
use super::opaque::{self, HashedToken, MAX_OPAQUE_BYTES, ReplayBox};
use super::password::{self, PasswordHasher};
use super::throttle::{self, IpRateLimiter, ProxyKeyBudget};
use super::tokens::{
    self, AccessClaims, Keyring, PublicJwk, TokenCache, TokenError, VerifiedToken,
};
use super::views::{ServiceKeyEntry, Views};
use super::{AuthFailure, ClientInfo, ClientKey, Error, Principal, Result, Role, validate};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::db::models::{NewRefreshToken, NewServiceKey, NewSession, RefreshToken, Session};
use crate::db::{self, DbError, Pool, service_keys, sessions, users};

/// Name of the server secret that keys the audit digests of unknown login identifiers.
const AUDIT_SECRET: &str = "audit_identifier_hmac";
/// `last_use_time` of a service key is written at most this often.
const SERVICE_KEY_TOUCH_SECS: i64 = 60;

/// An account as the API shows it (never the password hash).
#[derive(Debug, Clone)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub active: bool,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub last_login_time: Option<DateTime<Utc>>,
}

impl TryFrom<db::models::User> for Account {
    type Error = Error;
    fn try_from(u: db::models::User) -> Result<Self> {
        let role = Role::parse(&u.role).ok_or_else(|| {
            Error::internal(format!("user {} has unknown role {:?}", u.id, u.role))
        })?;
        Ok(Account {
            id: u.id,
            email: u.email,
            username: u.username,
            first_name: u.first_name,
            last_name: u.last_name,
            role,
            active: u.active,
            create_time: u.create_time,
            update_time: u.update_time,
            last_login_time: u.last_login_time,
        })
    }
}

/// What Register (and admin creation) takes. Its Debug hides the password.
#[derive(Clone, Default)]
pub struct NewAccount {
    pub email: String,
    pub password: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be added without deciding how it is shown.
        let NewAccount {
            email,
            password: _,
            username,
            first_name,
            last_name,
        } = self;
        f.debug_struct("NewAccount")
            .field("email", email)
            .field("password", &REDACTED)
            .field("username", username)
            .field("first_name", first_name)
            .field("last_name", last_name)
            .finish()
    }
}

/// What Debug shows in place of a password, token or key.
pub const REDACTED: &str = "<redacted>";

/// How Login names the account.
#[derive(Debug, Clone)]
pub enum LoginIdentifier {
    Email(String),
    Username(String),
}

/// The credentials Login and Refresh return. Its Debug hides both tokens.
#[derive(Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub refresh_expires_in: i64,
    pub session_id: Uuid,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TokenPair {
            access_token: _,
            refresh_token: _,
            expires_in,
            refresh_expires_in,
            session_id,
        } = self;
        f.debug_struct("TokenPair")
            .field("access_token", &REDACTED)
            .field("refresh_token", &REDACTED)
            .field("expires_in", expires_in)
            .field("refresh_expires_in", refresh_expires_in)
            .field("session_id", session_id)
            .finish()
    }
}

/// The answer of ValidateToken; `None` means "not a live access token".
pub type Introspection = Option<Arc<VerifiedToken>>;

/// Who calls ValidateToken, as the transport established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A TLS client whose certificate verified against `AUTHD_TLS_CLIENT_CA`: any certificate that
    /// CA signed is a trusted service, so no service key is needed.
    ClientCertificate { subject: String },
    /// Any other caller, with the `x-api-key` it sent, if any.
    ServiceKey(Option<&'a str>),
}

/// A service key's metadata.
#[derive(Debug, Clone)]
pub struct ServiceKeyInfo {
    pub id: Uuid,
    pub name: String,
    pub creator_id: Option<Uuid>,
    pub create_time: DateTime<Utc>,
    pub last_use_time: Option<DateTime<Utc>>,
    pub trusted_proxy: bool,
    pub allowed_cidrs: Vec<String>,
}

/// What CreateServiceKey (and the CLI) asks for.
#[derive(Debug, Clone, Default)]
pub struct ServiceKeySpec {
    /// A label for the calling service.
    pub name: String,
    /// A gateway's key: may name the end user's address in `x-forwarded-for`.
    pub trusted_proxy: bool,
    /// IPs or CIDRs the key may be used from; empty = anywhere.
    pub allowed_cidrs: Vec<String>,
}

impl From<db::models::ServiceKey> for ServiceKeyInfo {
    fn from(k: db::models::ServiceKey) -> Self {
        ServiceKeyInfo {
            id: k.id,
            name: k.name,
            creator_id: k.creator_id,
            create_time: k.create_time,
            last_use_time: k.last_use_time,
            trusted_proxy: k.trusted_proxy,
            allowed_cidrs: k.allowed_cidrs,
        }
    }
}

/// The service. Cheap to share behind an `Arc`.
pub struct Authd {
    pool: Pool,
    config: Arc<Config>,
    clock: SharedClock,
    hasher: PasswordHasher,
    keystore: KeyStore,
    keyring: RwLock<Arc<Keyring>>,
    /// Keys [`audit::identifier_digest`].
    audit_secret: Vec<u8>,
    rate_limiter: IpRateLimiter,
    proxy_budget: ProxyKeyBudget,
    views: Views,
    token_cache: TokenCache,
}

impl std::fmt::Debug for Authd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authd").finish_non_exhaustive()
    }
}

enum RefreshOutcome {
    Rotated(Session, String),
    Replayed(Session, String),
    Reused(Uuid),
    Dead,
}

/// What a spent refresh token presented again gets (see [`Authd::judge_replay`]).
enum Replay {
    /// The immediate predecessor inside its grace window, from a client it may come from: the
    /// current successor, and who spent the token.
    Honoured { successor: String, spender: String },
    /// Anything else is reuse; the text says why, for the audit event.
    Reuse(String),
}

impl Authd {
    /// Loads (or on first start creates) the shared signing key and the audit secret, and prepares
    /// the password hasher. Migrations must have run.
    pub async fn init(pool: Pool, config: Arc<Config>, clock: SharedClock) -> Result<Arc<Self>> {
        let now = clock.now();
        let master = config
            .master_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(MasterKey::parse)
            .transpose()?;
        if master.is_none() {
            tracing::warn!(
                "AUTHD_MASTER_KEY is not set: signing keys and server secrets are stored \
                 unencrypted in the database"
            );
        }
        let keystore = KeyStore::new(master);
        let rate_limiter = IpRateLimiter::new(config.rate_limit_per_ip);
        let proxy_budget = ProxyKeyBudget::new(config.proxy_key_max_failures_per_minute);
        let hasher = PasswordHasher::from_config(&config).await?;
        let mut conn = db::conn(&pool).await?;
        keystore.ensure_signing_key(&mut conn, now).await?;
        // A fresh "now": a replica starting at the same moment may have created the first key (active
        // from its own "now") after ours was taken; with ours the key would not be active yet.
        let keyring = keystore.load_keyring(&mut conn, clock.now()).await?;
        let audit_secret = keystore.secret(&mut conn, AUDIT_SECRET, now).await?;
        let views = Views::new();
        let token_cache = TokenCache::new(config.token_cache_size);
        views.sync(&mut conn, clock.now()).await?;
        drop(conn);
        tracing::info!(keys = ?keyring, "keyring loaded");
        Ok(Arc::new(Self {
            pool,
            config,
            clock,
            hasher,
            keystore,
            keyring: RwLock::new(Arc::new(keyring)),
            audit_secret,
            rate_limiter,
            proxy_budget,
            views,
            token_cache,
        }))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// "Now" at PostgreSQL's precision (microseconds), so that a time written to the database and
    /// read back compares exactly with the `now` it was computed from (e.g. `refresh_expires_in` is
    /// a whole 7 days, not 6 days 23:59:59, and the grace window is measured exactly).
    pub(super) fn now(&self) -> DateTime<Utc> {
        chrono::SubsecRound::trunc_subsecs(self.clock.now(), 6)
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// For tests: occupies a place in the bcrypt pool until released (see [`PasswordHasher::hold`]).
    #[doc(hidden)]
    pub fn hold_bcrypt(&self) -> Result<password::Hold> {
        self.hasher.hold()
    }

    /// For tests: a hold in the bcrypt queue of `client`, counted as a job of `expected` run time
    /// (see [`PasswordHasher::hold_for`]).
    #[doc(hidden)]
    pub fn hold_bcrypt_for(
        &self,
        client: Option<super::ClientKey>,
        expected: std::time::Duration,
    ) -> Result<password::Hold> {
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

    pub(super) fn throttle_policy(&self) -> throttle::Policy {
        throttle::Policy {
            max_failures: self.config.login_max_failures,
            max_failures_per_hour: self.config.login_max_failures_per_hour,
        }
    }

    /// The keyed hash that LOGIN_FAILED events of unknown accounts store instead of the identifier
    /// (see [`audit::identifier_digest`]); `authd audit identifier-digest` prints it for a candidate.
    pub fn audit_identifier_digest(&self, identifier: &LoginIdentifier) -> String {
        let (kind, normalized) = match identifier {
            LoginIdentifier::Email(e) => ("email", validate::normalize_email(e)),
            LoginIdentifier::Username(u) => ("username", u.trim().to_lowercase()),
        };
        audit::identifier_digest(&self.audit_secret, kind, &normalized)
    }

    /// Takes back a reservation whose password was never checked. Best effort: if this fails, the
    /// reservation stays counted as a failure, which is the safe side.
    pub(super) async fn take_back(&self, reservation: throttle::Reservation) {
        let undone = match self.conn().await {
            Ok(mut conn) => reservation.unchecked(&mut conn).await,
            Err(e) => Err(e),
        };
        if let Err(e) = undone {
            tracing::warn!(error = %e, "an unchecked password reservation stays counted");
        }
    }

    /// The failure budget of proxy service keys.
    pub(super) fn proxy_budget(&self) -> &ProxyKeyBudget {
        &self.proxy_budget
    }

    /// Forgets idle per-IP rate-limit buckets (call periodically).
    pub fn rate_limit_housekeeping(&self) {
        self.rate_limiter.housekeeping();
    }

    pub(super) async fn conn(&self) -> Result<db::Conn> {
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

    /// After this replica committed a change that ends sessions or service keys: makes it visible
    /// here at once instead of at the next poll. A failure only delays it to that poll.
    pub(super) async fn views_changed(&self) {
        match self.conn().await {
            Ok(mut conn) => self.views_changed_on(&mut conn).await,
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the revocation view failed; the next poll will");
            }
        }
    }

    /// [`Authd::views_changed`] on a connection the caller already holds.
    async fn views_changed_on(&self, conn: &mut db::PgConn) {
        if let Err(e) = self.views.sync(conn, self.now()).await {
            tracing::warn!(error = %e, "refreshing the revocation view failed; the next poll will");
        }
    }

    // ----- accounts -------------------------------------------------------------------------

    /// Validates and stores a new account, with its USER_CREATED event. Every check runs before bcrypt.
    pub async fn create_account(
        &self,
        input: NewAccount,
        role: Role,
        actor: Option<Uuid>,
        client: &ClientInfo,
        how: &str,
    ) -> Result<Account> {
        let prepared = self.prepare_account(input, client).await?;
        let now = self.now();
        let row = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                insert_account(conn, &prepared, role, actor, client, how, now).await
            })
            .await
            .map_err(uniqueness_error)?;
        Account::try_from(row)
    }

    /// The checks of a new account, then its password hash.
    async fn prepare_account(
        &self,
        input: NewAccount,
        client: &ClientInfo,
    ) -> Result<PreparedAccount> {
        let email = validate::email(&input.email)?;
        let username = validate::username(&input.username)?;
        let first_name = validate::person_name("first_name", &input.first_name)?;
        let last_name = validate::person_name("last_name", &input.last_name)?;
        let password = password::new_password("password", &input.password)?;
        password::check_strength(
            "password",
            &password,
            self.config.min_password_score,
            &[&email, username.as_deref().unwrap_or_default()],
        )?;
        let hash = self.hasher.hash(password, client).await?;
        Ok(PreparedAccount {
            email,
            username,
            first_name,
            last_name,
            hash,
        })
    }

    /// Register: always an active ROLE_USER; refused when registration is closed.
    pub async fn register(&self, input: NewAccount, client: &ClientInfo) -> Result<Account> {
        self.rate_limiter.check(client.ip)?;
        if !self.config.allow_registration {
            return Err(Error::PermissionDenied("registration is closed".into()));
        }
        self.create_account(input, Role::User, None, client, "registration")
            .await
    }

    /// Creates the bootstrap admin, only while no active admin exists: a deleted or deactivated
    /// bootstrap admin does not come back at the next start while another active admin exists.
    /// The check and the insert run in one transaction under the lock that also guards the last
    /// active admin (`users::lock_active_admins`), so replicas starting together create it once.
    pub async fn ensure_bootstrap_admin(&self, email: &str, password: &str) -> Result<()> {
        let normalized = validate::email(email)?;
        // Most starts find an admin: no bcrypt work for them.
        if users::any_active_admin(&mut *self.conn().await?).await? {
            return Ok(());
        }
        let input = NewAccount {
            email: normalized.clone(),
            password: password.to_owned(),
            ..Default::default()
        };
        let client = ClientInfo::default();
        let prepared = self.prepare_account(input, &client).await?;
        let now = self.now();
        let outcome = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                if !users::lock_active_admins(conn).await?.is_empty() {
                    return Ok(None);
                }
                if let Some(u) = users::find_by_email(conn, &normalized).await? {
                    return Ok(Some(Err(u.id)));
                }
                let row = insert_account(
                    conn,
                    &prepared,
                    Role::Admin,
                    None,
                    &client,
                    "bootstrap admin",
                    now,
                )
                .await?;
                Ok(Some(Ok(row.id)))
            })
            .await
            .map_err(uniqueness_error)?;
        match outcome {
            None => {}
            Some(Ok(id)) => tracing::info!(user_id = %id, "bootstrap admin created"),
            Some(Err(id)) => tracing::warn!(
                user_id = %id,
                "no active admin, but the bootstrap admin e-mail belongs to an existing account \
                 (inactive, or not an admin); left unchanged: use `authd users create-admin`"
            ),
        }
        Ok(())
    }

    pub async fn get_me(&self, p: &Principal) -> Result<Account> {
        let row = users::find_by_id(&mut *self.conn().await?, p.user_id)
            .await?
            .ok_or_else(|| Error::NotFound("user not found".into()))?;
        Account::try_from(row)
    }

    // ----- login, refresh, logout ----------------------------------------------------------------

    /// Password login. Unknown accounts, wrong passwords and credentials that cannot match all answer
    /// the same UNAUTHENTICATED, after the same bcrypt work.
    pub async fn login(
        &self,
        identifier: Option<LoginIdentifier>,
        password: &str,
        client: &ClientInfo,
    ) -> Result<TokenPair> {
        self.rate_limiter
            .check(client.ip)
            .inspect_err(count_throttled)?;
        let identifier =
            identifier.ok_or_else(|| Error::invalid("an email or username is required"))?;
        let raw_id = match &identifier {
            LoginIdentifier::Email(s) | LoginIdentifier::Username(s) => s,
        };
        if raw_id.trim().is_empty() {
            return Err(Error::invalid("an email or username is required"));
        }
        if raw_id.len() > validate::MAX_IDENTIFIER_BYTES {
            return Err(Error::invalid(format!(
                "the identifier must be at most {} bytes",
                validate::MAX_IDENTIFIER_BYTES
            )));
        }
        let password = password::presented_password("password", password)?;
        // A check the bcrypt pool would refuse is refused before any database work.
        self.hasher.precheck(client)?;

        // Throttling is keyed by the normalized identifier whether or not an account has it.
        let throttle_key = match &identifier {
            LoginIdentifier::Email(e) => {
                throttle::login_key("email", &validate::normalize_email(e))
            }
            LoginIdentifier::Username(u) => {
                throttle::login_key("username", &u.trim().to_lowercase())
            }
        };
        // A gateway's proxy key has a budget of failed checks (see `throttle`); reserved before
        // bcrypt, given back unless the password turns out wrong.
        let budget = self
            .proxy_budget
            .reserve(client.proxy_key, self.now())
            .inspect_err(count_throttled)?;
        // Reserved (and counted as a failure) before bcrypt runs: see `throttle`.
        let client_key = client.key_string();
        let (reservation, user) = {
            let mut conn = self.conn().await?;
            let reservation = throttle::reserve(
                &mut conn,
                self.throttle_policy(),
                &throttle_key,
                &client_key,
                self.now(),
            )
            .await
            .inspect_err(count_throttled)?;
            let user = match &identifier {
                LoginIdentifier::Email(e) => {
                    let e = validate::normalize_email(e);
                    if validate::is_valid_email(&e) {
                        users::find_by_email(&mut conn, &e).await?
                    } else {
                        None
                    }
                }
                LoginIdentifier::Username(u) => {
                    if validate::is_valid_username(u.trim()) {
                        users::find_by_username(&mut conn, u.trim()).await?
                    } else {
                        None
                    }
                }
            };
            (reservation, user)
        };
        let verified = self
            .hasher
            .verify(
                password.clone(),
                user.as_ref().map(|u| u.password_hash.as_str()),
                client,
            )
            .await;
        let ok = match verified {
            Ok(ok) => ok,
            Err(e) => {
                self.take_back(reservation).await;
                return Err(e);
            }
        };
        if ok {
            drop(budget);
        } else {
            budget.failed();
        }
        if ok {
            let known = match &user {
                Some(u) if u.active => {
                    throttle::account_keys(u.id, &u.email, u.username.as_deref())
                }
                _ => Vec::new(),
            };
            reservation
                .succeeded(&mut *self.conn().await?, &known, self.now())
                .await?;
        } else {
            reservation.failed();
        }
        let user = match user {
            Some(u) if ok && u.active => u,
            user => {
                let (reason, denial) = match &user {
                    Some(u) if ok && !u.active => (
                        "account disabled",
                        Error::PermissionDenied("account disabled".into()),
                    ),
                    Some(_) => (
                        "wrong password",
                        Error::Unauthenticated(AuthFailure::BadCredentials),
                    ),
                    None => (
                        "unknown account",
                        Error::Unauthenticated(AuthFailure::BadCredentials),
                    ),
                };
                count_login(if ok { "disabled" } else { "failure" });
                // A known account's identifier is stored (sanitized) with its user id; an unknown
                // one only as a keyed hash: it is often a password typed into the wrong field.
                let entry = match &user {
                    Some(u) => {
                        let id = audit::sanitize(raw_id.trim(), audit::MAX_IDENTIFIER_CHARS);
                        AuditEntry::new(AuditKind::LoginFailed, client)
                            .detail(format!("{reason}; identifier {id:?}"))
                            .user(u.id)
                    }
                    None => AuditEntry::new(AuditKind::LoginFailed, client).detail(format!(
                        "{reason}; identifier {}",
                        self.audit_identifier_digest(&identifier)
                    )),
                };
                audit::record(&mut *self.conn().await?, self.now(), entry).await?;
                return Err(denial);
            }
        };

        // The upgrade is an optimisation: a full bcrypt pool postpones it to a later login rather
        // than refusing a login whose password was right.
        match self.upgrade_hash_cost(&user, password, client).await {
            Err(Error::ResourceExhausted { .. }) => {
                tracing::debug!(user_id = %user.id, "bcrypt pool full; hash cost upgrade postponed");
            }
            other => other?,
        }

        let now = self.now();
        let refresh_token = opaque::new_refresh_token();
        let token_hash = HashedToken::of(&refresh_token);
        let session_id = Uuid::new_v4();
        let expire_time = now + chrono_duration(self.config.session_max_lifetime);
        let idle_expire_time =
            (now + chrono_duration(self.config.refresh_token_ttl)).min(expire_time);
        let ip = client.ip_string();
        let new_session = NewSession {
            id: session_id,
            user_id: user.id,
            generation: 0,
            create_time: now,
            last_use_time: now,
            idle_expire_time,
            expire_time,
            user_agent: &client.user_agent,
            ip_address: &ip,
            access_expire_time: self.access_expire_time(now, idle_expire_time),
        };
        let new_token = NewRefreshToken {
            token_hash: token_hash.as_bytes(),
            session_id,
            generation: 0,
            create_time: now,
        };
        let mut conn = self.conn().await?;
        let session = conn
            .transaction::<_, DbError, _>(async |conn| {
                let s = sessions::insert(conn, &new_session, &new_token).await?;
                users::set_last_login(conn, user.id, now).await?;
                let entry = AuditEntry::new(AuditKind::LoginSucceeded, client)
                    .user(user.id)
                    .actor(Some(user.id))
                    .detail(format!("session {session_id}"));
                audit::record(conn, now, entry).await?;
                Ok(s)
            })
            .await?;
        drop(conn);
        count_login("success");
        self.token_pair(TokenSubject::of(&user), &session, refresh_token, now)
    }

    /// After a successful login: re-hashes a password whose stored hash is cheaper than the configured
    /// cost. The update only applies if the hash did not change meanwhile.
    async fn upgrade_hash_cost(
        &self,
        user: &db::models::User,
        password: Option<String>,
        client: &ClientInfo,
    ) -> Result<()> {
        let Some(password) = password else {
            return Ok(());
        };
        match password::hash_cost(&user.password_hash) {
            Some(cost) if cost < self.hasher.cost() => {}
            _ => return Ok(()),
        }
        let hash = self.hasher.hash(password, client).await?;
        users::replace_password_hash(
            &mut *self.conn().await?,
            user.id,
            &user.password_hash,
            &hash,
        )
        .await?;
        tracing::info!(user_id = %user.id, cost = self.hasher.cost(), "password hash upgraded");
        Ok(())
    }

    /// Rotates a refresh token into a random successor (see the module docs of `opaque`). A spent
    /// token presented again is reuse and revokes the session, except the immediate predecessor
    /// inside `AUTHD_REFRESH_REUSE_GRACE`, from the client that spent it (unless
    /// `AUTHD_REFRESH_REPLAY_SAME_CLIENT=false`): that replay gets the current successor, audited
    /// as REFRESH_REPLAYED.
    pub async fn refresh(&self, refresh_token: &str, client: &ClientInfo) -> Result<TokenPair> {
        self.rate_limiter.check(client.ip)?;
        let refresh_token = refresh_token.trim();
        if refresh_token.is_empty() {
            return Err(Error::invalid("refresh_token is required"));
        }
        if refresh_token.len() > MAX_OPAQUE_BYTES {
            return Err(Error::invalid(format!(
                "refresh_token must be at most {MAX_OPAQUE_BYTES} bytes"
            )));
        }
        let presented = HashedToken::of(refresh_token);
        let successor = opaque::new_refresh_token();
        let successor_hash = HashedToken::of(&successor);
        let now = self.now();
        let grace = chrono_duration(self.config.refresh_reuse_grace);
        // Only a holder of the token being spent can open this (see `opaque::ReplayBox`).
        let replay_box =
            (grace > chrono::Duration::zero()).then(|| ReplayBox::seal(refresh_token, &successor));
        let ip = client.ip_string();
        let rotation = sessions::Rotation {
            successor_hash: successor_hash.as_bytes(),
            now,
            idle_expire_time: now + chrono_duration(self.config.refresh_token_ttl),
            access_expire_time: now + chrono_duration(self.config.access_token_ttl),
            replay_box: replay_box.as_deref(),
            replay_until: replay_box.as_ref().map(|_| now + grace),
            rotate_ip: &ip,
        };

        let mut conn = self.conn().await?;
        // The normal case in one statement; replays, reuse and dead tokens take the slow path.
        let rotated = conn
            .guarded(async |c| sessions::rotate_unspent(c, presented.as_bytes(), &rotation).await)
            .await?;
        if let Some(r) = rotated {
            drop(conn);
            if !r.user_active {
                return Err(Error::Unauthenticated(AuthFailure::BadRefreshToken));
            }
            let subject = TokenSubject {
                user_id: r.session.user_id,
                role: &r.user_role,
                email: &r.user_email,
                username: r.user_username.as_deref(),
            };
            return self.token_pair(subject, &r.session, successor, now);
        }
        let outcome = conn
            .transaction::<_, DbError, _>(async |conn| {
                let Some((token, session)) =
                    sessions::lock_by_refresh_hash(conn, presented.as_bytes()).await?
                else {
                    return Ok(RefreshOutcome::Dead);
                };
                if session.revoke_time.is_some()
                    || now >= session.expire_time
                    || now >= session.idle_expire_time
                {
                    return Ok(RefreshOutcome::Dead);
                }
                if token.spend_time.is_none() {
                    let s =
                        sessions::rotate(conn, &session, presented.as_bytes(), &rotation).await?;
                    return Ok(RefreshOutcome::Rotated(s, successor));
                }
                match self.judge_replay(&token, &session, refresh_token, client, now) {
                    Replay::Honoured { successor, spender } => {
                        let exp = self.access_expire_time(now, session_end(&session));
                        sessions::extend_access(conn, session.id, exp).await?;
                        let entry = AuditEntry::new(AuditKind::RefreshReplayed, client)
                            .user(session.user_id)
                            .detail(format!(
                                "session {}; generation {} replayed from {} within the grace \
                                 window; spent by {}",
                                session.id,
                                token.generation,
                                show_ip(&ip),
                                show_ip(&spender)
                            ));
                        audit::record(conn, now, entry).await?;
                        Ok(RefreshOutcome::Replayed(session, successor))
                    }
                    Replay::Reuse(why) => {
                        sessions::revoke(conn, session.id, now, "refresh_token_reuse").await?;
                        let entry = AuditEntry::new(AuditKind::RefreshReuseDetected, client)
                            .user(session.user_id)
                            .detail(format!(
                                "session {} revoked; generation {} presented, current {}{why}",
                                session.id, token.generation, session.generation
                            ));
                        audit::record(conn, now, entry).await?;
                        Ok(RefreshOutcome::Reused(session.id))
                    }
                }
            })
            .await?;

        let (session, token) = match outcome {
            RefreshOutcome::Rotated(s, t) | RefreshOutcome::Replayed(s, t) => (s, t),
            RefreshOutcome::Reused(session_id) => {
                drop(conn);
                self.views_changed().await;
                metrics::counter!(crate::metric_names::REFRESH_REUSE_DETECTED).increment(1);
                tracing::warn!(%session_id, "refresh token reuse detected; session revoked");
                return Err(Error::Unauthenticated(AuthFailure::BadRefreshToken));
            }
            RefreshOutcome::Dead => {
                return Err(Error::Unauthenticated(AuthFailure::BadRefreshToken));
            }
        };
        let user = users::find_by_id(&mut conn, session.user_id)
            .await?
            .filter(|u| u.active)
            .ok_or(Error::Unauthenticated(AuthFailure::BadRefreshToken))?;
        drop(conn);
        self.token_pair(TokenSubject::of(&user), &session, token, now)
    }

    /// Whether `spent` (the spent refresh token `token` of the live, locked `session`), presented
    /// again by `client`, is an honoured grace replay: the immediate predecessor of the current
    /// token, inside the window the rotating replica recorded, whose sealed successor it opens, from
    /// the client (address, or IPv6 /64) that spent it unless that binding is off.
    fn judge_replay(
        &self,
        token: &RefreshToken,
        session: &Session,
        spent: &str,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Replay {
        let window = match (&session.replay_box, session.replay_until) {
            (Some(sealed), Some(until))
                if token.generation.checked_add(1) == Some(session.generation) && now <= until =>
            {
                Some(sealed)
            }
            _ => None,
        };
        let Some(successor) = window.and_then(|sealed| ReplayBox::open(spent, sealed)) else {
            return Replay::Reuse(String::new());
        };
        let spender = session.rotate_ip.clone().unwrap_or_default();
        let spender_key = spender.parse().ok().map(ClientKey::of);
        if self.config.refresh_replay_same_client && spender_key != client.key() {
            return Replay::Reuse(format!(
                "; replayed within the grace window from {}, but spent by {}",
                show_ip(&client.ip_string()),
                show_ip(&spender)
            ));
        }
        Replay::Honoured { successor, spender }
    }

    /// Clears what grace replays needed once their windows are over (the background sweep, every
    /// second): after the window nothing of a successor stays in the database, even sealed.
    pub async fn clear_replays(&self) -> Result<usize> {
        Ok(sessions::clear_replays(&mut *self.conn().await?, self.now()).await?)
    }

    /// The `exp` of an access token issued at `now` for a session whose refresh token lasts until
    /// `session_end`: the token never outlives its session (the revocation view relies on that).
    fn access_expire_time(&self, now: DateTime<Utc>, session_end: DateTime<Utc>) -> DateTime<Utc> {
        (now + chrono_duration(self.config.access_token_ttl)).min(session_end)
    }

    /// Signs an access token for `session` and pairs it with `refresh_token`. The access token never
    /// outlives the session's idle or absolute expiry (the revocation view relies on that).
    fn token_pair(
        &self,
        user: TokenSubject<'_>,
        session: &Session,
        refresh_token: String,
        now: DateTime<Utc>,
    ) -> Result<TokenPair> {
        let refresh_end = session_end(session);
        let exp = self.access_expire_time(now, refresh_end);
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user.user_id.to_string(),
            exp: exp.timestamp(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: Uuid::new_v4().to_string(),
            client_id: self.config.issuer.clone(),
            sid: session.id.to_string(),
            role: user.role.to_owned(),
            email: user.email.to_owned(),
            preferred_username: user.username.map(str::to_owned),
        };
        let access_token = self.keyring().sign(&claims)?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            expires_in: (exp - now).num_seconds().max(0),
            refresh_expires_in: (refresh_end - now).num_seconds().max(0),
            session_id: session.id,
        })
    }

    /// Logout by refresh token (RFC 7009): revokes its session; unknown tokens are fine.
    pub async fn logout_by_refresh_token(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        // Like Refresh, an anonymous call that costs a lookup: it shares the per-IP rate limit.
        self.rate_limiter.check(client.ip)?;
        let refresh_token = refresh_token.trim();
        if refresh_token.len() > MAX_OPAQUE_BYTES {
            return Err(Error::invalid(format!(
                "refresh_token must be at most {MAX_OPAQUE_BYTES} bytes"
            )));
        }
        let hash = HashedToken::of(refresh_token);
        let mut conn = self.conn().await?;
        if let Some(s) = sessions::find_by_refresh_hash(&mut conn, hash.as_bytes()).await? {
            self.end_session(&mut conn, s.user_id, s.id, client).await?;
        }
        Ok(())
    }

    async fn end_session(
        &self,
        conn: &mut db::PgConn,
        user_id: Uuid,
        session_id: Uuid,
        client: &ClientInfo,
    ) -> Result<()> {
        let now = self.now();
        conn.transaction::<_, DbError, _>(async |conn| {
            if sessions::revoke(conn, session_id, now, "logout").await? {
                let entry = AuditEntry::new(AuditKind::Logout, client)
                    .user(user_id)
                    .actor(Some(user_id))
                    .detail(format!("session {session_id}"));
                audit::record(conn, now, entry).await?;
            }
            Ok(())
        })
        .await?;
        self.views_changed_on(conn).await;
        Ok(())
    }

    /// Logout of the bearer's own session.
    pub async fn logout_session(&self, p: &Principal, client: &ClientInfo) -> Result<()> {
        let mut conn = self.conn().await?;
        self.end_session(&mut conn, p.user_id, p.session_id, client)
            .await
    }

    /// Revokes every live session of the caller. Returns how many.
    pub async fn logout_all(&self, p: &Principal, client: &ClientInfo) -> Result<i64> {
        let now = self.now();
        let n = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                let n =
                    sessions::revoke_all_for_user(conn, p.user_id, None, now, "logout_all").await?;
                let entry = AuditEntry::new(AuditKind::LogoutAll, client)
                    .user(p.user_id)
                    .actor(Some(p.user_id))
                    .detail(format!("{n} session(s) revoked"));
                audit::record(conn, now, entry).await?;
                Ok(n)
            })
            .await?;
        self.views_changed().await;
        Ok(n)
    }

    // ----- token checks ---------------------------------------------------------------------------

    /// Verifies an access token: signature and claims (once per token, then from the cache), and,
    /// the first time this replica sees it, that its session exists and is not revoked in the
    /// database, so that a correctly signed token of a session that never existed is refused too.
    /// Revocation after that is the revocation view's job, checked by every caller.
    async fn verify_access_token(&self, token: &str) -> Result<Arc<VerifiedToken>> {
        let invalid = |e: TokenError| {
            Error::Unauthenticated(match e {
                TokenError::Expired => AuthFailure::TokenExpired,
                TokenError::Invalid => AuthFailure::TokenInvalid,
            })
        };
        if token.is_empty() || token.len() > tokens::MAX_TOKEN_BYTES {
            return Err(invalid(TokenError::Invalid));
        }
        let keyring = self.keyring();
        let now = self.now();
        let digest = TokenCache::digest(token);
        if let Some(hit) = self.token_cache.get(&keyring, &digest, now) {
            return hit.map_err(invalid);
        }
        let v = keyring
            .verify(token, &self.config.issuer, &self.config.audience, now)
            .map_err(invalid)?;
        if !sessions::is_active(&mut *self.conn().await?, v.session_id).await? {
            return Err(invalid(TokenError::Invalid));
        }
        let v = Arc::new(v);
        self.token_cache.insert(digest, v.clone());
        Ok(v)
    }

    /// Authenticates an `authorization` metadata value: a valid access token of a live session.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let value = authorization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(Error::Unauthenticated(AuthFailure::TokenMissing))?;
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err(Error::Unauthenticated(AuthFailure::TokenInvalid)),
        };
        self.views.check_fresh()?;
        let v = self.verify_access_token(token).await?;
        if self.views.has_ended(v.session_id) {
            return Err(Error::Unauthenticated(AuthFailure::TokenInvalid));
        }
        Ok(Principal {
            user_id: v.user_id,
            session_id: v.session_id,
            role: v.role,
            email: v.email.clone(),
        })
    }

    /// Authenticates a service key (`x-api-key`) presented from `source` (the caller's address as
    /// `AUTHD_TRUSTED_PROXIES` resolve it). Answered from the in-memory view alone: a key it does not
    /// hold (unknown, revoked, or created on another replica since the last poll, 250 ms ago at
    /// most) is refused without a database query. A refused key, or one used from outside its
    /// `allowed_cidrs`, takes a token from the caller's per-IP rate limit, so guessing keys is as
    /// slow as any other abuse from one address.
    pub async fn authenticate_service_key(
        &self,
        key: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<Uuid> {
        let key = key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(Error::Unauthenticated(AuthFailure::ServiceKeyMissing))?;
        self.views.check_fresh()?;
        let entry = (key.len() <= MAX_OPAQUE_BYTES)
            .then(|| HashedToken::of(key))
            .and_then(|hash| {
                self.views
                    .service_key(&hash)
                    .filter(|e| e.matches(&hash) && e.allows(source))
            });
        let Some(entry) = entry else {
            self.rate_limiter.check(source)?;
            return Err(Error::Unauthenticated(AuthFailure::ServiceKeyInvalid));
        };
        let now = self.now();
        let debounce = chrono::Duration::seconds(SERVICE_KEY_TOUCH_SECS);
        if entry.claim_touch(now, debounce) {
            // Off the request path: the caller does not wait for this write.
            let (pool, id) = (self.pool.clone(), entry.id);
            tokio::spawn(async move {
                let touched = async {
                    let mut conn = db::conn(&pool).await?;
                    service_keys::touch(&mut conn, id, now, debounce).await
                };
                if let Err(e) = touched.await {
                    tracing::debug!(error = %e, "recording a service key's last use failed");
                }
            });
        }
        Ok(entry.id)
    }

    /// The unrevoked proxy service key (`trusted_proxy`) presented as `x-api-key`, from the in-memory
    /// view (no database query). `None` for anything else: no key, an unknown or revoked key, a key
    /// that is not a proxy key, or a view that may be stale (the key may have been revoked). The
    /// caller checks the key's `allowed_cidrs` against the address the key was presented from.
    pub fn proxy_key(&self, key: Option<&str>) -> Option<Arc<ServiceKeyEntry>> {
        let key = key.map(str::trim).filter(|k| !k.is_empty())?;
        if key.len() > MAX_OPAQUE_BYTES || self.views.check_fresh().is_err() {
            return None;
        }
        let hash = HashedToken::of(key);
        self.views
            .service_key(&hash)
            .filter(|e| e.trusted_proxy && e.matches(&hash))
    }

    /// ValidateToken: the caller first (a verified client certificate, or a service key; unless
    /// `AUTHD_VALIDATE_REQUIRE_KEY=false`), then the token.
    /// `source` is the caller's address (see [`Authd::authenticate_service_key`]).
    pub async fn validate_token(
        &self,
        caller: Caller<'_>,
        source: Option<IpAddr>,
        token: &str,
    ) -> Result<Introspection> {
        if self.config.validate_require_key {
            match caller {
                Caller::ClientCertificate { subject } => {
                    tracing::debug!(%subject, "ValidateToken caller trusted by its client certificate");
                }
                Caller::ServiceKey(key) => {
                    self.authenticate_service_key(key, source).await?;
                }
            }
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::invalid("access_token is required"));
        }
        if token.len() > tokens::MAX_TOKEN_BYTES {
            return Err(Error::invalid(format!(
                "access_token must be at most {} bytes",
                tokens::MAX_TOKEN_BYTES
            )));
        }
        // Fail closed before looking at the token: a stale view cannot vouch for any session.
        self.views.check_fresh()?;
        let v = match self.verify_access_token(token).await {
            Ok(v) => v,
            Err(Error::Unauthenticated(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if self.views.has_ended(v.session_id) {
            return Ok(None);
        }
        Ok(Some(v))
    }

    /// Re-reads the signing keys, so a rotation made by any replica (or a key whose activation time
    /// has come) takes effect here.
    pub async fn reload_keys(&self) -> Result<()> {
        let keyring = self
            .keystore
            .load_keyring(&mut *self.conn().await?, self.now())
            .await?;
        *self.keyring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keyring);
        Ok(())
    }

    /// ADMIN (or the CLI, with no principal): adds a signing key. It is published at once and signs
    /// after `AUTHD_KEY_PUBLISH_DELAY`; older keys retire once their tokens have expired.
    pub async fn rotate_signing_key(
        &self,
        actor: Option<&Principal>,
    ) -> Result<(String, DateTime<Utc>)> {
        if let Some(p) = actor {
            p.require(Role::Admin)?;
        }
        let (kid, activate_time) = self
            .keystore
            .rotate(
                &mut *self.conn().await?,
                self.now(),
                chrono_duration(self.config.key_publish_delay),
                chrono_duration(self.config.access_token_ttl),
            )
            .await?;
        self.reload_keys().await?;
        tracing::info!(%kid, %activate_time, actor = ?actor.map(|p| p.user_id), "signing key rotated");
        Ok((kid, activate_time))
    }

    /// The public keys for JWKS.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.keyring().jwks().to_vec()
    }

    // ----- service keys ----------------------------------------------------------------------------

    /// ADMIN (or the CLI, with no principal): creates a plain service key (see
    /// [`Authd::create_service_key_with`]).
    pub async fn create_service_key(
        &self,
        actor: Option<&Principal>,
        name: &str,
        client: &ClientInfo,
    ) -> Result<(ServiceKeyInfo, String)> {
        let spec = ServiceKeySpec {
            name: name.to_owned(),
            ..Default::default()
        };
        self.create_service_key_with(actor, &spec, client).await
    }

    /// ADMIN (or the CLI, with no principal): creates a service key, a proxy key if
    /// `spec.trusted_proxy`. Returns its metadata and the key. It is usable on this replica at once,
    /// on the others after their next poll of the view.
    pub async fn create_service_key_with(
        &self,
        actor: Option<&Principal>,
        spec: &ServiceKeySpec,
        client: &ClientInfo,
    ) -> Result<(ServiceKeyInfo, String)> {
        if let Some(p) = actor {
            p.require(Role::Admin)?;
        }
        let name = validate::label("name", &spec.name)?;
        let allowed_cidrs = validate::cidrs("allowed_cidrs", &spec.allowed_cidrs)?;
        let key = opaque::new_service_key();
        let hash = HashedToken::of(&key);
        let now = self.now();
        let new_key = NewServiceKey {
            id: Uuid::new_v4(),
            name: &name,
            key_hash: hash.as_bytes(),
            creator_id: actor.map(|p| p.user_id),
            create_time: now,
            trusted_proxy: spec.trusted_proxy,
            allowed_cidrs: &allowed_cidrs,
        };
        let mut detail = format!("service key {} ({})", new_key.id, name);
        if spec.trusted_proxy {
            detail.push_str("; trusted proxy");
        }
        if !allowed_cidrs.is_empty() {
            detail.push_str(&format!("; allowed from {}", allowed_cidrs.join(", ")));
        }
        let row = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                let row = service_keys::insert(conn, &new_key).await?;
                let entry = AuditEntry::new(AuditKind::ServiceKeyCreated, client)
                    .actor(row.creator_id)
                    .detail(detail);
                audit::record(conn, now, entry).await?;
                Ok(row)
            })
            .await?;
        self.views_changed().await;
        Ok((row.into(), key))
    }

    pub async fn list_service_keys(&self, actor: &Principal) -> Result<Vec<ServiceKeyInfo>> {
        actor.require(Role::Admin)?;
        let rows = service_keys::list_active(&mut *self.conn().await?).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn revoke_service_key(
        &self,
        actor: &Principal,
        id: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        actor.require(Role::Admin)?;
        let id = validate::uuid("id", id)?;
        let now = self.now();
        let revoked = self
            .conn()
            .await?
            .transaction::<_, DbError, _>(async |conn| {
                let revoked = service_keys::revoke(conn, id, now).await?;
                if revoked {
                    let entry = AuditEntry::new(AuditKind::ServiceKeyRevoked, client)
                        .actor(Some(actor.user_id))
                        .detail(format!("service key {id}"));
                    audit::record(conn, now, entry).await?;
                }
                Ok(revoked)
            })
            .await?;
        if revoked {
            self.views_changed().await;
            Ok(())
        } else {
            Err(Error::NotFound("service key not found".into()))
        }
    }
}

/// What an access token says about its user.
struct TokenSubject<'a> {
    user_id: Uuid,
    role: &'a str,
    email: &'a str,
    username: Option<&'a str>,
}

impl<'a> TokenSubject<'a> {
    fn of(user: &'a db::models::User) -> Self {
        Self {
            user_id: user.id,
            role: &user.role,
            email: &user.email,
            username: user.username.as_deref(),
        }
    }
}

/// When a session's refresh token stops working: its idle or its absolute expiry.
fn session_end(session: &Session) -> DateTime<Utc> {
    session.idle_expire_time.min(session.expire_time)
}

/// An address for an audit detail (`unknown` when the transport did not give one).
fn show_ip(ip: &str) -> &str {
    if ip.is_empty() { "unknown" } else { ip }
}

/// Counts a login decision in `authd_logins_total{result}`: success, failure (wrong password or
/// unknown account), disabled, throttled.
fn count_login(result: &'static str) {
    metrics::counter!(crate::metric_names::LOGINS, "result" => result).increment(1);
}

/// Counts a login refused by the rate limit or the password-guessing throttle.
fn count_throttled(e: &Error) {
    if matches!(e, Error::ResourceExhausted { .. }) {
        count_login("throttled");
    }
}

/// A new account that passed its checks, with its password hash.
struct PreparedAccount {
    email: String,
    username: Option<String>,
    first_name: String,
    last_name: String,
    hash: String,
}

/// Inserts a prepared account with its USER_CREATED event (inside the caller's transaction).
async fn insert_account(
    conn: &mut db::PgConn,
    p: &PreparedAccount,
    role: Role,
    actor: Option<Uuid>,
    client: &ClientInfo,
    how: &str,
    now: DateTime<Utc>,
) -> std::result::Result<db::models::User, DbError> {
    let new_user = db::models::NewUser {
        id: Uuid::new_v4(),
        email: &p.email,
        username: p.username.as_deref(),
        first_name: &p.first_name,
        last_name: &p.last_name,
        password_hash: &p.hash,
        role: role.as_str(),
        active: true,
        create_time: now,
        update_time: now,
    };
    let row = users::insert(conn, &new_user).await?;
    let entry = AuditEntry::new(AuditKind::UserCreated, client)
        .user(row.id)
        .actor(actor)
        .detail(format!("{how}; role {}", role.as_str()));
    audit::record(conn, now, entry).await?;
    Ok(row)
}

/// Maps a uniqueness conflict on users to ALREADY_EXISTS.
pub(super) fn uniqueness_error(e: DbError) -> Error {
    match &e {
        DbError::UniqueViolation { constraint } if constraint == users::EMAIL_UNIQUE => {
            Error::AlreadyExists("email is already registered".into())
        }
        DbError::UniqueViolation { constraint } if constraint == users::USERNAME_UNIQUE => {
            Error::AlreadyExists("username is already taken".into())
        }
        _ => e.into(),
    }
}

/// Converts a configured duration, capped at 100 years so that `now + d` can never overflow.
pub(super) fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    let cap = chrono::Duration::days(36_500);
    chrono::Duration::from_std(d).map_or(cap, |d| d.min(cap))
}
