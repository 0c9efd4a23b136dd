//! The console's one user, `ops`: its password is `CALLSTREAM_DEV_PASSWORD`
//! when set, else drawn at each start and printed, so no fixed password
//! ever opens a console someone left running.

use std::collections::BTreeMap;

use anyhow::Context;

pub const USER: &str = "ops";

/// The variable that fixes the password.
pub const PASSWORD_VARIABLE: &str = "CALLSTREAM_DEV_PASSWORD";

/// bcrypt's work factor. The console takes bcrypt hashes only; 12 (the
/// usual) would make each sign-in check cost a quarter of a second, for a
/// password that lives as long as this process on a dev machine. This is a
/// dev tool: 8 is plenty.
const COST: u32 = 8;

pub struct Login {
    pub password: String,
    /// Whether the password came from [`PASSWORD_VARIABLE`] (and is not
    /// printed again).
    pub from_env: bool,
}

impl Login {
    pub fn from_env() -> Login {
        match std::env::var(PASSWORD_VARIABLE) {
            Ok(password) if !password.is_empty() => Login {
                password,
                from_env: true,
            },
            _ => Login {
                // 80 random bits (UUIDv4's come from a CSPRNG), in hex.
                password: uuid::Uuid::new_v4().simple().to_string()[..20].to_string(),
                from_env: false,
            },
        }
    }

    /// `console.users`: [`USER`] → the bcrypt hash of the password.
    pub fn console_users(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let hash =
            bcrypt::hash(&self.password, COST).context("cannot hash the console password")?;
        Ok(BTreeMap::from([(USER.to_string(), hash)]))
    }
}
