//! What one store holds: every tenant asked for, its databases, and their collections with
//! record count, dimension, metadata and configuration.
//!
//! Chroma has no "list tenants" call, so the caller names the tenants (the command line adds
//! the ones the config's namespace rules name); a tenant the store does not know is listed as
//! not found rather than failing the whole inventory.

use serde::Serialize;
use serde_json::Value;

use crate::client::{ChromaClient, ClientError};
use crate::verify::retry;

/// One store's inventory.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// Which store: `old`, `new`, or the URL it was taken from.
    pub store: String,
    pub tenants: Vec<TenantInventory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantInventory {
    pub name: String,
    /// False when the store does not know the tenant.
    pub found: bool,
    pub databases: Vec<DatabaseInventory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseInventory {
    pub name: String,
    pub collections: Vec<CollectionInventory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CollectionInventory {
    pub name: String,
    /// The store's own id (it differs between the stores).
    pub id: String,
    pub count: u64,
    /// `None` until the collection holds a record.
    pub dimension: Option<i64>,
    pub metadata: Option<Value>,
    /// The collection's configuration as the store reports it (index parameters, embedding
    /// function).
    pub configuration: Option<Value>,
}

impl Inventory {
    /// Every collection with its tenant and database, in listing order.
    pub fn collections(&self) -> impl Iterator<Item = (&str, &str, &CollectionInventory)> {
        self.tenants.iter().flat_map(|t| {
            t.databases.iter().flat_map(move |d| {
                d.collections
                    .iter()
                    .map(move |c| (t.name.as_str(), d.name.as_str(), c))
            })
        })
    }
}

/// Takes the inventory of the store `client` speaks to, for `tenants` (in the store's own
/// names; duplicates are listed once).
pub async fn collect(
    client: &ChromaClient,
    store: &str,
    tenants: &[String],
) -> Result<Inventory, ClientError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for tenant in tenants.iter().filter(|t| seen.insert(t.as_str())) {
        if !retry(|| client.tenant_exists(tenant)).await? {
            out.push(TenantInventory {
                name: tenant.clone(),
                found: false,
                databases: Vec::new(),
            });
            continue;
        }
        let databases = retry(|| client.databases(tenant)).await?;
        let mut listed = Vec::new();
        for database in databases {
            let mut collections = Vec::new();
            for collection in retry(|| client.collections(tenant, &database)).await? {
                let count = retry(|| client.count(tenant, &database, &collection.id)).await?;
                let configuration = collection
                    .configuration_json
                    .clone()
                    .or_else(|| collection.raw.get("configuration").cloned())
                    .filter(|c| !c.is_null());
                collections.push(CollectionInventory {
                    name: collection.name,
                    id: collection.id,
                    count,
                    dimension: collection.dimension,
                    metadata: collection.metadata.filter(|m| !m.is_null()),
                    configuration,
                });
            }
            collections.sort_by(|a, b| a.name.cmp(&b.name));
            listed.push(DatabaseInventory {
                name: database,
                collections,
            });
        }
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        out.push(TenantInventory {
            name: tenant.clone(),
            found: true,
            databases: listed,
        });
    }
    Ok(Inventory {
        store: store.to_owned(),
        tenants: out,
    })
}
