//! Mail templates (minijinja): each kind of message has three templates, `<kind>.subject.txt`,
//! `<kind>.txt` (the plain-text body) and `<kind>.html` (the HTML body, auto-escaped). Built-in
//! defaults are compiled in; every `*.txt` and `*.html` file of the directory in
//! `AUTHD_MAIL_TEMPLATES` is loaded over them (same name: it replaces the default; new name: a new
//! template). A template that does not parse stops the start-up with its file name.
//!
//! Built-in kinds: `generic` (context: `subject`, `text`, optional `link`); `mfa_locked` (context:
//! `email`, `minutes`, `failures`: too many wrong second-factor codes). The messages of
//! verification, reset and notices add theirs next to it.

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
