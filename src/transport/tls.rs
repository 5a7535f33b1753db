//! TLS and mutual TLS of the gRPC listener (`AUTHD_TLS_CERT`, `AUTHD_TLS_KEY`,
//! `AUTHD_TLS_CLIENT_CA`, `AUTHD_TLS_CLIENT_AUTH`): the PEM files read and checked once, the rustls
//! configuration, and the names of verified client certificates for logs.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;

use crate::config::Config;
use crate::transport::{ConfigError, path_setting};

#[derive(Clone)]
pub(super) struct Tls {
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
    pub(super) ca: Option<PathBuf>,
    pub(super) require: bool,
}

pub(super) fn load_tls(config: &Config) -> Result<Option<Tls>, ConfigError> {
    let cert = path_setting(&config.tls_cert);
    let key = path_setting(&config.tls_key);
    let ca = path_setting(&config.tls_client_ca);
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err(ConfigError::Incomplete {
                set: "AUTHD_TLS_CERT",
                missing: "AUTHD_TLS_KEY",
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Incomplete {
                set: "AUTHD_TLS_KEY",
                missing: "AUTHD_TLS_CERT",
            });
        }
        (None, None) => {
            if ca.is_some() {
                return Err(ConfigError::NeedsTls {
                    var: "AUTHD_TLS_CLIENT_CA",
                });
            }
            if config.tls_require_client_cert {
                return Err(ConfigError::NeedsTls {
                    var: "AUTHD_TLS_REQUIRE_CLIENT_CERT",
                });
            }
            return Ok(None);
        }
    };
    if config.tls_require_client_cert && ca.is_none() {
        return Err(ConfigError::RequireWithoutCa);
    }

    let cert_pem = read_pem("AUTHD_TLS_CERT", cert, PemKind::Certificates)?;
    let key_pem = read_pem("AUTHD_TLS_KEY", key, PemKind::PrivateKey)?;
    let ca_pem = ca
        .map(|ca| read_pem("AUTHD_TLS_CLIENT_CA", ca, PemKind::Certificates))
        .transpose()?;
    // Built now, so a key that does not match its certificate (or a CA bundle with no usable
    // certificate) stops the start-up instead of failing every handshake.
    let server_config = server_config(
        &cert_pem,
        &key_pem,
        ca_pem.as_deref(),
        config.tls_require_client_cert,
    )
    .map_err(|reason| ConfigError::Rejected {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        ca: ca.map(Path::to_path_buf),
        reason,
    })?;
    Ok(Some(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_config)),
        ca: ca.map(Path::to_path_buf),
        require: config.tls_require_client_cert,
    }))
}

/// The rustls configuration tonic would build from the same files: ring, TLS 1.2 and 1.3, ALPN
/// `h2`, client certificates verified against `ca_pem` (required, or optional) when given. The
/// reason of an error never holds the files' contents.
fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: Option<&[u8]>,
    require_client_cert: bool,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot parse the certificate chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("cannot parse the private key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_slice_iter(ca_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cannot parse the client CA: {e}"))?;
            roots.add_parsable_certificates(cas);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            );
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(config)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PemKind {
    Certificates,
    PrivateKey,
}

/// Reads a PEM file and checks that it holds what `kind` says, so the error names the file. The
/// contents never appear in an error.
fn read_pem(var: &'static str, path: &Path, kind: PemKind) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        var,
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| ConfigError::Invalid {
        var,
        path: path.to_path_buf(),
        reason,
    };
    let blocks = pem_labels(&bytes).map_err(|r| invalid(r.to_owned()))?;
    match kind {
        PemKind::Certificates => {
            if !blocks.iter().any(|l| l == "CERTIFICATE") {
                return Err(invalid("no PEM CERTIFICATE block found".into()));
            }
        }
        PemKind::PrivateKey => {
            if blocks.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
                return Err(invalid(
                    "encrypted private keys are not supported; store the key unencrypted and \
                     protect the file instead"
                        .into(),
                ));
            }
            let keys = blocks
                .iter()
                .filter(|l| {
                    matches!(
                        l.as_str(),
                        "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
                    )
                })
                .count();
            if keys == 0 {
                return Err(invalid(
                    "no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                        .into(),
                ));
            }
            if keys > 1 {
                return Err(invalid("more than one private key found".into()));
            }
        }
    }
    Ok(bytes)
}

/// The labels of the PEM blocks in `bytes`, checking that each block's body is base64.
fn pem_labels(bytes: &[u8]) -> Result<Vec<String>, &'static str> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "not PEM text (a DER file must be converted to PEM)")?;
    let mut labels = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some((label, body)) = &mut open {
            if let Some(end) = line
                .strip_prefix("-----END ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                if end != label {
                    return Err("a PEM block ends with a different label than it begins with");
                }
                let decoded = base64::engine::general_purpose::STANDARD.decode(body.as_bytes());
                if !matches!(decoded, Ok(der) if !der.is_empty()) {
                    return Err("a PEM block is not valid base64");
                }
                labels.push(std::mem::take(label));
                open = None;
            } else if line.contains(':') {
                return Err("PEM headers (a legacy encrypted key?) are not supported");
            } else {
                body.push_str(line);
            }
        } else if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            open = Some((label.to_owned(), String::new()));
        }
    }
    if open.is_some() {
        return Err("a PEM block has no END line");
    }
    Ok(labels)
}

/// A name for a verified client certificate, for logs: `CN=<common name>` of its subject, or
/// `sha256:<fingerprint>` when it has none.
pub fn certificate_subject(der: &[u8]) -> String {
    match common_name(der) {
        Some(cn) => format!("CN={cn}"),
        None => {
            let digest = Sha256::digest(der);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    }
}

/// One DER element: (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The subject's commonName of an X.509 certificate, if it has one.
fn common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CN_OID: [u8; 3] = [0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = der_next(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_next(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // Optional [0] version, then serialNumber, signature, issuer, validity, subject.
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = der_next(rest)?.2;
    }
    let (SEQUENCE, subject, _) = der_next(rest)? else {
        return None;
    };
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (tag, set, next) = der_next(rdns)?;
        rdns = next;
        if tag != SET {
            continue;
        }
        let mut atvs = set;
        while !atvs.is_empty() {
            let (tag, atv, next) = der_next(atvs)?;
            atvs = next;
            if tag != SEQUENCE {
                continue;
            }
            let (OID, oid, value) = der_next(atv)? else {
                continue;
            };
            if oid != CN_OID {
                continue;
            }
            let (tag, value, _) = der_next(value)?;
            // UTF8String, PrintableString, TeletexString, IA5String.
            if matches!(tag, 0x0c | 0x13 | 0x14 | 0x16) {
                return std::str::from_utf8(value)
                    .ok()
                    .map(|s| s.chars().filter(|c| !c.is_control()).collect());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_checks() {
        let ok = b"junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAwQ=\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_labels(ok).unwrap(), vec!["CERTIFICATE".to_owned()]);
        assert!(
            pem_labels(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err()
        );
        assert!(pem_labels(b"-----BEGIN CERTIFICATE-----\nAAEC\n").is_err());
        assert!(pem_labels(b"-----BEGIN A-----\nAAEC\n-----END B-----\n").is_err());
        assert!(pem_labels(&[0x30, 0x82, 0xff, 0xff]).is_err());
        assert!(pem_labels(b"nothing here").unwrap().is_empty());
    }

    #[test]
    fn subject_of_garbage_is_a_fingerprint() {
        assert!(certificate_subject(b"not a certificate").starts_with("sha256:"));
        assert!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
    }
}
