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
        self.rename(backend, tenant, database, |(ot, od, nt, nd)| {
            ((ot, od), (nt, nd))
        })
    }

    /// The client's names for a tenant (and database) as `backend` calls them.
    pub fn to_client(
        &self,
        backend: BackendName,
        tenant: &str,
        database: Option<&str>,
    ) -> Namespace {
        self.rename(backend, tenant, database, |(ot, od, nt, nd)| {
            ((nt, nd), (ot, od))
        })
    }

    /// Applies the first rule whose `from` side matches; `sides` picks (from, to) of a rule.
    /// The old backend keeps the client's names.
    fn rename<'a>(
        &'a self,
        backend: BackendName,
        tenant: &str,
        database: Option<&str>,
        sides: impl Fn(Side<'a>) -> (Names<'a>, Names<'a>),
    ) -> Namespace {
        if backend == BackendName::Old {
            return Namespace::of(tenant, database);
        }
        for (ot, od, nt, nd) in &self.rules {
            let ((from_tenant, from_db), (to_tenant, to_db)) = sides((ot, od, nt, nd));
            if from_tenant != tenant {
                continue;
            }
            match (from_db, to_db) {
                (Some(from_db), Some(to_db)) if database == Some(from_db.as_str()) => {
                    return Namespace::of(to_tenant, Some(to_db));
                }
                (None, _) => return Namespace::of(to_tenant, database),
                _ => {}
            }
        }
        Namespace::of(tenant, database)
    }
}

/// A rule's four names: old tenant and database, new tenant and database.
type Side<'a> = (
    &'a String,
    &'a Option<String>,
    &'a String,
    &'a Option<String>,
);
/// One side of a rule: a tenant and maybe a database.
type Names<'a> = (&'a String, &'a Option<String>);

impl Namespace {
    fn of(tenant: &str, database: Option<&str>) -> Namespace {
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
