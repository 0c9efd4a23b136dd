//! CRM delivery (placeholder settings until the CRM consumer lands).

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmSettings {}

impl CrmSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
