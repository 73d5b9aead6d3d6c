//! Collection ids. Chroma gives each collection a random id per store and a client cannot
//! choose it, so two kinds of id meet in the proxy: the one a client holds
//! ([`ClientCollectionId`]) and each backend's own ([`BackendCollectionId`]). They are both
//! UUID strings; the types keep one from being sent where the other is meant. Both serialize
//! as the bare string, so the journal and the collection map read as before.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

macro_rules! collection_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                $name(id.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

collection_id!(
    /// The id clients use for a collection: the id of the store where the proxy first saw it
    /// (the old store's for everything that existed before the migration), the same before and
    /// after a cutover. Ops in the journal and the collection map are keyed by it.
    ClientCollectionId
);

collection_id!(
    /// A backend's own id for a collection, what goes into the paths sent to that store.
    BackendCollectionId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_bare_strings() {
        let id = ClientCollectionId::from("0a1b");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"0a1b\"");
        let back: BackendCollectionId = serde_json::from_str("\"0a1b\"").unwrap();
        assert_eq!(back, "0a1b");
    }
}
