//! [`ServiceKey`]: the `x-api-key` that authenticates the layer to authd, kept out of logs.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// A service key (made by `authd service-keys create` or AuthService.CreateServiceKey). Sent as
/// `x-api-key` metadata on WatchRevocations and ValidateToken. Its `Debug` prints `ServiceKey(***)`.
#[derive(Clone)]
pub struct ServiceKey(AsciiMetadataValue);

/// A service key that cannot be sent as metadata (empty, or not visible ASCII), or an environment
/// variable that is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceKeyError {
    /// The key is empty or contains characters that metadata cannot carry.
    #[error("a service key is non-empty visible ASCII")]
    Malformed,
    /// [`ServiceKey::from_env`]: the variable is not set (or not Unicode).
    #[error("environment variable {0} is not set")]
    NotSet(String),
}

impl ServiceKey {
    /// The key, trimmed.
    pub fn new(key: impl AsRef<str>) -> Result<Self, ServiceKeyError> {
        let key = key.as_ref().trim();
        if key.is_empty() {
            return Err(ServiceKeyError::Malformed);
        }
        let mut value: AsciiMetadataValue = key.parse().map_err(|_| ServiceKeyError::Malformed)?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The key in environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, ServiceKeyError> {
        let key = std::env::var(var).map_err(|_| ServiceKeyError::NotSet(var.to_owned()))?;
        Self::new(key)
    }

    pub(crate) fn add_to(&self, md: &mut MetadataMap) {
        md.insert("x-api-key", self.0.clone());
    }
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_bad_keys_are_refused() {
        let k = ServiceKey::new(" sk_secret ").unwrap();
        assert_eq!(format!("{k:?}"), "ServiceKey(***)");
        let mut md = MetadataMap::new();
        k.add_to(&mut md);
        assert_eq!(md.get("x-api-key").unwrap(), "sk_secret");
        assert_eq!(
            ServiceKey::new("  ").unwrap_err(),
            ServiceKeyError::Malformed
        );
        assert_eq!(
            ServiceKey::new("a\nb").unwrap_err(),
            ServiceKeyError::Malformed
        );
    }
}
