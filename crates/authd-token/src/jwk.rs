//! The published form of the verifying keys: [`PublicJwk`] (RFC 8037 OKP/Ed25519) and the set
//! [`Jwks`] served at `/.well-known/jwks.json` and by GetJwks.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// One public key as published in a JWKS. authd publishes only Ed25519 keys:
/// `{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"alg":"EdDSA","use":"sig"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    /// base64url (no padding) of the 32-byte Ed25519 public key.
    pub x: String,
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
}

impl PublicJwk {
    /// The JWK of an Ed25519 signing key, as authd publishes it.
    pub fn ed25519(kid: &str, public_key: &[u8; 32]) -> Self {
        Self {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(public_key),
            kid: kid.to_owned(),
            alg: Some("EdDSA".into()),
            key_use: Some("sig".into()),
        }
    }

    /// The raw Ed25519 public key, if this is an Ed25519 signature key (`kty` OKP, `crv` Ed25519,
    /// `alg` EdDSA or absent, `use` sig or absent, `x` 32 bytes of base64url).
    pub fn ed25519_public_key(&self) -> Option<[u8; 32]> {
        let fits = self.kty == "OKP"
            && self.crv == "Ed25519"
            && self.alg.as_deref().is_none_or(|a| a == "EdDSA")
            && self.key_use.as_deref().is_none_or(|u| u == "sig");
        if !fits {
            return None;
        }
        URL_SAFE_NO_PAD.decode(&self.x).ok()?.try_into().ok()
    }
}

/// A JSON Web Key Set: `{"keys": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<PublicJwk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_round_trip_with_the_published_field_names() {
        let jwk = PublicJwk::ed25519("k1", &[7u8; 32]);
        let set = Jwks {
            keys: vec![jwk.clone()],
        };
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"keys": [{
                "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32]),
                "kid": "k1", "alg": "EdDSA", "use": "sig",
            }]})
        );
        let back: Jwks = serde_json::from_value(json).unwrap();
        assert_eq!(back, set);
        assert_eq!(jwk.ed25519_public_key(), Some([7u8; 32]));
    }

    #[test]
    fn only_ed25519_signature_keys_have_a_public_key() {
        let ok = PublicJwk::ed25519("k", &[1u8; 32]);
        let rsa = PublicJwk {
            kty: "RSA".into(),
            ..ok.clone()
        };
        let enc = PublicJwk {
            key_use: Some("enc".into()),
            ..ok.clone()
        };
        let short = PublicJwk {
            x: URL_SAFE_NO_PAD.encode([1u8; 31]),
            ..ok.clone()
        };
        let bare = PublicJwk {
            alg: None,
            key_use: None,
            ..ok.clone()
        };
        for k in [&rsa, &enc, &short] {
            assert_eq!(k.ed25519_public_key(), None, "{k:?}");
        }
        assert_eq!(bare.ed25519_public_key(), Some([1u8; 32]));
    }
}
