//! Login: password login, its throttling and audit, and the hash-cost upgrade after a success; the
//! insertion of a new session, which VerifyMfa (src/domain/mfa/verify.rs) shares.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::models::{NewSession, Session};
use crate::db::{self, DbError, sessions, users};
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::authd::chrono_duration;
use crate::domain::opaque::{self, HashedToken};
use crate::domain::passwords;
use crate::domain::sessions::{TokenPair, TokenSubject};
use crate::domain::throttle;
use crate::domain::tokens::AMR_PASSWORD;
use crate::domain::{AuthFailure, Authd, ClientInfo, Error, Result, validate};

/// Where a new session comes from: the client of its login and how the user authenticated.
#[derive(Debug, Clone)]
pub(in crate::domain) struct SessionStart<'a> {
    pub ip: &'a str,
    pub user_agent: &'a str,
    /// RFC 8176 methods: `pwd`, and `otp` after a second factor.
    pub amr: &'a [String],
}

/// What a right password gets.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// A new session's token pair.
    Tokens(TokenPair),
    /// The account has a second factor on: no session yet; VerifyMfa takes this ticket.
    MfaRequired(MfaTicket),
}

/// The `mfa_token` of a login that needs its second factor. Its Debug is redacted.
#[derive(Clone)]
pub struct MfaTicket(pub String);

impl std::fmt::Debug for MfaTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaTicket(<redacted>)")
    }
}

/// How Login names the account.
#[derive(Debug, Clone)]
pub enum LoginIdentifier {
    Email(String),
    Username(String),
}

impl Authd {
    /// The keyed hash that LOGIN_FAILED events of unknown accounts store instead of the identifier
    /// (see [`audit::identifier_digest`]); `authd audit identifier-digest` prints it for a candidate.
    pub fn audit_identifier_digest(&self, identifier: &LoginIdentifier) -> String {
        let (kind, normalized) = match identifier {
            LoginIdentifier::Email(e) => ("email", validate::normalize_email(e)),
            LoginIdentifier::Username(u) => ("username", u.trim().to_lowercase()),
        };
        audit::identifier_digest(&self.audit_secret, kind, &normalized)
    }

    /// Password login. Unknown accounts, wrong passwords and credentials that cannot match all answer
    /// the same UNAUTHENTICATED, after the same bcrypt work.
    pub async fn login(
        &self,
        identifier: Option<LoginIdentifier>,
        password: &str,
        client: &ClientInfo,
    ) -> Result<LoginOutcome> {
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
        let password = passwords::presented_password("password", password)?;
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
        // Only after the password check: nothing about the address is revealed before it.
        let unverified = |u: &db::models::User| {
            self.settings.accounts.require_verified_email && !u.email_verified
        };
        let user = match user {
            Some(u) if ok && u.active && !unverified(&u) => u,
            user => {
                let (reason, denial) = match &user {
                    Some(u) if ok && !u.active => (
                        "account disabled",
                        Error::PermissionDenied("account disabled".into()),
                    ),
                    Some(_) if ok => ("email not verified", Error::EmailNotVerified),
                    Some(_) => (
                        "wrong password",
                        Error::Unauthenticated(AuthFailure::BadCredentials),
                    ),
                    None => (
                        "unknown account",
                        Error::Unauthenticated(AuthFailure::BadCredentials),
                    ),
                };
                count_login(match &denial {
                    Error::EmailNotVerified => "unverified",
                    _ if ok => "disabled",
                    _ => "failure",
                });
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

        // A second factor: no session until VerifyMfa (src/domain/mfa/verify.rs).
        if let Some(ticket) = self.mfa_challenge(&user, client).await? {
            return Ok(LoginOutcome::MfaRequired(ticket));
        }

        let now = self.now();
        let ip = client.ip_string();
        let start = SessionStart {
            ip: &ip,
            user_agent: &client.user_agent,
            amr: &[AMR_PASSWORD.to_owned()],
        };
        let mut conn = self.conn().await?;
        let (session, refresh_token) = conn
            .transaction::<_, DbError, _>(async |conn| {
                let (s, refresh_token) = self.insert_session(conn, user.id, &start, now).await?;
                users::set_last_login(conn, user.id, now).await?;
                let entry = AuditEntry::new(AuditKind::LoginSucceeded, client)
                    .user(user.id)
                    .actor(Some(user.id))
                    .detail(format!("session {}", s.id));
                audit::record(conn, now, entry).await?;
                Ok((s, refresh_token))
            })
            .await?;
        drop(conn);
        count_login("success");
        Ok(LoginOutcome::Tokens(self.token_pair(
            TokenSubject::of(&user),
            &session,
            refresh_token,
            now,
        )?))
    }

    /// Inserts a new session of `user_id` and its first refresh token, inside the caller's
    /// transaction. Returns the session and the refresh token.
    pub(in crate::domain) async fn insert_session(
        &self,
        conn: &mut db::PgConn,
        user_id: Uuid,
        start: &SessionStart<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Session, String), DbError> {
        let session_id = Uuid::new_v4();
        let refresh_token = opaque::mint_refresh_token(&self.refresh_secret, session_id, 0);
        let token_hash = HashedToken::of(&refresh_token);
        let expire_time = now + chrono_duration(self.settings.sessions.max_lifetime);
        let idle_expire_time =
            (now + chrono_duration(self.settings.sessions.refresh_token_ttl)).min(expire_time);
        let new_session = NewSession {
            id: session_id,
            user_id,
            generation: 0,
            create_time: now,
            last_use_time: now,
            idle_expire_time,
            expire_time,
            user_agent: start.user_agent,
            ip_address: start.ip,
            access_expire_time: self.access_expire_time(now, idle_expire_time),
            amr: start.amr,
            refresh_hash: token_hash.as_bytes(),
        };
        let session = sessions::insert(conn, &new_session).await?;
        Ok((session, refresh_token))
    }

    /// After a successful login: re-hashes a password whose stored hash is cheaper than the configured
    /// cost. The update only applies if the hash did not change meanwhile.
    pub(in crate::domain) async fn upgrade_hash_cost(
        &self,
        user: &db::models::User,
        password: Option<String>,
        client: &ClientInfo,
    ) -> Result<()> {
        let Some(password) = password else {
            return Ok(());
        };
        match passwords::hash_cost(&user.password_hash) {
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
}

/// Counts a login decision in `authd_logins_total{result}`: success, failure (wrong password or
/// unknown account), disabled, throttled.
pub(in crate::domain) fn count_login(result: &'static str) {
    metrics::counter!(crate::metric_names::LOGINS, "result" => result).increment(1);
}

/// Counts a login refused by the rate limit or the password-guessing throttle.
pub(in crate::domain) fn count_throttled(e: &Error) {
    if matches!(e, Error::ResourceExhausted { .. }) {
        count_login("throttled");
    }
}
