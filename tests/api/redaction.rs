//! Debug output never shows passwords, tokens or keys: of the domain's inputs and outputs, and of
//! the configuration.

use authd::api::{AdminUpdate, ProfileUpdate};
use authd::api::{NewAccount, TokenPair};
use authd::config::Config;

const SECRET: &str = "Secret-Value-That-Must-Not-Show-42";

fn assert_hidden(what: &str, shown: String) {
    assert!(!shown.contains(SECRET), "{what} shows its secret: {shown}");
    assert!(shown.contains("<redacted>"), "{what}: {shown}");
}

#[test]
fn debug_output_hides_secrets() {
    let account = NewAccount {
        email: "someone@example.com".into(),
        password: SECRET.into(),
        ..Default::default()
    };
    assert_hidden("NewAccount", format!("{account:?}"));
    assert!(format!("{account:?}").contains("someone@example.com"));

    let profile = ProfileUpdate {
        current_password: SECRET.into(),
        first_name: Some("Ada".into()),
        ..Default::default()
    };
    assert_hidden("ProfileUpdate", format!("{profile:?}"));

    let admin = AdminUpdate {
        password: Some(SECRET.into()),
        active: Some(true),
        ..Default::default()
    };
    assert_hidden("AdminUpdate", format!("{admin:#?}"));

    let pair = TokenPair {
        access_token: format!("{SECRET}-access"),
        refresh_token: format!("{SECRET}-refresh"),
        expires_in: 900,
        refresh_expires_in: 86400,
        session_id: uuid::Uuid::nil(),
    };
    assert_hidden("TokenPair", format!("{pair:?}"));

    let mut config = Config::defaults();
    config.master_key = Some(SECRET.into());
    assert_hidden("Config (master key)", format!("{config:?}"));
    let mut config = Config::defaults();
    config.bootstrap_admin_password = Some(SECRET.into());
    assert_hidden("Config (bootstrap password)", format!("{config:?}"));
    let mut config = Config::defaults();
    config.database_url = Some(format!("postgres://authd:{SECRET}@db/authd").into());
    assert_hidden("Config (DATABASE_URL)", format!("{config:#?}"));
}
