//! `[[namespaces]]`: tenant and database names that differ between the stores.

use serde::Deserialize;

use crate::{invalid, ConfigError};

/// A tenant (`"tenant"`) or a database (`"tenant/database"`) that has another name on the new
/// store. Clients always use the old store's names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRule {
    /// The name on the old store.
    pub old: String,
    /// The name on the new store.
    pub new: String,
}

/// Both sides of each rule name the same kind of thing, and no two rules overlap.
pub(crate) fn validate(rules: &[NamespaceRule]) -> Result<(), ConfigError> {
    let depth = |name: &str| name.split('/').count();
    for rule in rules {
        let parts_ok = |name: &str| {
            let parts: Vec<&str> = name.split('/').collect();
            parts.len() <= 2 && parts.iter().all(|p| !p.is_empty())
        };
        if !parts_ok(&rule.old) || !parts_ok(&rule.new) || depth(&rule.old) != depth(&rule.new) {
            return Err(invalid(
                "namespaces",
                format!(
                    "`{}` -> `{}`: both sides must be a tenant (\"t\") or both a database (\"t/db\")",
                    rule.old, rule.new
                ),
            ));
        }
    }
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if a.old == b.old || a.new == b.new {
                return Err(invalid(
                    "namespaces",
                    format!(
                        "`{}` -> `{}` and `{}` -> `{}` overlap",
                        a.old, a.new, b.old, b.new
                    ),
                ));
            }
        }
    }
    Ok(())
}
