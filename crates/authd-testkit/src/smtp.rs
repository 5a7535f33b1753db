//! A real SMTP server on loopback TCP for the mail tests: it speaks EHLO/HELO, STARTTLS (rustls,
//! with a certificate from [`test_certificate`]), MAIL, RCPT, DATA, RSET, NOOP and QUIT, and keeps
//! every message it accepts. Not a stub of authd's transport: authd's lettre client talks to it
//! over a socket like to any mail server. It can be started on a given port and stopped (every
//! open connection is dropped), so tests can cut the mail server off and bring it back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One accepted message.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The reverse path of MAIL FROM.
    pub mail_from: String,
    /// The forward paths of RCPT TO.
    pub rcpt_to: Vec<String>,
    /// The message (headers and body) as received, dot-unstuffed, CRLF line ends.
    pub data: String,
    /// Whether it came over TLS (after STARTTLS).
    pub tls: bool,
}

impl ReceivedMail {
    /// The value of header `name` (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut()
                && (line.starts_with(' ') || line.starts_with('\t'))
            {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`: (certificate PEM, key PEM).
pub fn test_certificate() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate certificate");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// See the module doc.
pub struct SmtpServer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    tls: Option<TlsAcceptor>,
    accept: Option<JoinHandle<()>>,
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl SmtpServer {
    /// A plaintext server on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), None).await
    }

    /// A server offering STARTTLS with this certificate and key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_on(
            "127.0.0.1:0".parse().expect("addr"),
            Some(acceptor(cert_pem, key_pem)),
        )
        .await
    }

    /// A server on `addr` (e.g. the port of a stopped one).
    pub async fn start_on(addr: SocketAddr, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind smtp");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let received = received.clone();
            let sessions = sessions.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let task =
                        tokio::spawn(session(Box::new(stream), tls.clone(), received.clone()));
                    sessions.lock().expect("lock").push(task);
                }
            })
        };
        Self {
            addr,
            received,
            tls,
            accept: Some(accept),
            sessions,
        }
    }

    /// `smtp://127.0.0.1:<port>`, plus `?tls=required` for a server with STARTTLS (with the host
    /// name `localhost`, which the test certificate names).
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("smtp://localhost:{}?tls=required", self.addr.port()),
            None => format!("smtp://127.0.0.1:{}", self.addr.port()),
        }
    }

    /// Every message accepted so far.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.received.lock().expect("lock").clone()
    }

    /// Stops the server and returns its address: a port with nothing listening on it (yet).
    pub async fn stop_and_addr(self) -> SocketAddr {
        let addr = self.addr;
        self.stop().await;
        addr
    }

    /// Closes the listener and every open connection; the port is free again.
    pub async fn stop(mut self) -> Vec<ReceivedMail> {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.sessions.lock().expect("lock"));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        self.received()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        if let Ok(mut s) = self.sessions.lock() {
            for t in s.drain(..) {
                t.abort();
            }
        }
    }
}

/// A TLS acceptor for a certificate and key (PEM), on rustls with ring.
pub fn acceptor(cert_pem: &str, key_pem: &str) -> TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    TlsAcceptor::from(Arc::new(config))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn session(
    stream: Box<dyn Stream>,
    tls: Option<TlsAcceptor>,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
) {
    let mut conn = BufReader::new(stream);
    let mut secure = false;
    if conn
        .get_mut()
        .write_all(b"220 authd-testkit ESMTP\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut from = String::new();
    let mut rcpt = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match conn.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let starttls = if tls.is_some() && !secure {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            format!("250-authd-testkit\r\n250-8BITMIME\r\n{starttls}250 SMTPUTF8\r\n")
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            "250 OK\r\n".into()
        } else if upper == "STARTTLS" && !secure {
            let Some(acceptor) = tls.clone() else {
                let _ = conn.get_mut().write_all(b"502 no TLS\r\n").await;
                continue;
            };
            if conn.get_mut().write_all(b"220 go ahead\r\n").await.is_err() {
                return;
            }
            let Ok(tls_stream) = acceptor.accept(conn.into_inner()).await else {
                return;
            };
            conn = BufReader::new(Box::new(tls_stream));
            secure = true;
            from.clear();
            rcpt.clear();
            continue;
        } else if upper.starts_with("MAIL FROM:") {
            from = path(&cmd["MAIL FROM:".len()..]);
            rcpt.clear();
            "250 OK\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            rcpt.push(path(&cmd["RCPT TO:".len()..]));
            "250 OK\r\n".into()
        } else if upper == "DATA" {
            if conn
                .get_mut()
                .write_all(b"354 end with .\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                match conn.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let l = line.trim_end_matches(['\r', '\n']);
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(l));
                data.push_str("\r\n");
            }
            received.lock().expect("lock").push(ReceivedMail {
                mail_from: std::mem::take(&mut from),
                rcpt_to: std::mem::take(&mut rcpt),
                data,
                tls: secure,
            });
            "250 queued\r\n".into()
        } else if upper == "RSET" {
            from.clear();
            rcpt.clear();
            "250 OK\r\n".into()
        } else if upper == "QUIT" {
            let _ = conn.get_mut().write_all(b"221 bye\r\n").await;
            return;
        } else {
            "502 command not implemented\r\n".into()
        };
        if conn.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `<a@b> SIZE=…` → `a@b`.
fn path(arg: &str) -> String {
    let arg = arg.trim();
    let end = arg.find('>').map_or(arg.len(), |i| i + 1);
    arg[..end].trim_matches(['<', '>']).to_owned()
}
