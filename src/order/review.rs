//! Order review (审单): the rules that flag a new order for an operator, and the tables they
//! keep. Pure state, no I/O: the engine holds one [`ReviewBook`] behind a lock, asks it
//! about each new order ([`ReviewBook::judge`]) before the order goes to its shard, and
//! replaces its rules when a `review_rules` record is journaled or replayed.
//!
//! | rule (`review` name) | holds when | table | when the table is full |
//! |---|---|---|---|
//! | `address_shared` | the normalised address already has `address_buyers_max` other buyers | address hash → up to that many buyer hashes, [`limits::REVIEW_ADDRESSES_MAX`] addresses | fails **closed**: an order with an address the table cannot take is held |
//! | `client_burst` | the client placed more than `client_orders_per_min` orders in the last 60 s (this one included) | client address → 60 one-second counters, [`limits::REVIEW_CLIENTS_MAX`] clients (idle ones swept) | fails **open**: an untracked client is not held (holding every new client would stop the sale) |
//! | `large_qty` | `qty >= qty_at_least` | none | — |
//! | `review_user` | the user is on `review_users` | the list, [`limits::REVIEW_USERS_MAX`] | a longer list is refused (422) |
//! | deny (403 `denied`) | the user is on `deny_users` | the list, [`limits::REVIEW_USERS_MAX`] | a longer list is refused (422) |
//!
//! Invariants: a rule at 0 (or an empty list) is off and keeps no table; the deny list wins
//! over every other rule (a denied order takes nothing and is counted by no table). The
//! address and client tables count every order that reaches review, accepted or not: a
//! scalper's refused attempts are still attempts. They live in memory and start empty at
//! each start (the client window is a minute; the address table refills as buyers order).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;

use crate::journal::ReviewRulesChanged;
use crate::limits;

/// The rules an order matched, as a bit set (names in [`ReviewFlags::names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReviewFlags(u8);

impl ReviewFlags {
    pub const ADDRESS_SHARED: Self = Self(1);
    pub const CLIENT_BURST: Self = Self(2);
    pub const LARGE_QTY: Self = Self(4);
    pub const REVIEW_USER: Self = Self(8);
    const NAMES: [(Self, &'static str); 4] = [
        (Self::ADDRESS_SHARED, "address_shared"),
        (Self::CLIENT_BURST, "client_burst"),
        (Self::LARGE_QTY, "large_qty"),
        (Self::REVIEW_USER, "review_user"),
    ];

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn insert(&mut self, flag: Self) {
        self.0 |= flag.0;
    }

    /// The contract's rule names, in the table's order.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(flag, _)| self.0 & flag.0 != 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

/// What review says of a new order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Hold(ReviewFlags),
    /// The user is on the deny list: 403 `denied`, nothing taken.
    Deny,
}

/// Why a rule set was refused (422 `invalid`).
pub fn validate_rules(rules: &ReviewRulesChanged) -> Result<(), String> {
    if rules.address_buyers_max > limits::REVIEW_ADDRESS_BUYERS_MAX {
        return Err(format!(
            "address_buyers_max must be at most {}",
            limits::REVIEW_ADDRESS_BUYERS_MAX
        ));
    }
    if rules.client_orders_per_min > limits::REVIEW_CLIENT_ORDERS_PER_MIN_MAX {
        return Err(format!(
            "client_orders_per_min must be at most {}",
            limits::REVIEW_CLIENT_ORDERS_PER_MIN_MAX
        ));
    }
    for (field, list) in [
        ("review_users", &rules.review_users),
        ("deny_users", &rules.deny_users),
    ] {
        if list.len() > limits::REVIEW_USERS_MAX {
            return Err(format!(
                "{field} holds at most {} users",
                limits::REVIEW_USERS_MAX
            ));
        }
        for user in list {
            super::validate_id(field, user, limits::ORDER_ID_BYTES_MAX)?;
        }
    }
    Ok(())
}

/// One client's orders in the last minute, one counter per second.
#[derive(Debug, Clone)]
struct ClientWindow {
    last_s: u64,
    counts: [u16; 60],
}

impl ClientWindow {
    /// Moves the window to `now_s`, counts one order, and returns the orders in the window.
    fn count(&mut self, now_s: u64) -> u32 {
        if now_s >= self.last_s.saturating_add(60) {
            self.counts = [0; 60];
        } else {
            for second in self.last_s.saturating_add(1)..=now_s {
                self.counts[(second % 60) as usize] = 0;
            }
        }
        // A clock stepped back counts into the newest second seen.
        self.last_s = self.last_s.max(now_s);
        let bucket = &mut self.counts[(self.last_s % 60) as usize];
        *bucket = bucket.saturating_add(1);
        self.counts.iter().map(|&c| u32::from(c)).sum()
    }
}

/// The rules in force and the tables they keep.
#[derive(Debug, Default)]
pub struct ReviewBook {
    rules: ReviewRulesChanged,
    review_users: HashSet<String>,
    deny_users: HashSet<String>,
    /// Normalised address hash → hashes of its distinct buyers (at most the rule's N).
    addresses: HashMap<u64, Vec<u64>>,
    clients: HashMap<IpAddr, ClientWindow>,
    /// When the client table was last swept for idle clients (seconds).
    swept_s: u64,
    hasher: std::collections::hash_map::RandomState,
}

impl ReviewBook {
    pub fn new(rules: ReviewRulesChanged) -> Self {
        let mut book = Self::default();
        book.replace(rules);
        book
    }

    /// True when any rule is on (the engine skips review, and its lock, otherwise).
    pub fn is_active(&self) -> bool {
        let r = &self.rules;
        r.address_buyers_max > 0
            || r.client_orders_per_min > 0
            || r.qty_at_least > 0
            || !r.review_users.is_empty()
            || !r.deny_users.is_empty()
    }

    pub fn rules(&self) -> &ReviewRulesChanged {
        &self.rules
    }

    /// Puts a new rule set in force. A rule turned off drops its table.
    pub fn replace(&mut self, rules: ReviewRulesChanged) {
        self.review_users = rules.review_users.iter().cloned().collect();
        self.deny_users = rules.deny_users.iter().cloned().collect();
        if rules.address_buyers_max != self.rules.address_buyers_max {
            // A new N changes what each list must hold; start the count again.
            self.addresses = HashMap::new();
        }
        if rules.client_orders_per_min == 0 {
            self.clients = HashMap::new();
        }
        self.rules = rules;
    }

    /// Judges one new order. `client` is the buyer's address (the peer, or the forwarded
    /// one from a trusted proxy); `None` skips the burst rule.
    pub fn judge(
        &mut self,
        user_id: &str,
        qty: u32,
        address: Option<&str>,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Verdict {
        if self.deny_users.contains(user_id) {
            return Verdict::Deny;
        }
        let mut flags = ReviewFlags::default();
        let rules = &self.rules;
        if rules.qty_at_least > 0 && qty >= rules.qty_at_least {
            flags.insert(ReviewFlags::LARGE_QTY);
        }
        if self.review_users.contains(user_id) {
            flags.insert(ReviewFlags::REVIEW_USER);
        }
        if let (n @ 1.., Some(address)) = (rules.address_buyers_max, address)
            && self.address_shared(n, user_id, address)
        {
            flags.insert(ReviewFlags::ADDRESS_SHARED);
        }
        if let (n @ 1.., Some(client)) = (self.rules.client_orders_per_min, client)
            && self.client_burst(n, client, now_ms / 1000)
        {
            flags.insert(ReviewFlags::CLIENT_BURST);
        }
        if flags.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Hold(flags)
        }
    }

    fn address_shared(&mut self, n: u32, user_id: &str, address: &str) -> bool {
        let address_hash = self.hash(&normalise_address(address));
        let user_hash = self.hash(user_id);
        let table_full = self.addresses.len() >= limits::REVIEW_ADDRESSES_MAX;
        let buyers = match self.addresses.get_mut(&address_hash) {
            Some(buyers) => buyers,
            None if table_full => return true,
            None => self.addresses.entry(address_hash).or_default(),
        };
        if buyers.contains(&user_hash) {
            return buyers.len() > n as usize;
        }
        let others = buyers.len();
        if others < n as usize {
            buyers.push(user_hash);
        }
        others >= n as usize
    }

    fn client_burst(&mut self, n: u32, client: IpAddr, now_s: u64) -> bool {
        if !self.clients.contains_key(&client) && self.clients.len() >= limits::REVIEW_CLIENTS_MAX {
            if now_s > self.swept_s {
                self.swept_s = now_s;
                self.clients
                    .retain(|_, window| window.last_s.saturating_add(60) > now_s);
            }
            if self.clients.len() >= limits::REVIEW_CLIENTS_MAX {
                return false;
            }
        }
        let window = self.clients.entry(client).or_insert(ClientWindow {
            last_s: now_s,
            counts: [0; 60],
        });
        window.count(now_s) > n
    }

    fn hash(&self, value: &str) -> u64 {
        self.hasher.hash_one(value)
    }
}

/// Keys of an address object that name who receives the parcel, not where it goes: left out
/// of the comparison, since a ring of accounts shipping to one place uses many names.
const RECIPIENT_KEYS: [&str; 6] = ["name", "recipient", "phone", "email", "contact", "company"];

/// An address object's text as review compares it: its values (strings and numbers, in key
/// order, leaving out the recipient's [`RECIPIENT_KEYS`]), lower-cased, with everything but
/// letters and digits dropped, so that `"12 Main St."` and `"12 main st"` are one address.
pub fn normalise_address(address: &str) -> String {
    fn walk(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::String(text) => out.push_str(text),
            serde_json::Value::Number(number) => out.push_str(&number.to_string()),
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map
                    .keys()
                    .filter(|key| {
                        !RECIPIENT_KEYS
                            .iter()
                            .any(|recipient| key.eq_ignore_ascii_case(recipient))
                    })
                    .collect();
                keys.sort();
                for key in keys {
                    walk(&map[key], out);
                }
            }
            serde_json::Value::Bool(_) | serde_json::Value::Null => {}
        }
    }
    let mut text = String::new();
    match serde_json::from_str::<serde_json::Value>(address) {
        Ok(value) => walk(&value, &mut text),
        Err(_) => text.push_str(address),
    }
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ReviewRulesChanged {
        ReviewRulesChanged::default()
    }

    #[test]
    fn addresses_compare_after_case_spaces_and_punctuation() {
        assert_eq!(
            normalise_address(r#"{"line":"12 Main St.","city":"Springfield"}"#),
            normalise_address(r#"{"city":"SPRINGFIELD","line":"12main st"}"#)
        );
        assert_ne!(
            normalise_address(r#"{"line":"12 Main St"}"#),
            normalise_address(r#"{"line":"13 Main St"}"#)
        );
        assert_eq!(
            normalise_address(r#"{"name":"Ann","line":"12 Main St","phone":"1"}"#),
            normalise_address(r#"{"Name":"Bob","line":"12 main st."}"#)
        );
    }

    #[test]
    fn an_address_is_held_once_it_has_n_other_buyers_and_only_then() {
        let mut book = ReviewBook::new(ReviewRulesChanged {
            address_buyers_max: 2,
            ..rules()
        });
        let at = |book: &mut ReviewBook, user: &str, addr: &str| {
            book.judge(user, 1, Some(addr), None, 0)
        };
        let a = r#"{"line":"1 Ring Rd"}"#;
        assert_eq!(at(&mut book, "u1", a), Verdict::Pass);
        assert_eq!(at(&mut book, "u1", a), Verdict::Pass);
        assert_eq!(
            at(&mut book, "u2", "{\"line\":\"1 RING RD.\"}"),
            Verdict::Pass
        );
        assert_eq!(
            at(&mut book, "u3", a),
            Verdict::Hold(ReviewFlags::ADDRESS_SHARED)
        );
        assert_eq!(at(&mut book, "u1", a), Verdict::Pass);
        assert_eq!(
            at(&mut book, "u4", r#"{"line":"2 Ring Rd"}"#),
            Verdict::Pass
        );
    }

    #[test]
    fn a_client_is_held_past_n_orders_a_minute_and_freed_a_minute_later() {
        let mut book = ReviewBook::new(ReviewRulesChanged {
            client_orders_per_min: 2,
            ..rules()
        });
        let client = Some("10.0.0.1".parse().unwrap());
        let other = Some("10.0.0.2".parse().unwrap());
        assert_eq!(book.judge("u", 1, None, client, 1_000), Verdict::Pass);
        assert_eq!(book.judge("u", 1, None, client, 30_000), Verdict::Pass);
        assert_eq!(
            book.judge("v", 1, None, client, 59_000),
            Verdict::Hold(ReviewFlags::CLIENT_BURST)
        );
        assert_eq!(book.judge("u", 1, None, other, 59_000), Verdict::Pass);
        // At 61 s the order of second 1 has left the window: 30 s, 59 s and this one.
        assert_eq!(
            book.judge("u", 1, None, client, 61_000),
            Verdict::Hold(ReviewFlags::CLIENT_BURST)
        );
        assert_eq!(book.judge("u", 1, None, client, 200_000), Verdict::Pass);
    }

    #[test]
    fn deny_wins_and_lists_and_qty_flag_only_their_orders() {
        let mut book = ReviewBook::new(ReviewRulesChanged {
            qty_at_least: 3,
            review_users: vec!["watch".into()],
            deny_users: vec!["bad".into(), "watch".into()],
            ..rules()
        });
        assert_eq!(book.judge("bad", 1, None, None, 0), Verdict::Deny);
        assert_eq!(book.judge("watch", 5, None, None, 0), Verdict::Deny);
        book.replace(ReviewRulesChanged {
            qty_at_least: 3,
            review_users: vec!["watch".into()],
            ..rules()
        });
        assert_eq!(book.judge("ok", 2, None, None, 0), Verdict::Pass);
        let both = book.judge("watch", 3, None, None, 0);
        let Verdict::Hold(flags) = both else {
            panic!("{both:?}")
        };
        assert_eq!(flags.names(), vec!["large_qty", "review_user"]);
        assert!(book.is_active());
        book.replace(rules());
        assert!(!book.is_active());
        assert_eq!(book.judge("watch", 9, None, None, 0), Verdict::Pass);
    }

    #[test]
    fn rule_sets_past_their_bounds_are_refused() {
        assert!(validate_rules(&rules()).is_ok());
        let long = ReviewRulesChanged {
            deny_users: (0..=limits::REVIEW_USERS_MAX)
                .map(|n| format!("u{n}"))
                .collect(),
            ..rules()
        };
        assert!(validate_rules(&long).is_err());
        let bad_id = ReviewRulesChanged {
            review_users: vec!["no spaces".into()],
            ..rules()
        };
        assert!(validate_rules(&bad_id).is_err());
    }
}
