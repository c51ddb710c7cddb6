//! In-process helpers, for tests that start [`stampede::engine::Engine`] themselves: a
//! [`Config`] from environment pairs, a runtime, an order through an [`OrderCommand`] and
//! an action through an [`ActionRequest`].

use std::path::Path;
use std::sync::Arc;

use stampede::config::{Config, Overrides};
use stampede::engine::{ActionRequest, Engine};
use stampede::journal::OrderAccepted;
use stampede::order::{Action, Payment};
use stampede::shard::{ActionOutcome, OrderCommand, OrderOutcome};

/// The configuration for `data_dir` with exactly these `STAMPEDE_*` variables set (the
/// process environment is not read).
pub fn config(data_dir: &Path, env: &[(&str, &str)]) -> Config {
    let overrides = Overrides {
        config_file: None,
        listen: None,
        data_dir: Some(data_dir.to_path_buf()),
    };
    Config::load_with_env(&overrides, |name| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    })
    .expect("test config is valid")
}

/// A multi-thread runtime with `workers` worker threads and its drivers enabled.
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// What an order asks for (no address).
#[derive(Debug, Clone, Copy)]
pub struct NewOrder<'a> {
    pub id: &'a str,
    pub user: &'a str,
    pub sku: &'a str,
    pub qty: u32,
    pub payment: Payment,
    /// Held for review, as if a review rule (`review_user`) had matched it.
    pub held: bool,
}

impl<'a> NewOrder<'a> {
    /// One unit of `sku` for `user`.
    pub fn new(id: &'a str, user: &'a str, sku: &'a str, payment: Payment) -> Self {
        Self {
            id,
            user,
            sku,
            qty: 1,
            payment,
            held: false,
        }
    }

    pub fn qty(self, qty: u32) -> Self {
        Self { qty, ..self }
    }

    pub fn held(self, held: bool) -> Self {
        Self { held, ..self }
    }
}

/// The command the HTTP layer would build for `order` (keys, fingerprint, slot), and the
/// receiver of its outcome.
pub fn order_command(
    engine: &Engine,
    order: NewOrder<'_>,
) -> (OrderCommand, tokio::sync::oneshot::Receiver<OrderOutcome>) {
    let keys = &engine.keys();
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let command = OrderCommand {
        slot_index: engine.slot_of(order.sku).expect("sku exists"),
        key: keys.order_key(order.id),
        fingerprint: keys.content_fingerprint(
            order.user,
            order.sku,
            order.qty,
            order.payment,
            None,
        ),
        purchase_key: keys.purchase_key(order.user, order.sku),
        review: if order.held {
            stampede::order::review::ReviewFlags::REVIEW_USER
        } else {
            Default::default()
        },
        order: OrderAccepted {
            order_id: order.id.into(),
            user_id: order.user.into(),
            sku: order.sku.into(),
            qty: order.qty,
            payment: order.payment,
            address: None,
        },
        reply,
    };
    (command, outcome)
}

/// Puts an order in its shard's mailbox; `None` when the mailbox is full.
pub fn submit(
    engine: &Engine,
    order: NewOrder<'_>,
) -> Option<tokio::sync::oneshot::Receiver<OrderOutcome>> {
    let (command, outcome) = order_command(engine, order);
    engine.submit_order(command).ok().map(|()| outcome)
}

/// Submits an order (its mailbox must have room) and waits for the shard's outcome.
pub async fn place(engine: &Engine, order: NewOrder<'_>) -> OrderOutcome {
    let (command, outcome) = order_command(engine, order);
    engine.submit_order(command).expect("mailbox has room");
    outcome.await.expect("shard replies")
}

/// [`place`] asserting the order is accepted; its seq.
pub async fn place_accepted(engine: &Engine, order: NewOrder<'_>) -> u64 {
    match place(engine, order).await {
        OrderOutcome::Accepted { seq, .. } => seq,
        other => panic!("order {}: {other:?}", order.id),
    }
}

/// An action with no reason, address, restock, exchange SKU or key (set what a test needs).
pub fn action_request(id: &str, action: Action) -> ActionRequest {
    ActionRequest {
        order_id: id.into(),
        action,
        reason: None,
        address: None,
        restock: false,
        exchange_sku: None,
        idempotency_key: None,
        shipment: None,
    }
}

/// An action (`exchange_sku` for `exchange`) that the engine decides; its outcome.
pub async fn act(
    engine: &Arc<Engine>,
    id: &str,
    action: Action,
    exchange_sku: Option<&str>,
) -> ActionOutcome {
    let request = ActionRequest {
        exchange_sku: exchange_sku.map(str::to_owned),
        ..action_request(id, action)
    };
    engine.order_action(request).await.expect("action decided")
}
