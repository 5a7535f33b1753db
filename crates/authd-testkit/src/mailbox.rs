//! Reading the links out of the messages authd sent: from the `.eml` files of a server without an
//! SMTP URL (the test default: [`crate::test_config`] gives every server its own mail directory),
//! or from the messages a test [`crate::smtp::SmtpServer`] received.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::server::TestServer;
use crate::smtp::{ReceivedMail, SmtpServer};

/// `message` with the quoted-printable soft line breaks and `=3D` undone: enough to read links
/// (a line longer than 76 characters, such as a link, makes lettre encode a body that way).
pub fn unfold_qp(message: &str) -> String {
    message
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

/// The token of the first `<base>/<page>?token=…` link in `message` (a whole message, headers
/// and bodies; see [`unfold_qp`]).
pub fn link_token(message: &str, page: &str) -> Option<String> {
    let text = unfold_qp(message);
    let marker = format!("/{page}?token=");
    let start = text.find(&marker)? + marker.len();
    let token: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (!token.is_empty()).then_some(token)
}

/// Whether `message` (headers and bodies) is addressed to `to`.
fn addressed_to(message: &str, to: &str) -> bool {
    let head = message.split("\r\n\r\n").next().unwrap_or(message);
    head.lines()
        .any(|l| l.to_ascii_lowercase().starts_with("to:") && l.to_ascii_lowercase().contains(to))
}

/// The directory a server writes `.eml` files into.
pub fn mail_dir(srv: &TestServer) -> PathBuf {
    srv.svc.mailer().settings().dir.clone()
}

/// Every `.eml` message the server wrote so far, oldest first.
pub fn eml_messages(srv: &TestServer) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(mail_dir(srv)) else {
        return Vec::new();
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
        .collect()
}

/// The tokens of every `page` link in `.eml` messages to `to`, oldest first.
pub fn eml_tokens(srv: &TestServer, to: &str, page: &str) -> Vec<String> {
    eml_messages(srv)
        .iter()
        .filter(|m| addressed_to(m, &to.to_ascii_lowercase()))
        .filter_map(|m| link_token(m, page))
        .collect()
}

/// Waits (up to 20 s) until `n` `.eml` messages to `to` carry a `page` link; returns their tokens.
pub async fn wait_eml_tokens(srv: &TestServer, to: &str, page: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tokens = eml_tokens(srv, to, page);
        if tokens.len() >= n {
            return tokens;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} {page} link(s) for {to} in {} (found {})",
            mail_dir(srv).display(),
            tokens.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The messages `smtp` received for `to`.
pub fn received_for(smtp: &SmtpServer, to: &str) -> Vec<ReceivedMail> {
    smtp.received()
        .into_iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(to)))
        .collect()
}

/// The tokens of every `page` link that `smtp` received for `to`, in arrival order.
pub fn smtp_tokens(smtp: &SmtpServer, to: &str, page: &str) -> Vec<String> {
    received_for(smtp, to)
        .iter()
        .filter_map(|m| link_token(&m.data, page))
        .collect()
}

/// Waits (up to 20 s) until `smtp` received `n` `page` links for `to`; returns their tokens.
pub async fn wait_smtp_tokens(smtp: &SmtpServer, to: &str, page: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tokens = smtp_tokens(smtp, to, page);
        if tokens.len() >= n {
            return tokens;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} {page} link(s) for {to} over SMTP (found {})",
            tokens.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_out_of_plain_and_quoted_printable_bodies() {
        let plain = "To: a@x\r\n\r\nopen https://app/auth/verify-email?token=ev_AbC-1_z\r\nbye";
        assert_eq!(
            link_token(plain, "verify-email").as_deref(),
            Some("ev_AbC-1_z")
        );
        let qp = "To: a@x\r\n\r\nhttps://app/auth/verify-email?token=3Dev_Ab=\r\nC\r\n";
        assert_eq!(link_token(qp, "verify-email").as_deref(), Some("ev_AbC"));
        assert_eq!(link_token(plain, "confirm-email-change"), None);
        assert!(addressed_to(plain, "a@x"));
    }
}
