//! Cluster mode: several nodes behind the load balancer sell one stock, kept in a Redis
//! Cluster, while each node stays the system of record for its own orders in its journal.
//!
//! What lives where:
//! - [`store`]: every Redis key and the Lua scripts that move units between the global pool
//!   and a node's share atomically (confirmed by a replica with `WAIT`).
//! - [`shares`]: this node's shares — blocks taken ahead of need, idle units given back, the
//!   catalogue kept in step, the global figures of a SKU.
//! - [`membership`]: which node owns a buyer (rendezvous hashing of `user_id`).
//! - [`forward`]: requests another node must answer, over pooled keep-alive connections.
//! - [`stream`]: the journal published to the cluster's Redis Stream, once per `(node, seq)`.
//! - [`cli`]: `stampede cluster status` and `stampede cluster reclaim`.
//!
//! The road of one order in a cluster ([`Cluster::place_order`] is step 3):
//! 1. any node decodes it; if another node owns its buyer, it is forwarded there and that
//!    node's answer is the answer (503 with `Retry-After` when the owner cannot answer —
//!    never a decision here, so a buyer's retries and `per_user_limit` are decided in one
//!    journal);
//! 2. the owner decides it with the single-engine road ([`Engine::place_order`]), selling
//!    from its share: no Redis on this path;
//! 3. a sold-out answer while the global pool may still have units waits for a block (up to
//!    [`limits::SHARE_TOP_UP_WAIT`]) and is decided again; a sale that leaves the share
//!    below half a block asks for the next block in the background.
//!
//! Invariant: over all nodes, units sold never exceed the SKU's global total, because a node
//! sells only from units that Redis granted it (confirmed by a replica) and journaled, and
//! gives units back only after journaling that it no longer holds them.

pub mod cli;
pub mod forward;
pub mod membership;
pub mod shares;
pub mod store;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use crate::config::ClusterConfig;
use crate::engine::{Engine, NewOrder};
use crate::limits;
use crate::order::OrderOutcome;
use forward::Forwarder;
use membership::Membership;
use shares::Shares;
use store::Store;

/// This node's part in the cluster: its membership, its shares and its peers.
pub struct Cluster {
    membership: Membership,
    store: Arc<Store>,
    shares: Arc<Shares>,
    forwarder: Forwarder,
    engine: Arc<Engine>,
}

impl Cluster {
    /// Joins the cluster: starts the share and catalogue loop and the stream publisher, which
    /// stop when `stopping` turns true. Redis need not be reachable yet: the node sells what
    /// its journal says it holds, and the loops retry.
    pub fn start(
        engine: Arc<Engine>,
        config: &ClusterConfig,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Self> {
        let membership = Membership::new(config.members(), &config.node_id)
            .expect("the config check put this node in cluster.nodes");
        let store = Arc::new(Store::new(&config.redis));
        let shares = Arc::new(Shares::new(
            engine.clone(),
            store.clone(),
            &config.node_id,
            config.lease_units,
            Duration::from_secs(config.idle_return_s),
        ));
        tokio::spawn(shares.clone().run(stopping.clone()));
        let publisher = stream::Publisher::new(
            engine.clone(),
            store.clone(),
            &config.stream,
            &config.node_id,
        );
        tokio::spawn(publisher.run(stopping));
        Arc::new(Self {
            forwarder: Forwarder::new(&config.node_id),
            membership,
            store,
            shares,
            engine,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.membership.me().id
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    pub fn shares(&self) -> &Arc<Shares> {
        &self.shares
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Puts the config's demo catalogue into the cluster, each SKU only if the cluster does
    /// not know it yet (so a restart, or a second node, changes nothing).
    pub async fn seed_catalogue(
        &self,
        config: &crate::config::Config,
    ) -> Result<(), store::StoreError> {
        for item in &config.catalogue {
            if self.store.sku(&item.sku).await?.is_some() {
                continue;
            }
            let update = store::GlobalSkuUpdate {
                stock: Some(item.stock),
                per_user_limit: Some(item.per_user_limit),
                max_per_order: Some(item.max_per_order),
                payment_timeout_s: Some(item.payment_timeout_s),
            };
            if let Err(held) = self.store.put_sku(&item.sku, &update).await? {
                tracing::warn!(sku = %item.sku, held, "demo sku not seeded");
            }
        }
        Ok(())
    }

    /// Decides a new order of a buyer this node owns (see the module doc, step 3).
    pub async fn place_order(
        &self,
        order: NewOrder,
        client: Option<std::net::IpAddr>,
    ) -> OrderOutcome {
        let sku = order.sku.clone();
        let qty = u64::from(order.qty);
        let mut asked_for_units = false;
        let mut looked_up_sku = false;
        loop {
            let outcome = self.engine.place_order_from(order.clone(), client).await;
            match outcome {
                OrderOutcome::Accepted { .. } | OrderOutcome::Held { .. } => {
                    self.shares.after_sale(&sku);
                    return outcome;
                }
                OrderOutcome::SoldOut { .. }
                    if !asked_for_units && self.shares.pool_hint(&sku) > 0 =>
                {
                    asked_for_units = true;
                    let top_up = self.shares.top_up(&sku, qty);
                    match tokio::time::timeout(limits::SHARE_TOP_UP_WAIT, top_up).await {
                        Ok(Ok(true)) => continue,
                        Ok(Ok(false)) => return outcome,
                        Ok(Err(error)) => return unsure(&error.to_string()),
                        Err(_) => return unsure("no block of stock came from redis in time"),
                    }
                }
                // A SKU created on another node a moment ago: learn it now rather than at
                // the next sync round.
                OrderOutcome::UnknownSku if !looked_up_sku => {
                    looked_up_sku = true;
                    match self.shares.sync_sku(&sku).await {
                        Ok(true) => continue,
                        Ok(false) => return outcome,
                        Err(error) => return unsure(&error.to_string()),
                    }
                }
                _ => return outcome,
            }
        }
    }
}

/// The answer when this node cannot be sure: nothing was taken, retry.
fn unsure(reason: &str) -> OrderOutcome {
    OrderOutcome::Unavailable {
        reason: format!("the cluster's stock cannot be reached ({reason}); nothing was taken"),
    }
}
