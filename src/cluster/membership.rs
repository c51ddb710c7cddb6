//! Who owns a buyer: rendezvous (highest-random-weight) hashing of the `user_id` over
//! `cluster.nodes`. Every node computes the same owner from the same list, with no
//! coordination, and a buyer moves only when the list changes.
//!
//! The owner decides every new order of its buyers, so a retry of an order (same `order_id`,
//! same content, hence the same `user_id`) and a buyer's `per_user_limit` are checked in one
//! place, against one journal, exactly as a single engine checks them.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::config::ClusterNode;

/// Fixed keys: the score must be the same on every node and in every build.
const SCORE_KEYS: (u64, u64) = (0x5354_414d_5045_4445, 0x7265_6e64_657a_766f);

#[derive(Debug, Clone)]
pub struct Membership {
    nodes: Vec<ClusterNode>,
    me: usize,
}

impl Membership {
    /// `None` when `me` is not one of `nodes` (the config check refuses that first).
    pub fn new(nodes: Vec<ClusterNode>, me: &str) -> Option<Self> {
        let me = nodes.iter().position(|node| node.id == me)?;
        Some(Self { nodes, me })
    }

    pub fn me(&self) -> &ClusterNode {
        &self.nodes[self.me]
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Every node but this one.
    pub fn peers(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(index, _)| *index != self.me)
            .map(|(_, node)| node)
    }

    /// The node that decides the orders of `user_id`.
    pub fn owner_of(&self, user_id: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .max_by_key(|node| (score(&node.id, user_id), node.id.as_str()))
            .expect("a membership has at least one node")
    }

    pub fn owns(&self, user_id: &str) -> bool {
        self.owner_of(user_id).id == self.me().id
    }
}

fn score(node: &str, user_id: &str) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(SCORE_KEYS.0, SCORE_KEYS.1);
    hasher.write(node.as_bytes());
    // A separator no id contains, so ("ab","c") and ("a","bc") score apart.
    hasher.write_u8(0xff);
    hasher.write(user_id.as_bytes());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str]) -> Vec<ClusterNode> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| ClusterNode {
                id: (*id).to_owned(),
                address: format!("127.0.0.1:{}", 9000 + i),
            })
            .collect()
    }

    #[test]
    fn every_node_names_the_same_owner_and_users_spread_over_all_nodes() {
        let a = Membership::new(nodes(&["a", "b", "c"]), "a").unwrap();
        let c = Membership::new(nodes(&["c", "a", "b"]), "c").unwrap();
        let mut counts = std::collections::HashMap::new();
        for user in 0..3000 {
            let user = format!("u{user}");
            assert_eq!(a.owner_of(&user).id, c.owner_of(&user).id);
            *counts.entry(a.owner_of(&user).id.clone()).or_insert(0) += 1;
        }
        for id in ["a", "b", "c"] {
            let count = counts[id];
            assert!((800..1200).contains(&count), "{id} owns {count} of 3000");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_own_users() {
        let three = Membership::new(nodes(&["a", "b", "c"]), "a").unwrap();
        let two = Membership::new(nodes(&["a", "b"]), "a").unwrap();
        for user in 0..2000 {
            let user = format!("u{user}");
            let before = three.owner_of(&user).id.clone();
            if before != "c" {
                assert_eq!(two.owner_of(&user).id, before);
            }
        }
    }
}
