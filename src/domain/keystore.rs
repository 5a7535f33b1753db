//! Key material at rest: the Ed25519 signing keys and the server secrets, shared by every replica
//! through the database, sealed with XChaCha20-Poly1305 under `AUTHD_MASTER_KEY` when one is set.
//!
//! With a master key, every private key and secret is stored sealed (rows written before the key was
//! set are sealed in place at start-up), so a database dump alone cannot mint tokens. Each box is
//! bound to its row (kid or secret name) as associated data, so boxes cannot be swapped between rows.
//!
//! Rotation: a new key is published (JWKS) at once but signs only from `now + publish delay`; every
//! older key retires once the tokens it may still sign have expired.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncPgConnection;
use rand::RngCore;

use super::tokens::{self, Keyring, Signer, Verifier};
use super::{Error, Result, opaque};
use crate::db::keys;
use crate::db::models::{NewServerSecret, NewSigningKey, SigningKey};

const NONCE_LEN: usize = 24;
/// Extra time an old key keeps verifying after its last possible token expired.
pub const RETIRE_MARGIN_SECS: i64 = 60;

/// The key that seals secrets at rest. Its `Debug` is redacted.
pub struct MasterKey(XChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// 32 bytes, written as 64 hex digits or base64 (standard or URL-safe, padded or not).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bytes = if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
                .collect::<std::result::Result<Vec<u8>, _>>()
                .ok()
        } else {
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(s).ok())
        };
        match bytes {
            Some(b) if b.len() == 32 => XChaCha20Poly1305::new_from_slice(&b)
                .map(MasterKey)
                .map_err(|_| Error::invalid("AUTHD_MASTER_KEY must be 32 bytes")),
            _ => Err(Error::invalid(
                "AUTHD_MASTER_KEY must be 32 bytes written as 64 hex digits or base64",
            )),
        }
    }

    pub(crate) fn seal(&self, plaintext: &[u8], aad: &str) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .0
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::internal("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub(crate) fn open(&self, sealed: &[u8], aad: &str) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return Err(Error::internal(format!("sealed {aad} is truncated")));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Error::internal(format!("sealed {aad} is truncated")))?;
        self.0
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                Error::internal(format!(
                    "cannot decrypt {aad}: AUTHD_MASTER_KEY is not the key it was sealed with"
                ))
            })
    }
}

/// Reads and writes key material, sealing it when a master key is configured.
#[derive(Debug)]
pub struct KeyStore {
    master: Option<MasterKey>,
}

fn key_aad(kid: &str) -> String {
    format!("signing_key:{kid}")
}

fn secret_aad(name: &str) -> String {
    format!("server_secret:{name}")
}

impl KeyStore {
    pub fn new(master: Option<MasterKey>) -> Self {
        Self { master }
    }

    /// What to store for `plaintext`: sealed when a master key is set.
    fn to_store(&self, plaintext: &[u8], aad: &str) -> Result<(Vec<u8>, bool)> {
        match &self.master {
            Some(m) => Ok((m.seal(plaintext, aad)?, true)),
            None => Ok((plaintext.to_vec(), false)),
        }
    }

    /// The plaintext of a stored value; seals a plaintext row in place when a master key is set.
    async fn read_stored(
        &self,
        stored: &[u8],
        encrypted: bool,
        aad: &str,
        reseal: impl AsyncFnOnce(Vec<u8>) -> Result<()>,
    ) -> Result<Vec<u8>> {
        match (&self.master, encrypted) {
            (Some(m), true) => m.open(stored, aad),
            (None, true) => Err(Error::internal(format!(
                "{aad} is encrypted in the database; set AUTHD_MASTER_KEY"
            ))),
            (Some(m), false) => {
                reseal(m.seal(stored, aad)?).await?;
                Ok(stored.to_vec())
            }
            (None, false) => Ok(stored.to_vec()),
        }
    }

    /// Seals a per-row secret (a TOTP seed) for storage: `(stored, sealed)`. Sealed under the master
    /// key, bound to `aad`, when one is set; stored as is otherwise (like every key without one).
    pub fn seal_row(&self, plaintext: &[u8], aad: &str) -> Result<(Vec<u8>, bool)> {
        self.to_store(plaintext, aad)
    }

    /// The plaintext of a value stored by [`KeyStore::seal_row`]. A sealed value needs the master
    /// key it was sealed with; a plaintext one (stored before a master key was set) is returned as
    /// is and sealed by its next write.
    pub fn open_row(&self, stored: &[u8], sealed: bool, aad: &str) -> Result<Vec<u8>> {
        match (&self.master, sealed) {
            (Some(m), true) => m.open(stored, aad),
            (None, true) => Err(Error::internal(format!(
                "{aad} is encrypted in the database; set AUTHD_MASTER_KEY"
            ))),
            (_, false) => Ok(stored.to_vec()),
        }
    }

    /// Creates the first signing key if there is none (once, whatever the number of replicas).
    pub async fn ensure_signing_key(
        &self,
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let generated = tokens::generate_key()?;
        let (private_key, encrypted) =
            self.to_store(&generated.private_pkcs8, &key_aad(&generated.kid))?;
        keys::ensure_signing_key(
            conn,
            now,
            &NewSigningKey {
                kid: &generated.kid,
                algorithm: "EdDSA",
                private_key: &private_key,
                public_key: &generated.public,
                create_time: now,
                activate_time: now,
                encrypted,
            },
        )
        .await?;
        Ok(())
    }

    /// Builds the keyring from the unretired keys (see [`keyring_from_rows`]).
    pub async fn load_keyring(
        &self,
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
    ) -> Result<Keyring> {
        let rows = keys::list_unretired(conn, now).await?;
        let mut plain = Vec::with_capacity(rows.len());
        for row in rows {
            let kid = row.kid.clone();
            let private_key = self
                .read_stored(
                    &row.private_key,
                    row.encrypted,
                    &key_aad(&kid),
                    async |sealed| {
                        keys::store_private_key(conn, &kid, &sealed, true).await?;
                        Ok(())
                    },
                )
                .await?;
            plain.push(SigningKey {
                private_key,
                encrypted: false,
                ..row
            });
        }
        keyring_from_rows(&plain, now)
    }

    /// The server secret `name`, created on first use.
    pub async fn secret(
        &self,
        conn: &mut AsyncPgConnection,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>> {
        let candidate = opaque::new_secret();
        let (value, encrypted) = self.to_store(&candidate, &secret_aad(name))?;
        let row = keys::get_or_create_secret(
            conn,
            &NewServerSecret {
                name,
                value: &value,
                create_time: now,
                encrypted,
            },
        )
        .await?;
        self.read_stored(
            &row.value,
            row.encrypted,
            &secret_aad(name),
            async |sealed| {
                keys::store_secret(conn, name, &sealed, true).await?;
                Ok(())
            },
        )
        .await
    }

    /// Adds a key that signs from `now + publish_delay`; older keys retire once every token they
    /// can still sign has expired. Returns the new kid and when it starts signing.
    pub async fn rotate(
        &self,
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
        publish_delay: Duration,
        access_token_ttl: Duration,
    ) -> Result<(String, DateTime<Utc>)> {
        let generated = tokens::generate_key()?;
        let (private_key, encrypted) =
            self.to_store(&generated.private_pkcs8, &key_aad(&generated.kid))?;
        let activate_time = now + publish_delay;
        let retire_time = activate_time + access_token_ttl + Duration::seconds(RETIRE_MARGIN_SECS);
        keys::rotate(
            conn,
            &NewSigningKey {
                kid: &generated.kid,
                algorithm: "EdDSA",
                private_key: &private_key,
                public_key: &generated.public,
                create_time: now,
                activate_time,
                encrypted,
            },
            retire_time,
        )
        .await?;
        Ok((generated.kid, activate_time))
    }
}

/// The keyring of unretired key rows (private keys in plaintext): every row verifies (until its
/// retire time) and is published, as a plain public key of an [`authd_token::Verifier`]; the newest
/// key already active at `now` signs.
pub fn keyring_from_rows(rows: &[SigningKey], now: DateTime<Utc>) -> Result<Keyring> {
    let mut public = Vec::with_capacity(rows.len());
    let mut signer: Option<&SigningKey> = None;
    for row in rows {
        if row.algorithm != "EdDSA" {
            return Err(Error::internal(format!(
                "signing key {} is not an Ed25519 key",
                row.kid
            )));
        }
        public.push(tokens::public_key(&row.kid, &row.public_key)?.valid_until(row.retire_time));
        let newer = signer.is_none_or(|s| row.activate_time > s.activate_time);
        if row.activate_time <= now && newer {
            signer = Some(row);
        }
    }
    let signer = signer
        .map(|row| Signer::from_pkcs8(&row.kid, &row.private_key))
        .transpose()?;
    Ok(Keyring::new(signer, Verifier::new(public)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_formats() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert!(MasterKey::parse(hex).is_ok());
        let b64 = STANDARD.encode([7u8; 32]);
        assert!(MasterKey::parse(&b64).is_ok());
        assert!(MasterKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 32])).is_ok());
        assert!(MasterKey::parse("short").is_err());
        assert!(MasterKey::parse(&STANDARD.encode([7u8; 31])).is_err());
        assert_eq!(
            format!("{:?}", MasterKey::parse(hex).unwrap()),
            "MasterKey([redacted])"
        );
    }

    #[test]
    fn sealing_is_bound_to_the_row() {
        let m = MasterKey::parse(&STANDARD.encode([9u8; 32])).unwrap();
        let sealed = m.seal(b"secret", "signing_key:a").unwrap();
        assert_ne!(&sealed[NONCE_LEN..], b"secret");
        assert_eq!(m.open(&sealed, "signing_key:a").unwrap(), b"secret");
        assert!(m.open(&sealed, "signing_key:b").is_err());
        let other = MasterKey::parse(&STANDARD.encode([8u8; 32])).unwrap();
        assert!(other.open(&sealed, "signing_key:a").is_err());
        assert!(m.open(&sealed[..10], "signing_key:a").is_err());
    }

    fn row(now: DateTime<Utc>, activate_in: i64, retire_in: Option<i64>) -> SigningKey {
        let k = tokens::generate_key().unwrap();
        SigningKey {
            kid: k.kid,
            algorithm: "EdDSA".into(),
            private_key: k.private_pkcs8,
            public_key: k.public,
            create_time: now,
            activate_time: now + Duration::seconds(activate_in),
            retire_time: retire_in.map(|s| now + Duration::seconds(s)),
            encrypted: false,
        }
    }

    #[test]
    fn the_newest_active_key_signs_and_every_key_verifies() {
        let now = Utc::now();
        let old = row(now, -600, Some(300));
        let current = row(now, -60, None);
        let published = row(now, 600, None);
        let kr =
            keyring_from_rows(&[old.clone(), current.clone(), published.clone()], now).unwrap();
        let kids: Vec<&str> = kr.jwks().iter().map(|j| j.kid.as_str()).collect();
        assert_eq!(kids, [&old.kid, &current.kid, &published.kid]);
        assert!(format!("{kr:?}").contains(&format!("signing_kid: Some({:?})", current.kid)));
        // The old key verifies until its retire time.
        assert!(kr.verifier().accepts_key(&old.kid, now));
        assert!(
            !kr.verifier()
                .accepts_key(&old.kid, now + Duration::seconds(300))
        );
        assert!(kr.verifier().accepts_key(&published.kid, now));

        let nothing_active = keyring_from_rows(&[published], now).unwrap();
        assert!(format!("{nothing_active:?}").contains("signing_kid: None"));
    }

    #[test]
    fn rows_must_hold_ed25519_keys() {
        let now = Utc::now();
        let mut bad = row(now, 0, None);
        bad.algorithm = "RS256".into();
        assert!(keyring_from_rows(&[bad], now).is_err());
        let mut short = row(now, 0, None);
        short.public_key.pop();
        assert!(keyring_from_rows(&[short], now).is_err());
    }
}
