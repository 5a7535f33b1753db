//! The `request_validation` target: the input is decoded as every request message type
//! (`prost::Message::decode`), and each message that decodes goes through the pure checks the
//! domain runs on it before any database or bcrypt work.
//!
//! Beyond "never panics", the checks assert what the validators promise: an accepted value is
//! within its documented limits and already normalized, and a password accepted at registration is
//! one that Login can accept (`new_password` ok implies `presented_password` ok with the same form).
//! New passwords also go through the zxcvbn strength check with the request's e-mail and username as
//! context (that the check refuses only with INVALID_ARGUMENT is asserted; the score is not).
//!
//! To add a message type: implement [`Checked`] for it and list it in [`run`]. If the domain grows
//! a single pure entry point for request validation, each `check` body becomes a call to it (keep
//! the invariant helpers below as extra assertions on its output).

use authd::api::opaque::{self, HashedToken, MAX_OPAQUE_BYTES};
use authd::api::password::{self, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};
use authd::api::validate::{self, MAX_EMAIL_CHARS, MAX_IDENTIFIER_BYTES, MAX_NAME_CHARS};
use authd::api::{ClientInfo, Error, MAX_USER_AGENT_CHARS, audit, role_arg};
use authd::proto::{self, login_request::Identifier};
use prost::Message;

/// A request message and the domain's pure checks on it.
pub trait Checked: Message + Default {
    fn check(&self);
}

fn decode_and_check<M: Checked>(data: &[u8]) {
    if let Ok(m) = M::decode(data) {
        m.check();
    }
}

macro_rules! check_all {
    ($data:expr; $($t:ty),* $(,)?) => { $( decode_and_check::<$t>($data); )* };
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    check_all!(data;
        proto::RegisterRequest,
        proto::LoginRequest,
        proto::RefreshRequest,
        proto::LogoutRequest,
        proto::ValidateTokenRequest,
        proto::CreateServiceKeyRequest,
        proto::RevokeServiceKeyRequest,
        proto::UpdateMeRequest,
        proto::ChangePasswordRequest,
        proto::DeleteMeRequest,
        proto::RevokeMySessionRequest,
        proto::ListUsersRequest,
        proto::GetUserRequest,
        proto::RevokeUserSessionsRequest,
        proto::CreateUserRequest,
        proto::UpdateUserRequest,
        proto::DeleteUserRequest,
        proto::ListAuditEventsRequest,
        proto::ResendVerificationRequest,
    );
    // The user-agent metadata is sanitized the same way.
    let ua = String::from_utf8_lossy(data);
    let info = ClientInfo::new(None, &ua);
    assert!(info.user_agent.chars().count() <= MAX_USER_AGENT_CHARS);
    assert!(!info.user_agent.chars().any(char::is_control));
}

// ----- the validators, with their promises -------------------------------------------------------

fn email(raw: &str) {
    if let Ok(e) = validate::email(raw) {
        assert!(validate::is_valid_email(&e), "email() accepted {e:?}");
        assert_eq!(validate::normalize_email(&e), e, "email() not normalized");
        assert!(e.chars().count() <= MAX_EMAIL_CHARS);
    }
}

fn username(raw: &str) {
    match validate::username(raw) {
        Ok(Some(u)) => {
            assert!(validate::is_valid_username(&u));
            assert_eq!(u, raw);
        }
        Ok(None) => assert!(raw.is_empty(), "username {raw:?} treated as none"),
        Err(_) => assert!(!raw.is_empty()),
    }
}

fn assert_clean_name(n: &str) {
    assert!(n.chars().count() <= MAX_NAME_CHARS, "name too long");
    assert!(!n.chars().any(char::is_control), "name with a control");
    assert_eq!(n.trim(), n, "name not trimmed");
}

fn person_name(field: &str, raw: &str) {
    if let Ok(n) = validate::person_name(field, raw) {
        assert_clean_name(&n);
    }
}

fn label(field: &str, raw: &str) {
    if let Ok(n) = validate::label(field, raw) {
        assert_clean_name(&n);
        assert!(!n.is_empty(), "empty label accepted");
    }
}

fn uuid(field: &str, raw: &str) {
    if validate::uuid(field, raw).is_ok() {
        assert!(!raw.is_empty() && raw.len() <= 64);
    }
}

/// The default `AUTHD_MIN_PASSWORD_SCORE`.
const MIN_SCORE: u8 = 3;
/// Context for requests whose user's e-mail and username come from the database.
const STORED_CONTEXT: [&str; 2] = ["alice@example.com", "alice"];

/// `new_password`, then (when it passes) the strength check with `context`, as the domain does.
fn new_password_with_strength(field: &str, raw: &str, context: &[&str]) {
    new_password(field, raw);
    if let Ok(p) = password::new_password(field, raw) {
        match password::check_strength(field, &p, MIN_SCORE, context) {
            Ok(()) | Err(Error::InvalidArgument(_)) => {}
            Err(e) => panic!("check_strength failed with {e:?}"),
        }
    }
}

/// The strength-check context of Register and CreateUser: the validated e-mail and username.
fn account_context(raw_email: &str, raw_username: &str) -> Option<[String; 2]> {
    let e = validate::email(raw_email).ok()?;
    let u = validate::username(raw_username).ok()?;
    Some([e, u.unwrap_or_default()])
}

fn new_password(field: &str, raw: &str) {
    if let Ok(p) = password::new_password(field, raw) {
        assert!(
            p.len() <= MAX_PASSWORD_BYTES,
            "password over bcrypt's limit"
        );
        assert!(p.chars().count() >= MIN_PASSWORD_CHARS);
        assert_eq!(password::normalize(&p), p, "NFKC not idempotent");
        // Whatever Register accepts, Login must be able to check.
        match password::presented_password(field, raw) {
            Ok(Some(q)) => assert_eq!(q, p, "login normalizes differently"),
            other => panic!("new password {raw:?} not presentable: {other:?}"),
        }
    }
}

fn presented_password(field: &str, raw: &str) {
    if let Ok(Some(p)) = password::presented_password(field, raw) {
        assert!(p.len() <= MAX_PASSWORD_BYTES);
        assert!(p.chars().count() >= MIN_PASSWORD_CHARS);
    }
}

/// Refresh, Logout and service keys: bounded, then hashed (and, for Refresh, a random successor
/// sealed for grace replays under a key from the presented token, which opens it again).
fn opaque_secret(raw: &str) {
    if raw.len() > MAX_OPAQUE_BYTES {
        return;
    }
    let h = HashedToken::of(raw);
    assert!(h.matches(HashedToken::of(raw).as_bytes()));
    let next = opaque::new_refresh_token();
    assert!(next.starts_with(opaque::REFRESH_TOKEN_PREFIX) && next.len() == 46);
    let sealed = opaque::ReplayBox::seal(raw, &next);
    assert_eq!(
        opaque::ReplayBox::open(raw, &sealed).as_deref(),
        Some(next.as_str())
    );
}

fn role(n: i32) {
    let _ = role_arg(n);
}

// ----- the messages --------------------------------------------------------------------------------

impl Checked for proto::RegisterRequest {
    fn check(&self) {
        email(&self.email);
        username(&self.username);
        person_name("first_name", &self.first_name);
        person_name("last_name", &self.last_name);
        match account_context(&self.email, &self.username) {
            Some([e, u]) => new_password_with_strength("password", &self.password, &[&e, &u]),
            None => new_password("password", &self.password),
        }
    }
}

impl Checked for proto::LoginRequest {
    fn check(&self) {
        presented_password("password", &self.password);
        let Some(id) = &self.identifier else { return };
        let raw = match id {
            Identifier::Email(s) | Identifier::Username(s) => s,
        };
        if raw.trim().is_empty() || raw.len() > MAX_IDENTIFIER_BYTES {
            return;
        }
        match id {
            Identifier::Email(e) => {
                let e = validate::normalize_email(e);
                if validate::is_valid_email(&e) {
                    assert!(validate::email(&e).is_ok(), "login email {e:?}");
                }
            }
            Identifier::Username(u) => {
                let _ = validate::is_valid_username(u.trim());
            }
        }
        // A failed login's identifier goes into the audit log, sanitized.
        let logged = audit::sanitize(raw.trim(), audit::MAX_IDENTIFIER_CHARS);
        assert!(logged.chars().count() <= audit::MAX_IDENTIFIER_CHARS);
        assert!(!logged.chars().any(char::is_control));
    }
}

impl Checked for proto::RefreshRequest {
    fn check(&self) {
        opaque_secret(&self.refresh_token);
    }
}

impl Checked for proto::LogoutRequest {
    fn check(&self) {
        opaque_secret(&self.refresh_token);
    }
}

impl Checked for proto::ValidateTokenRequest {
    fn check(&self) {
        crate::token::verify_checked(&self.access_token);
    }
}

impl Checked for proto::CreateServiceKeyRequest {
    fn check(&self) {
        label("name", &self.name);
        if let Ok(nets) = validate::cidrs("allowed_cidrs", &self.allowed_cidrs) {
            assert!(nets.len() <= validate::MAX_CIDRS && nets.len() <= self.allowed_cidrs.len());
            assert_eq!(
                validate::cidrs("allowed_cidrs", &nets).ok().as_ref(),
                Some(&nets),
                "CIDR normalization must be idempotent"
            );
        }
    }
}

impl Checked for proto::RevokeServiceKeyRequest {
    fn check(&self) {
        uuid("id", &self.id);
    }
}

impl Checked for proto::UpdateMeRequest {
    fn check(&self) {
        if let Some(e) = &self.email {
            email(e);
        }
        if let Some(u) = &self.username {
            username(u);
        }
        if let Some(n) = &self.first_name {
            person_name("first_name", n);
        }
        if let Some(n) = &self.last_name {
            person_name("last_name", n);
        }
        presented_password("current_password", &self.current_password);
    }
}

impl Checked for proto::ChangePasswordRequest {
    fn check(&self) {
        presented_password("current_password", &self.current_password);
        new_password_with_strength("new_password", &self.new_password, &STORED_CONTEXT);
    }
}

impl Checked for proto::DeleteMeRequest {
    fn check(&self) {
        presented_password("password", &self.password);
    }
}

impl Checked for proto::RevokeMySessionRequest {
    fn check(&self) {
        uuid("session_id", &self.session_id);
    }
}

impl Checked for proto::ListUsersRequest {
    fn check(&self) {
        // The query and page-token bounds and page-token decoding are private to the domain;
        // only the role argument is reachable from here.
        role(self.role);
    }
}

impl Checked for proto::GetUserRequest {
    fn check(&self) {
        uuid("user_id", &self.user_id);
    }
}

impl Checked for proto::RevokeUserSessionsRequest {
    fn check(&self) {
        uuid("user_id", &self.user_id);
    }
}

impl Checked for proto::ResendVerificationRequest {
    fn check(&self) {
        email(&self.email);
    }
}

impl Checked for proto::CreateUserRequest {
    fn check(&self) {
        email(&self.email);
        username(&self.username);
        person_name("first_name", &self.first_name);
        person_name("last_name", &self.last_name);
        match account_context(&self.email, &self.username) {
            Some([e, u]) => new_password_with_strength("password", &self.password, &[&e, &u]),
            None => new_password("password", &self.password),
        }
        role(self.role);
    }
}

impl Checked for proto::UpdateUserRequest {
    fn check(&self) {
        uuid("user_id", &self.user_id);
        if let Some(e) = &self.email {
            email(e);
        }
        if let Some(u) = &self.username {
            username(u);
        }
        if let Some(n) = &self.first_name {
            person_name("first_name", n);
        }
        if let Some(n) = &self.last_name {
            person_name("last_name", n);
        }
        if let Some(r) = self.role {
            role(r);
        }
        if let Some(p) = &self.password {
            // The context is the new e-mail/username when the request changes them, else the stored ones.
            let e = match &self.email {
                Some(e) => validate::email(e).unwrap_or_default(),
                None => STORED_CONTEXT[0].to_owned(),
            };
            let u = match &self.username {
                Some(u) => validate::username(u).ok().flatten().unwrap_or_default(),
                None => STORED_CONTEXT[1].to_owned(),
            };
            new_password_with_strength("password", p, &[&e, &u]);
        }
    }
}

impl Checked for proto::DeleteUserRequest {
    fn check(&self) {
        uuid("user_id", &self.user_id);
    }
}

impl Checked for proto::ListAuditEventsRequest {
    fn check(&self) {
        if !self.user_id.is_empty() {
            uuid("user_id", &self.user_id);
        }
    }
}
