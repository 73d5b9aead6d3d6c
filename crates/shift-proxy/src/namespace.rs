//! Tenant and database names that differ between the stores. Clients always use the old
//! store's names; the proxy renames on the way to the new store and back.

use shift_config::{BackendName, NamespaceRule};

/// A client's tenant and database, or a backend's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub tenant: String,
    pub database: Option<String>,
}

/// The renaming rules, most specific first.
#[derive(Debug, Clone, Default)]
pub struct NamespaceMap {
    /// (old tenant, old database, new tenant, new database); database rules before tenant rules.
    rules: Vec<(String, Option<String>, String, Option<String>)>,
}

impl NamespaceMap {
    pub fn new(rules: &[NamespaceRule]) -> NamespaceMap {
        let split = |s: &str| match s.split_once('/') {
            Some((t, d)) => (t.to_owned(), Some(d.to_owned())),
            None => (s.to_owned(), None),
        };
        let mut rules: Vec<_> = rules
            .iter()
            .map(|r| {
                let (ot, od) = split(&r.old);
                let (nt, nd) = split(&r.new);
                (ot, od, nt, nd)
            })
            .collect();
        rules.sort_by_key(|r| r.1.is_none());
        NamespaceMap { rules }
    }

    pub fn is_identity(&self) -> bool {
        self.rules.is_empty()
    }

    /// The names on `backend` of the client's tenant (and database).
    pub fn to_backend(
        &self,
        backend: BackendName,
        tenant: &str,
        database: Option<&str>,
    ) -> Namespace {
        if backend == BackendName::New {
            for (ot, od, nt, nd) in &self.rules {
                if ot != tenant {
                    continue;
                }
                match (od, nd) {
                    (Some(od), Some(nd)) if database == Some(od.as_str()) => {
                        return Namespace {
                            tenant: nt.clone(),
                            database: Some(nd.clone()),
                        };
                    }
                    (None, _) => {
                        return Namespace {
                            tenant: nt.clone(),
                            database: database.map(str::to_owned),
                        };
                    }
                    _ => {}
                }
            }
        }
        Namespace {
            tenant: tenant.to_owned(),
            database: database.map(str::to_owned),
        }
    }

    /// The client's names for a tenant (and database) as `backend` calls them.
    pub fn to_client(
        &self,
        backend: BackendName,
        tenant: &str,
        database: Option<&str>,
    ) -> Namespace {
        if backend == BackendName::New {
            for (ot, od, nt, nd) in &self.rules {
                if nt != tenant {
                    continue;
                }
                match (od, nd) {
                    (Some(od), Some(nd)) if database == Some(nd.as_str()) => {
                        return Namespace {
                            tenant: ot.clone(),
                            database: Some(od.clone()),
                        };
                    }
                    (None, _) => {
                        return Namespace {
                            tenant: ot.clone(),
                            database: database.map(str::to_owned),
                        };
                    }
                    _ => {}
                }
            }
        }
        Namespace {
            tenant: tenant.to_owned(),
            database: database.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> NamespaceMap {
        NamespaceMap::new(&[
            NamespaceRule {
                old: "default_tenant/default_database".into(),
                new: "acme/prod".into(),
            },
            NamespaceRule {
                old: "default_tenant".into(),
                new: "acme".into(),
            },
        ])
    }

    #[test]
    fn database_rules_win_over_tenant_rules_and_old_is_untouched() {
        let m = map();
        let ns = m.to_backend(BackendName::New, "default_tenant", Some("default_database"));
        assert_eq!(
            (ns.tenant.as_str(), ns.database.as_deref()),
            ("acme", Some("prod"))
        );
        let ns = m.to_backend(BackendName::New, "default_tenant", Some("other"));
        assert_eq!(
            (ns.tenant.as_str(), ns.database.as_deref()),
            ("acme", Some("other"))
        );
        let ns = m.to_backend(BackendName::Old, "default_tenant", Some("default_database"));
        assert_eq!(ns.tenant, "default_tenant");
        let ns = m.to_backend(BackendName::New, "someone", None);
        assert_eq!(ns.tenant, "someone");
    }

    #[test]
    fn names_come_back_to_the_clients_names() {
        let m = map();
        for (t, d) in [
            ("default_tenant", Some("default_database")),
            ("default_tenant", Some("x")),
            ("t", None),
        ] {
            let there = m.to_backend(BackendName::New, t, d);
            let back = m.to_client(BackendName::New, &there.tenant, there.database.as_deref());
            assert_eq!((back.tenant.as_str(), back.database.as_deref()), (t, d));
        }
    }
}
