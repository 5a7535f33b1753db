//! [`Role`]: what an account may do, as the JWT `role` claim and the database name it.

/// A user's role, ordered by power: `User < Moderator < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    User,
    Moderator,
    Admin,
}

impl Role {
    /// The lowercase name used in the database and in the JWT `role` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }

    /// The role named by [`Role::as_str`]; `None` for anything else (case-sensitive).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "moderator" => Some(Role::Moderator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn names_round_trip_and_order_by_power() {
        for r in [Role::User, Role::Moderator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse(""), None);
        assert!(Role::User < Role::Moderator && Role::Moderator < Role::Admin);
    }
}
