//! Direct database access for the tests that inspect or change rows behind the API's back: the
//! row shapes of raw SQL queries, and the helpers around them, in one place.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Binary, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// One `n` column of a `SELECT count(*) AS n …`.
#[derive(diesel::QueryableByName, Debug)]
pub struct Count {
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// One text column named `t`.
#[derive(diesel::QueryableByName, Debug)]
pub struct TextRow {
    #[diesel(sql_type = Text)]
    pub t: String,
}

/// Inserts an unencrypted EdDSA signing key as authd stores one: `private_der` is its PKCS#8 DER,
/// `public` the raw 32-byte public key; created and active from `since`, not retired.
pub async fn insert_signing_key(
    conn: &mut AsyncPgConnection,
    kid: &str,
    private_der: &[u8],
    public: &[u8],
    since: DateTime<Utc>,
) {
    diesel::sql_query(
        "INSERT INTO signing_keys \
         (kid, algorithm, private_key, public_key, create_time, activate_time, encrypted) \
         VALUES ($1, 'EdDSA', $2, $3, $4::timestamptz, $4::timestamptz, false)",
    )
    .bind::<Text, _>(kid)
    .bind::<Binary, _>(private_der)
    .bind::<Binary, _>(public)
    .bind::<Text, _>(since.to_rfc3339())
    .execute(conn)
    .await
    .expect("insert a signing key");
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a box that authd sealed with the master key (XChaCha20-Poly1305: a 24-byte nonce, then
/// the ciphertext), with `aad` as its associated data.
pub fn open_sealed(master: &[u8; 32], sealed: &[u8], aad: &str) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new_from_slice(master).expect("key");
    let (nonce, ct) = sealed.split_at(24);
    let nonce: [u8; 24] = nonce.try_into().expect("nonce");
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ct,
                aad: aad.as_bytes(),
            },
        )
        .expect("open a sealed box with the master key")
}
