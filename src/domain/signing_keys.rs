//! Signing-key rotation and publication (JWKS), over the keystore and the keyring.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::authd::chrono_duration;
use crate::domain::tokens::PublicJwk;
use crate::domain::{Authd, Principal, Result, Role};

impl Authd {
    /// Re-reads the signing keys, so a rotation made by any replica (or a key whose activation time
    /// has come) takes effect here. When the published set changed (a key added or retired), the
    /// WatchRevocations streams are told (`keys_changed`).
    pub async fn reload_keys(&self) -> Result<()> {
        let keyring = self
            .keystore
            .load_keyring(&mut *self.conn().await?, self.now())
            .await?;
        let changed = {
            let mut current = self.keyring.write().unwrap_or_else(|e| e.into_inner());
            let changed = current.jwks() != keyring.jwks();
            *current = Arc::new(keyring);
            changed
        };
        if changed {
            self.keys_changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    /// ADMIN (or the CLI, with no principal): adds a signing key. It is published at once and signs
    /// after `AUTHD_KEY_PUBLISH_DELAY`; older keys retire once their tokens have expired.
    pub async fn rotate_signing_key(
        &self,
        actor: Option<&Principal>,
    ) -> Result<(String, DateTime<Utc>)> {
        if let Some(p) = actor {
            p.require(Role::Admin)?;
        }
        let (kid, activate_time) = self
            .keystore
            .rotate(
                &mut *self.conn().await?,
                self.now(),
                chrono_duration(self.settings.keys.publish_delay),
                chrono_duration(self.settings.tokens.access_token_ttl),
            )
            .await?;
        self.reload_keys().await?;
        tracing::info!(%kid, %activate_time, actor = ?actor.map(|p| p.user_id), "signing key rotated");
        Ok((kid, activate_time))
    }

    /// The public keys for JWKS.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.keyring().jwks().to_vec()
    }
}
