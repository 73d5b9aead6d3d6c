//! `[routing]`: which store serves reads and takes writes first.

use serde::Deserialize;

use crate::BackendName;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// The store that serves reads and is written first.
    pub primary: BackendName,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            primary: BackendName::Old,
        }
    }
}
