//! Which replica owns a collection: rendezvous (highest random weight) hashing of the
//! collection's client id over the live members. Every replica that sees the same members
//! picks the same owner, and a member joining or leaving moves only the collections it gains
//! or loses. The hash is FNV-1a with a 64-bit finalizer, fixed here so that two builds agree.

use crate::member::MemberRecord;

/// The owner of `collection` among `members`; `None` when there is none.
pub fn owner<'a>(members: &'a [MemberRecord], collection: &str) -> Option<&'a MemberRecord> {
    members
        .iter()
        .max_by_key(|member| (weight(&member.id, collection), member.id.as_str()))
}

fn weight(member: &str, collection: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in member
        .bytes()
        .chain(std::iter::once(0))
        .chain(collection.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone spreads similar keys poorly.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> Vec<MemberRecord> {
        ids.iter()
            .map(|id| MemberRecord {
                id: (*id).into(),
                address: format!("http://{id}"),
            })
            .collect()
    }

    #[test]
    fn owners_spread_agree_in_any_order_and_move_only_from_a_leaver() {
        let three = members(&["p-0", "p-1", "p-2"]);
        let mut reversed = three.clone();
        reversed.reverse();
        let collections: Vec<String> = (0..300).map(|i| format!("c{i}")).collect();
        let mut per_member = [0usize; 3];
        for c in &collections {
            let o = owner(&three, c).unwrap();
            assert_eq!(o, owner(&reversed, c).unwrap(), "order of members matters");
            per_member[three.iter().position(|m| m == o).unwrap()] += 1;
        }
        assert!(per_member.iter().all(|n| *n > 60), "{per_member:?}");
        // p-1 leaves: only its collections move.
        let two = members(&["p-0", "p-2"]);
        for c in &collections {
            let before = owner(&three, c).unwrap();
            let after = owner(&two, c).unwrap();
            if before.id != "p-1" {
                assert_eq!(before, after, "{c} moved though its owner stayed");
            }
        }
        assert!(owner(&[], "c").is_none());
    }
}
