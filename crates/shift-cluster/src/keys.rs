//! Where the cluster's state lives in etcd, under the deployment's `key_prefix`:
//!
//! ```text
//! PREFIX/topology            {epoch, primary, mode, reads, paused} (JSON), the cluster's truth
//! PREFIX/members/<id>        {id} (JSON), on the member's lease: present while it is alive
//! PREFIX/idmap/<client id>   a collection-map entry (JSON), created only when absent
//! PREFIX/switch              the two-phase cutover: {epoch, primary, phase, deadline}
//! PREFIX/acks/<epoch>/<id>   a replica's gate closed and journal drained, on its lease
//! ```

/// The etcd keys of one deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys under `prefix` (`/chroma-shift`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The topology's key.
    pub fn topology(&self) -> String {
        format!("{}/topology", self.prefix)
    }

    /// The prefix of every member's key.
    pub fn members(&self) -> String {
        format!("{}/members/", self.prefix)
    }

    /// Member `id`'s key.
    pub fn member(&self, id: &str) -> String {
        format!("{}{id}", self.members())
    }

    /// The cutover in progress or last finished ([`crate::cutover::SwitchRecord`]).
    pub fn switch(&self) -> String {
        format!("{}/switch", self.prefix)
    }

    /// The prefix of the replicas' acknowledgements of the cutover to `epoch`.
    pub fn acks(&self, epoch: u64) -> String {
        format!("{}/acks/{epoch}/", self.prefix)
    }

    /// The prefix of every collection-map entry.
    pub fn idmap(&self) -> String {
        format!("{}/idmap/", self.prefix)
    }

    /// The map entry of the client's collection id `client_id`.
    pub fn idmap_entry(&self, client_id: &str) -> String {
        format!("{}{client_id}", self.idmap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_the_prefix_and_do_not_overlap() {
        let keys = Keys::new("/cs/");
        assert_eq!(keys.topology(), "/cs/topology");
        assert_eq!(keys.member("p-0"), "/cs/members/p-0");
        assert_eq!(keys.idmap_entry("c1"), "/cs/idmap/c1");
        assert!(!keys.topology().starts_with(&keys.members()));
        assert!(!keys.member("x").starts_with(&keys.idmap()));
    }
}
