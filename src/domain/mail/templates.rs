//! Mail templates (minijinja): each kind of message has three templates, `<kind>.subject.txt`,
//! `<kind>.txt` (the plain-text body) and `<kind>.html` (the HTML body, auto-escaped). Built-in
//! defaults are compiled in; every `*.txt` and `*.html` file of the directory in
//! `AUTHD_MAIL_TEMPLATES` is loaded over them (same name: it replaces the default; new name: a new
//! template). A template that does not parse stops the start-up with its file name.
//!
//! Built-in kinds:
//! - `generic` (context: `subject`, `text`, optional `link`);
//! - `verify_email` (context: `email`, `link`, `valid_for`): the verification link of a new or
//!   changed address;
//! - `email_change_confirm` (context: `email` (the new address), `old_email`, `link`,
//!   `valid_for`): the link that confirms an e-mail change, sent to the new address;
//! - `email_change_notice` (context: `email` (the current address), `new_email`): the notice to
//!   the current address that a change was asked for;
//! - `password_reset` (context: `email`, `link`, `token`, `ttl_minutes`): the reset link;
//! - `password_changed` (context: `email`, `how`: `reset` or `changed`, `time`): the notice after a
//!   password change;
//! - `mfa_locked` (context: `email`, `minutes`, `failures`): too many wrong second-factor codes.

use std::path::Path;

use minijinja::Environment;

use crate::domain::{Error, Result};

/// The built-in templates: (name, source).
const DEFAULTS: &[(&str, &str)] = &[
    ("generic.subject.txt", "{{ subject }}"),
    (
        "generic.txt",
        "{{ text }}\n{% if link %}\n{{ link }}\n{% endif %}",
    ),
    (
        "generic.html",
        "<!doctype html>\n<html><body>\n<p>{{ text }}</p>\n{% if link %}<p><a href=\"{{ link }}\">{{ link }}</a></p>\n{% endif %}</body></html>\n",
    ),
    ("verify_email.subject.txt", "Verify your e-mail address"),
    (
        "verify_email.txt",
        "Hello,\n\nplease confirm that {{ email }} is your e-mail address by opening this link:\n\n{{ link }}\n\nThe link works once and expires in {{ valid_for }}. If you did not create an account, ignore this message.\n",
    ),
    (
        "verify_email.html",
        "<!doctype html>\n<html><body>\n<p>Hello,</p>\n<p>please confirm that {{ email }} is your e-mail address by opening this link:</p>\n<p><a href=\"{{ link }}\">{{ link }}</a></p>\n<p>The link works once and expires in {{ valid_for }}. If you did not create an account, ignore this message.</p>\n</body></html>\n",
    ),
    (
        "email_change_confirm.subject.txt",
        "Confirm your new e-mail address",
    ),
    (
        "email_change_confirm.txt",
        "Hello,\n\nsomeone asked to change the e-mail address of the account {{ old_email }} to {{ email }}. To confirm, open this link:\n\n{{ link }}\n\nThe link works once and expires in {{ valid_for }}. Until then the account keeps its current address. If you did not ask for this, ignore this message.\n",
    ),
    (
        "email_change_confirm.html",
        "<!doctype html>\n<html><body>\n<p>Hello,</p>\n<p>someone asked to change the e-mail address of the account {{ old_email }} to {{ email }}. To confirm, open this link:</p>\n<p><a href=\"{{ link }}\">{{ link }}</a></p>\n<p>The link works once and expires in {{ valid_for }}. Until then the account keeps its current address. If you did not ask for this, ignore this message.</p>\n</body></html>\n",
    ),
    (
        "email_change_notice.subject.txt",
        "A change of your e-mail address was requested",
    ),
    (
        "email_change_notice.txt",
        "Hello,\n\na change of your account's e-mail address from {{ email }} to {{ new_email }} was requested. It takes effect only when the link sent to {{ new_email }} is opened.\n\nIf this was not you, change your password now: whoever asked knows it.\n",
    ),
    (
        "email_change_notice.html",
        "<!doctype html>\n<html><body>\n<p>Hello,</p>\n<p>a change of your account's e-mail address from {{ email }} to {{ new_email }} was requested. It takes effect only when the link sent to {{ new_email }} is opened.</p>\n<p>If this was not you, change your password now: whoever asked knows it.</p>\n</body></html>\n",
    ),
    // Password reset (context: `email`, `link`, `token`, `ttl_minutes`).
    ("password_reset.subject.txt", "Reset your password"),
    (
        "password_reset.txt",
        "Someone asked to reset the password of the account {{ email }}.\n\n\
         To choose a new password, open this link within {{ ttl_minutes }} minutes:\n\n\
         {{ link }}\n\n\
         {% if token %}Or enter this reset code in the application:\n\n{{ token }}\n\n{% endif %}\
         The link works once. If you did not ask for this, ignore this message: your password \
         stays as it is.\n",
    ),
    (
        "password_reset.html",
        "<!doctype html>\n<html><body>\n\
         <p>Someone asked to reset the password of the account {{ email }}.</p>\n\
         <p>To choose a new password, open this link within {{ ttl_minutes }} minutes:</p>\n\
         <p><a href=\"{{ link }}\">{{ link }}</a></p>\n\
         {% if token %}<p>Or enter this reset code in the application: <code>{{ token }}</code></p>\n{% endif %}\
         <p>The link works once. If you did not ask for this, ignore this message: your password \
         stays as it is.</p>\n</body></html>\n",
    ),
    // The notice after a password change (context: `email`, `how`: "reset" or "changed", `time`).
    ("password_changed.subject.txt", "Your password was changed"),
    (
        "password_changed.txt",
        "The password of the account {{ email }} was {{ how }} at {{ time }}, and every \
         session{% if how == \"changed\" %} but the one that changed it{% endif %} was signed out.\n\n\
         If this was not you, reset your password at once and contact your administrator.\n",
    ),
    (
        "password_changed.html",
        "<!doctype html>\n<html><body>\n\
         <p>The password of the account {{ email }} was {{ how }} at {{ time }}, and every \
         session{% if how == \"changed\" %} but the one that changed it{% endif %} was signed out.</p>\n\
         <p>If this was not you, reset your password at once and contact your administrator.</p>\n\
         </body></html>\n",
    ),
    // Sent when too many wrong second-factor codes lock an account's TOTP (src/domain/mfa).
    // Context: `email`, `minutes` (how long the lock lasts), `failures`.
    (
        "mfa_locked.subject.txt",
        "Your second factor is locked after {{ failures }} wrong codes",
    ),
    (
        "mfa_locked.txt",
        "Someone entered {{ failures }} wrong second-factor codes\nfor your account {{ email }}. They knew your password.\n\nYour second factor is locked for {{ minutes }} minutes;\nuntil then nobody can log in to the account.\n\nIf this was not you, change your password now.\n",
    ),
    (
        "mfa_locked.html",
        "<!doctype html>\n<html><body>\n<p>Someone entered {{ failures }} wrong second-factor codes\nfor your account {{ email }}. They knew your password.</p>\n<p>Your second factor is locked for {{ minutes }} minutes;\nuntil then nobody can log in to the account.</p>\n<p>If this was not you, change your password now.</p>\n</body></html>\n",
    ),
];

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The loaded templates.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// The built-in templates, overridden by the files of `dir` when given.
    pub fn load(dir: Option<&Path>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, source) in DEFAULTS {
            env.add_template(name, source)
                .map_err(|e| Error::internal(format!("built-in mail template {name}: {e}")))?;
        }
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                Error::invalid(format!("AUTHD_MAIL_TEMPLATES {}: {e}", dir.display()))
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned)
                else {
                    continue;
                };
                if !(name.ends_with(".txt") || name.ends_with(".html")) || !path.is_file() {
                    continue;
                }
                let source = std::fs::read_to_string(&path).map_err(|e| {
                    Error::invalid(format!("mail template {}: {e}", path.display()))
                })?;
                env.add_template_owned(name, source).map_err(|e| {
                    Error::invalid(format!("mail template {}: {e}", path.display()))
                })?;
            }
        }
        Ok(Self { env })
    }

    /// Renders the three templates of `kind` with `context`.
    pub fn render(&self, kind: &str, context: &serde_json::Value) -> Result<Rendered> {
        let one = |suffix: &str| -> Result<String> {
            let name = format!("{kind}.{suffix}");
            self.env
                .get_template(&name)
                .and_then(|t| t.render(context))
                .map_err(|e| Error::internal(format!("mail template {name}: {e}")))
        };
        let subject = one("subject.txt")?
            .split(['\r', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Rendered {
            subject,
            text: one("txt")?,
            html: one("html")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_render_and_html_is_escaped() {
        let t = Templates::load(None).unwrap();
        let r = t
            .render(
                "generic",
                &serde_json::json!({"subject": "Hi\nthere", "text": "a <b>", "link": "https://x/y?token=1&a=2"}),
            )
            .unwrap();
        assert_eq!(r.subject, "Hi there");
        assert!(r.text.contains("a <b>") && r.text.contains("https://x/y?token=1&a=2"));
        assert!(r.html.contains("a &lt;b&gt;"), "{}", r.html);
        assert!(r.html.contains("token=1&amp;a=2"), "{}", r.html);
    }

    #[test]
    fn the_account_messages_render_with_their_links() {
        let t = Templates::load(None).unwrap();
        let link = "https://app.test/auth/verify-email?token=ev_abc";
        let r = t
            .render(
                "verify_email",
                &serde_json::json!({"email": "a@example.test", "link": link, "valid_for": "24 hours"}),
            )
            .unwrap();
        assert_eq!(r.subject, "Verify your e-mail address");
        assert!(r.text.contains(link) && r.text.contains("24 hours"));
        // Auto-escaped (minijinja escapes `/` too); browsers decode it in the href.
        assert!(r.html.contains("verify-email?token=ev_abc"), "{}", r.html);
        let r = t
            .render(
                "email_change_confirm",
                &serde_json::json!({"email": "new@example.test", "old_email": "old@example.test",
                    "link": link, "valid_for": "24 hours"}),
            )
            .unwrap();
        assert!(r.text.contains(link) && r.text.contains("new@example.test"));
        let r = t
            .render(
                "email_change_notice",
                &serde_json::json!({"email": "old@example.test", "new_email": "new@example.test"}),
            )
            .unwrap();
        assert!(r.text.contains("new@example.test") && !r.text.contains("token"));
    }

    #[test]
    fn reset_templates_render() {
        let t = Templates::load(None).unwrap();
        let r = t
            .render(
                "password_reset",
                &serde_json::json!({"email": "a@x.test", "link": "https://x/reset-password?token=pr_1", "ttl_minutes": 30}),
            )
            .unwrap();
        assert_eq!(r.subject, "Reset your password");
        assert!(
            r.text.contains("https://x/reset-password?token=pr_1") && r.text.contains("30 minutes")
        );
        // minijinja's HTML escaping writes `/` as `&#x2f;` (still the same URL to a browser).
        assert!(r.html.contains("reset-password?token=pr_1\""), "{}", r.html);
        let r = t
            .render(
                "password_changed",
                &serde_json::json!({"email": "a@x.test", "how": "reset", "time": "2026-12-06 12:00 UTC"}),
            )
            .unwrap();
        assert_eq!(r.subject, "Your password was changed");
        assert!(
            r.text.contains("was reset at 2026-12-06 12:00 UTC"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_directory_overrides_a_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("generic.txt"), "custom: {{ text }}").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let r = t
            .render("generic", &serde_json::json!({"subject": "s", "text": "t"}))
            .unwrap();
        assert_eq!(r.text, "custom: t");
        assert!(r.html.contains("<p>t</p>"));
        std::fs::write(dir.path().join("bad.txt"), "{% if %}").unwrap();
        assert!(Templates::load(Some(dir.path())).is_err());
    }
}
