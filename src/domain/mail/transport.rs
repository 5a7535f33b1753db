//! Delivery of one message: the [`Transport`] trait and its two implementations, SMTP through
//! `lettre` (tokio, rustls) when `AUTHD_SMTP_URL` is set, and `.eml` files in `AUTHD_MAIL_DIR`
//! otherwise (the embedded default for development).
//!
//! The SMTP URL may hold a user and password: it is kept as a [`Secret`] and never logged; what
//! the log shows is [`Transport::describe`], the URL without its user info and query.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use uuid::Uuid;

use crate::domain::{Error, Result};
use crate::secret::Secret;

/// A boxed future of a delivery.
pub type Delivery<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<(), SendError>> + Send + 'a>>;

/// Why a delivery failed. The text is the server's reply or the connection error; it never holds
/// the URL's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub message: String,
    /// The server refused the message for good (a 5xx reply): retrying cannot help.
    pub permanent: bool,
}

/// Something that delivers a message.
pub trait Transport: Send + Sync {
    /// Delivers `message` (outbox row `id`). Called again with the same message after a failure.
    fn deliver<'a>(&'a self, id: Uuid, message: &'a Message) -> Delivery<'a>;
    /// Where messages go, for the log (no secrets).
    fn describe(&self) -> String;
}

/// SMTP through lettre.
pub struct SmtpTransport {
    inner: AsyncSmtpTransport<Tokio1Executor>,
    describe: String,
}

impl SmtpTransport {
    /// From `AUTHD_SMTP_URL` (`smtp://[user:pass@]host[:port][?tls=required|opportunistic]`, or
    /// `smtps://…` for TLS from the first byte) and the PEM bundle of `AUTHD_SMTP_CA`, whose
    /// certificates are trusted next to the public roots.
    pub fn new(url: &Secret<String>, ca_pem: Option<&[u8]>) -> Result<Self> {
        let parsed = url::Url::parse(url.expose())
            .map_err(|e| Error::invalid(format!("AUTHD_SMTP_URL is not a URL: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| Error::invalid("AUTHD_SMTP_URL has no host"))?
            .to_owned();
        let tls_mode = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let mut describe = format!("{}://{host}", parsed.scheme());
        if let Some(port) = parsed.port() {
            describe.push_str(&format!(":{port}"));
        }
        if let Some(mode) = &tls_mode {
            describe.push_str(&format!(" (tls={mode})"));
        }
        // lettre's error for a bad URL may quote it: never show it.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
            .map_err(|_| Error::invalid(format!("AUTHD_SMTP_URL is not usable: {describe}")))?;
        let params = || -> Result<TlsParameters> {
            let mut b = TlsParameters::builder(host.clone());
            if let Some(pem) = ca_pem {
                let cert = Certificate::from_pem(pem)
                    .map_err(|e| Error::invalid(format!("AUTHD_SMTP_CA: {e}")))?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls()
                .map_err(|e| Error::invalid(format!("SMTP TLS settings: {e}")))
        };
        match (parsed.scheme(), tls_mode.as_deref()) {
            ("smtps", _) => builder = builder.tls(Tls::Wrapper(params()?)),
            ("smtp", Some("required")) => builder = builder.tls(Tls::Required(params()?)),
            ("smtp", Some("opportunistic")) => {
                builder = builder.tls(Tls::Opportunistic(params()?));
            }
            ("smtp", None) => {}
            _ => {
                return Err(Error::invalid(format!(
                    "AUTHD_SMTP_URL: unknown scheme or tls mode: {describe}"
                )));
            }
        }
        Ok(Self {
            inner: builder
                .timeout(Some(std::time::Duration::from_secs(30)))
                .build(),
            describe,
        })
    }
}

impl Transport for SmtpTransport {
    fn deliver<'a>(&'a self, _id: Uuid, message: &'a Message) -> Delivery<'a> {
        Box::pin(async move {
            self.inner
                .send(message.clone())
                .await
                .map(|_| ())
                .map_err(|e| SendError {
                    message: e.to_string(),
                    permanent: e.is_permanent(),
                })
        })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// `.eml` files in a directory, one per message, named by the outbox id (a retry rewrites the
/// same file). Each file is written whole (to a temporary name, then renamed) and logged at INFO.
#[derive(Debug)]
pub struct FileTransport {
    dir: PathBuf,
}

impl FileTransport {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Where the message with outbox id `id` is written.
    pub fn path_of(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{id}.eml"))
    }
}

impl Transport for FileTransport {
    fn deliver<'a>(&'a self, id: Uuid, message: &'a Message) -> Delivery<'a> {
        Box::pin(async move {
            let io = |e: std::io::Error| SendError {
                message: format!("writing to {}: {e}", self.dir.display()),
                permanent: false,
            };
            tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
            let path = self.path_of(id);
            let tmp = self.dir.join(format!(".{id}.eml.tmp"));
            tokio::fs::write(&tmp, message.formatted())
                .await
                .map_err(io)?;
            tokio::fs::rename(&tmp, &path).await.map_err(io)?;
            tracing::info!(path = %path.display(), "mail written (no AUTHD_SMTP_URL)");
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("files in {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lettre's connection pool lives on the tokio runtime.
    #[tokio::test]
    async fn the_smtp_url_password_is_never_shown() {
        let url = Secret::from("smtp://user:hunter2@mail.example.com:587?tls=required");
        let t = SmtpTransport::new(&url, None).unwrap();
        assert_eq!(t.describe(), "smtp://mail.example.com:587 (tls=required)");
        let t =
            SmtpTransport::new(&Secret::from("smtps://u:hunter2@mail.example.com"), None).unwrap();
        assert_eq!(t.describe(), "smtps://mail.example.com");
        let bad = SmtpTransport::new(&Secret::from("ftp://u:hunter2@x"), None)
            .err()
            .unwrap();
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
