//! This node's shares of the global stock: taking blocks of units from Redis before the
//! node runs out, giving idle units back, and keeping the node's catalogue in step with the
//! cluster's.
//!
//! A node's share of a SKU *is* its local `stock_total`: the engine sells from it exactly as
//! a single engine sells from its stock, with no Redis on the order path. Every change of
//! the share is a `sku` record in the node's journal (so a restart resumes it) and the
//! share in Redis (`share:<node>`), and the two are changed in an order that keeps the
//! journal's share **never above** what Redis has granted:
//!
//! - a grant runs in Redis first (confirmed by a replica), then is journaled;
//! - a give-back is journaled first, then runs in Redis.
//!
//! A crash between the two steps leaves Redis above the journal; the next change of that
//! share finds Redis's value differ from the one it expects and adopts it (the units were
//! granted to this node and nobody else can sell them). Redis below the journal happens
//! only when a failover lost a confirmed write (see docs/CLUSTER.md for that window); the
//! node then writes its share back, taking the units from the pool.
//!
//! Changes of one SKU's share are serialized by that SKU's lock; the order path never takes
//! it (it only asks for a top-up and, when its own share is empty, waits for one).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::store::{GlobalSku, GlobalSkuUpdate, Store, StoreError};
use crate::engine::{Engine, PutSkuError, SkuView};
use crate::limits;
use crate::shard::SkuUpdate;

/// Why a share could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the journal refused the share change: {0}")]
    Journal(String),
}

/// What this node knows of one SKU beyond its slot.
#[derive(Default)]
struct SkuState {
    /// Serializes changes of this SKU's share (grant, give-back, adoption).
    changing: tokio::sync::Mutex<()>,
    /// The global pool as last seen (grant answers, the sync loop); `u64::MAX` = unknown.
    pool_hint: AtomicU64,
    /// `(available, reserved, sold)` last published to Redis.
    reported: Mutex<Option<(u64, u64, u64)>>,
    /// Units of orders (`reserved + sold`) when last looked at, and when that last changed.
    activity: Mutex<Option<(u64, Instant)>>,
    /// A background top-up of this SKU is on its way: the order path starts at most one at a
    /// time (so the orders that find the share low do not each queue a task).
    top_up_in_flight: std::sync::atomic::AtomicBool,
}

pub struct Shares {
    engine: Arc<Engine>,
    store: Arc<Store>,
    node: String,
    lease_units: u64,
    idle_return: Duration,
    skus: DashMap<String, Arc<SkuState>>,
    /// The catalogue version last applied (`u64::MAX` before the first sync).
    catalogue_version: AtomicU64,
    /// Whether every SKU's share was checked against Redis since this process started.
    resynced: std::sync::atomic::AtomicBool,
}

impl Shares {
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<Store>,
        node: &str,
        lease_units: u64,
        idle_return: Duration,
    ) -> Self {
        Self {
            engine,
            store,
            node: node.to_owned(),
            lease_units,
            idle_return,
            skus: DashMap::new(),
            catalogue_version: AtomicU64::new(u64::MAX),
            resynced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn state(&self, sku: &str) -> Arc<SkuState> {
        if let Some(state) = self.skus.get(sku) {
            return state.clone();
        }
        self.skus
            .entry(sku.to_owned())
            .or_insert_with(|| {
                Arc::new(SkuState {
                    pool_hint: AtomicU64::new(u64::MAX),
                    ..SkuState::default()
                })
            })
            .clone()
    }

    /// When this node's share runs below half a block: the order path calls this after a
    /// sale, so the next block is on its way before the share is empty. Cheap when the share
    /// is not low (a slot read); at most one top-up per SKU in flight.
    pub fn after_sale(self: &Arc<Self>, sku: &str) {
        let Some(available) = self.engine.available(sku) else {
            return;
        };
        if available >= self.low_water() || self.pool_hint(sku) == 0 {
            return;
        }
        let state = self.state(sku);
        if state.top_up_in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let shares = self.clone();
        let sku = sku.to_owned();
        tokio::spawn(async move {
            if let Err(error) = shares.top_up(&sku, 1).await {
                tracing::warn!(%sku, %error, "could not take the next block of stock");
            }
            state.top_up_in_flight.store(false, Ordering::Release);
        });
    }

    fn low_water(&self) -> u64 {
        self.lease_units.div_ceil(2)
    }

    /// The global pool as last seen (`u64::MAX` when never seen).
    pub fn pool_hint(&self, sku: &str) -> u64 {
        self.skus
            .get(sku)
            .map_or(u64::MAX, |state| state.pool_hint.load(Ordering::Relaxed))
    }

    /// Makes sure this node holds at least `need` available units of the SKU, taking a block
    /// from the global stock if it holds fewer than half a block. `Ok(false)` when the global
    /// stock has none left for it.
    pub async fn top_up(&self, sku: &str, need: u64) -> Result<bool, ShareError> {
        let state = self.state(sku);
        let _changing = state.changing.lock().await;
        for _ in 0..2 {
            let Some(view) = self.engine.sku_view(sku) else {
                return Ok(false);
            };
            if view.available >= need && view.available >= self.low_water() {
                return Ok(true);
            }
            // Up to a block available (or the order's need, if larger): never more, so a node
            // that dies strands at most a block.
            let want = self.lease_units.max(need) - view.available;
            let answer = self
                .store
                .grant(sku, &self.node, view.stock_total, want)
                .await?;
            state.pool_hint.store(answer.pool, Ordering::Relaxed);
            if !answer.matched {
                self.reconcile(sku, view.stock_total, answer.share).await?;
                continue;
            }
            if answer.share > view.stock_total {
                self.set_local_share(sku, answer.share).await?;
            }
            let available = self.engine.sku_view(sku).map_or(0, |v| v.available);
            return Ok(available >= need);
        }
        Ok(self
            .engine
            .sku_view(sku)
            .is_some_and(|v| v.available >= need))
    }

    /// Checks this node's share of a SKU against Redis's and brings them together when they
    /// differ (a crash between the two steps of a change): at start-up, and whenever the
    /// sync loop sees them differ. The check is a no-op change confirmed by a replica, so an
    /// adopted share is one a failover cannot take back.
    pub async fn resync(&self, sku: &str) -> Result<(), ShareError> {
        let state = self.state(sku);
        let _changing = state.changing.lock().await;
        let Some(view) = self.engine.sku_view(sku) else {
            return Ok(());
        };
        let answer = self
            .store
            .set_share(sku, &self.node, view.stock_total, view.stock_total)
            .await?;
        state.pool_hint.store(answer.pool, Ordering::Relaxed);
        if !answer.matched {
            self.reconcile(sku, view.stock_total, answer.share).await?;
        }
        Ok(())
    }

    /// Brings the journal's share (`local`) and Redis's (`redis`) together after they were
    /// found to differ (see the module doc).
    async fn reconcile(&self, sku: &str, local: u64, redis: u64) -> Result<(), ShareError> {
        if redis > local {
            tracing::info!(%sku, local, redis, "adopting the share redis granted before the last crash or error");
            return self.set_local_share(sku, redis).await;
        }
        let answer = self.store.set_share(sku, &self.node, redis, local).await?;
        if answer.share < local {
            tracing::error!(%sku, journal = local, redis = answer.share,
                "a redis failover lost units granted to this node and the pool cannot cover them: the sale may be oversold by the difference");
        } else {
            tracing::warn!(%sku, local, redis, "wrote this node's share back to redis (a failover had lost it)");
        }
        Ok(())
    }

    /// Journals the node's share of a SKU (its local `stock_total`).
    async fn set_local_share(&self, sku: &str, share: u64) -> Result<(), ShareError> {
        let update = SkuUpdate {
            stock: Some(share),
            ..SkuUpdate::default()
        };
        match self.engine.put_sku(sku, update).await {
            Ok(_) => Ok(()),
            Err(error) => Err(ShareError::Journal(describe(&error))),
        }
    }

    /// Gives the SKU's unsold units back to the global stock, keeping `keep` of them:
    /// journaled first (so no restart sells them), then moved in Redis. Returns the units
    /// given back.
    pub async fn give_back(&self, sku: &str, keep: u64) -> Result<u64, ShareError> {
        let state = self.state(sku);
        let _changing = state.changing.lock().await;
        let Some(view) = self.engine.sku_view(sku) else {
            return Ok(0);
        };
        let redis = self
            .store
            .sku(sku)
            .await?
            .and_then(|global| {
                global
                    .nodes
                    .into_iter()
                    .find(|n| n.node == self.node)
                    .map(|n| n.share)
            })
            .unwrap_or(0);
        let back = view.available.saturating_sub(keep);
        let target = view.stock_total - back;
        if back > 0 {
            self.set_local_share(sku, target).await?;
        }
        if redis != target {
            let answer = self.store.set_share(sku, &self.node, redis, target).await?;
            state.pool_hint.store(answer.pool, Ordering::Relaxed);
        }
        Ok(back)
    }

    /// One round of the background loop: the catalogue (when its version moved), then each
    /// SKU's figures, top-up and idle give-back.
    pub async fn tick(self: &Arc<Self>) -> Result<(), ShareError> {
        if !self.resynced.load(Ordering::Relaxed) {
            for view in self.engine.sku_views() {
                self.resync(&view.sku).await?;
            }
            self.resynced.store(true, Ordering::Relaxed);
        }
        let version = self.store.catalogue_version().await?;
        if version != self.catalogue_version.load(Ordering::Relaxed) {
            for name in self.store.sku_names().await? {
                self.sync_sku(&name).await?;
            }
            self.catalogue_version.store(version, Ordering::Relaxed);
        }
        for view in self.engine.sku_views() {
            self.tend(&view).await?;
        }
        Ok(())
    }

    /// Reports a SKU's figures when they moved, asks for a block when its share runs low,
    /// and gives an idle share back.
    async fn tend(self: &Arc<Self>, view: &SkuView) -> Result<(), ShareError> {
        let state = self.state(&view.sku);
        let figures = (view.available, view.reserved, view.sold);
        if *state.reported.lock() != Some(figures) {
            self.store.report(&view.sku, &self.node, figures).await?;
            *state.reported.lock() = Some(figures);
        }
        let committed = view.reserved + view.sold;
        let now = Instant::now();
        let idle_since = {
            let mut activity = state.activity.lock();
            match *activity {
                Some((seen, since)) if seen == committed => since,
                _ => {
                    *activity = Some((committed, now));
                    now
                }
            }
        };
        let selling = now.duration_since(idle_since) < self.idle_return;
        if view.available > self.lease_units {
            // Units that came back (cancellations, expiries) beyond a block go back to the
            // global stock, where every node can sell them.
            self.give_back(&view.sku, self.lease_units).await?;
        } else if !selling && view.available > 0 {
            let back = self.give_back(&view.sku, 0).await?;
            if back > 0 {
                tracing::info!(sku = %view.sku, units = back, "gave an idle share back to the global stock");
            }
        } else if view.available < self.low_water() {
            // Keep the pool hint fresh for a SKU this node is short of, so that units given
            // back by other nodes (or a top-up) are found within one round; and keep a block
            // ahead of a SKU that sells.
            if let Some(global) = self.store.sku(&view.sku).await? {
                state.pool_hint.store(global.pool, Ordering::Relaxed);
                let redis_share = global
                    .nodes
                    .iter()
                    .find(|n| n.node == self.node)
                    .map_or(0, |n| n.share);
                if redis_share != view.stock_total {
                    self.resync(&view.sku).await?;
                } else if selling && committed > 0 && global.pool > 0 {
                    self.top_up(&view.sku, 1).await?;
                }
            }
        }
        Ok(())
    }

    /// Creates the SKU on this node (with a share of 0) or applies the cluster's settings.
    pub async fn sync_sku(&self, sku: &str) -> Result<bool, ShareError> {
        let Some(global) = self.store.sku(sku).await? else {
            return Ok(false);
        };
        self.state(sku)
            .pool_hint
            .store(global.pool, Ordering::Relaxed);
        let local = self.engine.sku_view(sku);
        let same = local.as_ref().is_some_and(|view| {
            view.per_user_limit == global.per_user_limit
                && view.max_per_order == global.max_per_order
                && view.payment_timeout_s == global.payment_timeout_s
        });
        if same {
            return Ok(true);
        }
        let update = SkuUpdate {
            stock: local.is_none().then_some(0),
            per_user_limit: Some(global.per_user_limit),
            max_per_order: Some(global.max_per_order),
            payment_timeout_s: Some(global.payment_timeout_s),
        };
        match self.engine.put_sku(sku, update).await {
            Ok(_) => Ok(true),
            Err(error) => Err(ShareError::Journal(describe(&error))),
        }
    }

    /// The SKU as the whole cluster sees it: the global total, the pool plus every node's
    /// reported figures (this node's own live ones).
    pub async fn global_view(&self, sku: &str) -> Result<Option<SkuView>, StoreError> {
        let Some(global) = self.store.sku(sku).await? else {
            return Ok(None);
        };
        Ok(Some(self.combine(sku, &global)))
    }

    /// The global view: reserved and sold summed over the nodes (this node's own live, the
    /// others' as last published), available the rest of the total — so `available +
    /// reserved + sold = stock_total` holds at every read, and the parts are exact once every
    /// node has published (within a sync round of the last change).
    fn combine(&self, sku: &str, global: &GlobalSku) -> SkuView {
        let mine = self.engine.sku_view(sku);
        let (mut reserved, mut sold) = (0u64, 0u64);
        for node in &global.nodes {
            let figures = if node.node == self.node {
                mine.as_ref().map(|v| (v.available, v.reserved, v.sold))
            } else {
                node.figures
            };
            // A node that never published holds its whole share unsold.
            let (_, node_reserved, node_sold) = figures.unwrap_or((node.share, 0, 0));
            reserved += node_reserved;
            sold += node_sold;
        }
        SkuView {
            sku: sku.to_owned(),
            stock_total: global.total,
            available: global.total.saturating_sub(reserved + sold),
            reserved,
            sold,
            per_user_limit: global.per_user_limit,
            max_per_order: global.max_per_order,
            payment_timeout_s: global.payment_timeout_s,
            // Pausing is a node's own (journaled there); a pause sent to any node is passed
            // to every node (see `http::cluster`), so this node's flag is the cluster's.
            paused: mine.as_ref().is_some_and(|v| v.paused),
        }
    }

    /// Creates or changes a SKU for the whole cluster, then applies it here at once (the
    /// other nodes follow within one sync round).
    pub async fn put_global(
        &self,
        sku: &str,
        update: &GlobalSkuUpdate,
    ) -> Result<Result<SkuView, u64>, ShareError> {
        if let Err(held) = self.store.put_sku(sku, update).await? {
            return Ok(Err(held));
        }
        self.sync_sku(sku).await?;
        let view = self.global_view(sku).await?;
        Ok(Ok(view.expect("the sku was just written")))
    }

    /// Runs [`Shares::tick`] every [`limits::CLUSTER_SYNC_INTERVAL`], backing off while Redis
    /// is unreachable, until `stopping` turns true.
    pub async fn run(self: Arc<Self>, mut stopping: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = limits::CLUSTER_RETRY_MIN;
        loop {
            let wait = match self.tick().await {
                Ok(()) => {
                    backoff = limits::CLUSTER_RETRY_MIN;
                    limits::CLUSTER_SYNC_INTERVAL
                }
                Err(error) => {
                    tracing::warn!(%error, "cluster sync round failed; retrying");
                    backoff = (backoff * 2).min(limits::CLUSTER_RETRY_MAX);
                    backoff
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopping.changed() => return,
            }
            if *stopping.borrow() {
                return;
            }
        }
    }
}

fn describe(error: &PutSkuError) -> String {
    match error {
        PutSkuError::StockConflict { committed } => {
            format!("orders took units meanwhile ({committed} committed)")
        }
        PutSkuError::CatalogueFull { slots_max } => format!("catalogue full ({slots_max} SKUs)"),
        PutSkuError::Overloaded => "shard overloaded".into(),
        PutSkuError::Unavailable(reason) => reason.clone(),
    }
}
