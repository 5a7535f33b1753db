//! Direct database access for the tests that inspect or change rows behind the API's back: the
//! row shapes of raw SQL queries, and the helpers around them, in one place.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use diesel::sql_types::{BigInt, Text};

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
