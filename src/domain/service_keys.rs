//! Service keys: creation (plain and proxy keys), listing and revocation, for the callers of
//! ValidateToken and for gateways.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::models::NewServiceKey;
use crate::db::{self, DbError, service_keys};
use crate::domain::audit::{self, AuditEntry, AuditKind};
use crate::domain::opaque::{self, HashedToken};
use crate::domain::sessions::revocation;
use crate::domain::{Authd, ClientInfo, Error, Principal, Result, Role, validate};

/// `last_use_time` of a service key is written at most this often.
pub(in crate::domain) const SERVICE_KEY_TOUCH_SECS: i64 = 60;

/// A service key's metadata.
#[derive(Debug, Clone)]
pub struct ServiceKeyInfo {
    pub id: Uuid,
    pub name: String,
    pub creator_id: Option<Uuid>,
    pub create_time: DateTime<Utc>,
    pub last_use_time: Option<DateTime<Utc>>,
    pub trusted_proxy: bool,
    pub allowed_cidrs: Vec<String>,
}

/// What CreateServiceKey (and the CLI) asks for.
#[derive(Debug, Clone, Default)]
pub struct ServiceKeySpec {
    /// A label for the calling service.
    pub name: String,
    /// A gateway's key: may name the end user's address in `x-forwarded-for`.
    pub trusted_proxy: bool,
    /// IPs or CIDRs the key may be used from; empty = anywhere.
    pub allowed_cidrs: Vec<String>,
}

impl From<db::models::ServiceKey> for ServiceKeyInfo {
    fn from(k: db::models::ServiceKey) -> Self {
        ServiceKeyInfo {
            id: k.id,
            name: k.name,
            creator_id: k.creator_id,
            create_time: k.create_time,
            last_use_time: k.last_use_time,
            trusted_proxy: k.trusted_proxy,
            allowed_cidrs: k.allowed_cidrs,
        }
    }
}

impl Authd {
    /// ADMIN (or the CLI, with no principal): creates a plain service key (see
    /// [`Authd::create_service_key_with`]).
    pub async fn create_service_key(
        &self,
        actor: Option<&Principal>,
        name: &str,
        client: &ClientInfo,
    ) -> Result<(ServiceKeyInfo, String)> {
        let spec = ServiceKeySpec {
            name: name.to_owned(),
            ..Default::default()
        };
        self.create_service_key_with(actor, &spec, client).await
    }

    /// ADMIN (or the CLI, with no principal): creates a service key, a proxy key if
    /// `spec.trusted_proxy`. Returns its metadata and the key. It is usable on this replica at once,
    /// on the others after their next poll of the view.
    pub async fn create_service_key_with(
        &self,
        actor: Option<&Principal>,
        spec: &ServiceKeySpec,
        client: &ClientInfo,
    ) -> Result<(ServiceKeyInfo, String)> {
        if let Some(p) = actor {
            p.require(Role::Admin)?;
        }
        let name = validate::label("name", &spec.name)?;
        let allowed_cidrs = validate::cidrs("allowed_cidrs", &spec.allowed_cidrs)?;
        let key = opaque::new_service_key();
        let hash = HashedToken::of(&key);
        let now = self.now();
        let new_key = NewServiceKey {
            id: Uuid::new_v4(),
            name: &name,
            key_hash: hash.as_bytes(),
            creator_id: actor.map(|p| p.user_id),
            create_time: now,
            trusted_proxy: spec.trusted_proxy,
            allowed_cidrs: &allowed_cidrs,
        };
        let mut detail = format!("service key {} ({})", new_key.id, name);
        if spec.trusted_proxy {
            detail.push_str("; trusted proxy");
        }
        if !allowed_cidrs.is_empty() {
            detail.push_str(&format!("; allowed from {}", allowed_cidrs.join(", ")));
        }
        let mut conn = self.conn().await?;
        let row = conn
            .transaction::<_, DbError, _>(async |conn| {
                let row = service_keys::insert(conn, &new_key).await?;
                let entry = AuditEntry::new(AuditKind::ServiceKeyCreated, client)
                    .actor(row.creator_id)
                    .detail(detail);
                audit::record(conn, now, entry).await?;
                Ok(row)
            })
            .await?;
        // Not a revocation, but the view holds the service keys: usable here at once.
        self.refresh_views(&mut conn).await;
        Ok((row.into(), key))
    }

    pub async fn list_service_keys(&self, actor: &Principal) -> Result<Vec<ServiceKeyInfo>> {
        actor.require(Role::Admin)?;
        let rows = service_keys::list_active(&mut *self.conn().await?).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn revoke_service_key(
        &self,
        actor: &Principal,
        id: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        actor.require(Role::Admin)?;
        let id = validate::uuid("id", id)?;
        let now = self.now();
        let entry = AuditEntry::new(AuditKind::ServiceKeyRevoked, client)
            .actor(Some(actor.user_id))
            .detail(format!("service key {id}"));
        let mut conn = self.conn().await?;
        let revoked = conn
            .transaction::<_, DbError, _>(async |conn| {
                revocation::revoke_service_key(conn, now, id, entry).await
            })
            .await?;
        if self.publish(&mut conn, revoked).await {
            Ok(())
        } else {
            Err(Error::NotFound("service key not found".into()))
        }
    }
}
