//! A shard's turn: wait for work, take a batch, decide it, journal it with one append and
//! one commit, then publish and answer (or undo the batch and answer 503).

use std::time::Duration;

use crossbeam_channel::{Receiver, Select, TryRecvError};
use tokio::sync::oneshot;

use super::{
    ActionOutcome, Command, OrderOutcome, PaymentTimer, Settle, ShardSnapshot, ShardWriter,
};
use crate::inventory::{
    AcceptedOrder, ActionFingerprint, BoundKey, IdempotencyKeyHash, OrderEntry, OrderKey,
    OrderState, PurchaseKey,
};
use crate::limits;
use crate::order::{OrderStatus, Payment, StockEffect};

/// How to take back one decision of a failed batch.
pub(super) enum Undo {
    Accepted {
        slot_index: u32,
        qty: u32,
        payment: Payment,
        key: OrderKey,
        purchase_key: PurchaseKey,
    },
    Action {
        entry: OrderEntry,
        effect: StockEffect,
    },
    /// The returned unit of a restocked exchange.
    ExchangeRestock { entry: OrderEntry },
}

/// What a frame of the open batch is, to publish once it is durable.
pub(super) enum FrameOwner {
    Accepted {
        key: OrderKey,
        order: AcceptedOrder,
        /// The payment timer of a prepaid or escrow order.
        timer: Option<PaymentTimer>,
    },
    Action {
        key: OrderKey,
        /// The state after the record; `last_seq` is filled in at commit.
        state: OrderState,
        /// A reminder's timer, back in the heap for the deadline.
        timer: Option<PaymentTimer>,
        /// The idempotency key to bind to the record's seq once it is durable.
        bind: Option<(IdempotencyKeyHash, ActionFingerprint)>,
        /// A restocked exchange: the order holds one unit fewer once it is durable.
        restock_one: bool,
    },
}

/// A reply that waits for the batch's commit.
pub(super) enum DeferredReply {
    /// The order of frame `frame_index` of this batch.
    Accepted {
        reply: oneshot::Sender<OrderOutcome>,
        frame_index: usize,
        status: OrderStatus,
        /// The review rules that held the order (empty: not held).
        review: crate::order::review::ReviewFlags,
    },
    /// A retry of an order accepted earlier in this same batch.
    Replayed {
        reply: oneshot::Sender<OrderOutcome>,
        frame_index: usize,
        status: OrderStatus,
    },
    /// An action journaled as frame `frame_index`.
    Action {
        reply: oneshot::Sender<ActionOutcome>,
        frame_index: usize,
        status: OrderStatus,
    },
}

/// What ended a shard's wait.
enum Wake {
    Command(Command),
    /// A settle arrived on the control lane (and was applied).
    Control,
    /// The earliest timer is due, or the capped sleep ended: read the clock again.
    TimedOut,
    /// The engine is gone.
    Closed,
}

impl ShardWriter {
    pub(super) fn run(mut self, mailbox: Receiver<Command>, control: Receiver<Settle>) {
        let mut batch: Vec<Command> = Vec::with_capacity(self.batch_max);
        let mut previous_turn_started = std::time::Instant::now();
        loop {
            let first = match self.wait(&mailbox, &control) {
                Wake::Command(command) => Some(command),
                Wake::Control | Wake::TimedOut => None,
                Wake::Closed => break,
            };
            while let Ok(settle) = control.try_recv() {
                self.apply_settle(settle);
            }
            if let Some(first) = first {
                batch.push(first);
                while batch.len() < self.batch_max {
                    match mailbox.try_recv() {
                        Ok(command) => batch.push(command),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
            }
            let turn_started = std::time::Instant::now();
            self.note_queue_delay(&batch, previous_turn_started);
            previous_turn_started = turn_started;
            let at_ms = self.clock.now_ms();
            self.fire_timers(at_ms);
            if let Some(histogram) = &self.batch_size {
                histogram.observe(batch.len() as f64);
            }
            self.decided
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let mut stop = false;
            for command in batch.drain(..) {
                match command {
                    Command::Order(order, _) => self.decide(order, at_ms),
                    Command::Action(command, _) => {
                        let super::ActionCommand {
                            action: request,
                            reply,
                        } = command;
                        self.decide_action(request, Some(reply), None, at_ms);
                    }
                    Command::SkuBatch(batch) => {
                        self.finish_batch();
                        self.apply_sku_batch(batch, at_ms);
                    }
                    Command::Pause(pause) => {
                        self.finish_batch();
                        self.apply_pause(pause, at_ms);
                    }
                    Command::Hold { slot_index, reply } => {
                        self.finish_batch();
                        let _ = reply.send(self.hold(slot_index));
                    }
                    Command::Tick => {}
                    Command::Checkpoint { reply, resume } => {
                        self.pause_for_checkpoint(reply, resume)
                    }
                    Command::Stop => stop = true,
                }
            }
            self.finish_batch();
            if let Some(gauge) = &self.timers_held {
                gauge.set(self.timers.len() as i64);
            }
            if stop {
                break;
            }
        }
        tracing::debug!(shard = self.index, "shard stopped");
    }

    /// Finishes the open batch, sends what only this shard knows, and blocks until the engine
    /// has copied its checkpoint (`resume` disconnects).
    fn pause_for_checkpoint(
        &mut self,
        reply: oneshot::Sender<ShardSnapshot>,
        resume: Receiver<()>,
    ) {
        self.finish_batch();
        let snapshot = ShardSnapshot {
            timers: self.timers.snapshot(),
            keys: self.keys.snapshot(),
            holds: self.holds.iter().map(|(s, n)| (*s, *n)).collect(),
        };
        if reply.send(snapshot).is_ok() {
            let _ = resume.recv();
        }
    }

    /// The queue delay of this mailbox: how long the oldest order taken (the mailbox is
    /// FIFO) had waited before the previous turn even began. One that arrived while that
    /// turn ran waited for its fdatasync, which is the group commit's service time, not a
    /// queue: only what a full turn left behind (a standing queue) counts.
    fn note_queue_delay(&self, batch: &[Command], previous_turn_started: std::time::Instant) {
        let oldest_queued_at = batch.iter().find_map(|command| match command {
            Command::Order(_, queued_at) | Command::Action(_, queued_at) => Some(*queued_at),
            _ => None,
        });
        if let Some(queued_at) = oldest_queued_at {
            let beyond_one_turn = previous_turn_started.saturating_duration_since(queued_at);
            self.mailbox_wait_max_us.fetch_max(
                beyond_one_turn.as_micros() as u64 + 1,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Blocks for the next command or settle, or until the earliest timer is due (a settle
    /// is applied here; the turn that follows applies any others queued behind it).
    fn wait(&mut self, mailbox: &Receiver<Command>, control: &Receiver<Settle>) -> Wake {
        let mut select = Select::new();
        let from_mailbox = select.recv(mailbox);
        let from_control = select.recv(control);
        let ready = match self.until_next_timer() {
            None => select.select(),
            Some(wait) => match select.select_timeout(wait) {
                Ok(ready) => ready,
                Err(_) => return Wake::TimedOut,
            },
        };
        // Either channel disconnected means the engine is gone (it holds both senders).
        match ready.index() {
            index if index == from_mailbox => match ready.recv(mailbox) {
                Ok(command) => Wake::Command(command),
                Err(_) => Wake::Closed,
            },
            index => {
                debug_assert_eq!(index, from_control);
                match ready.recv(control) {
                    Ok(settle) => {
                        self.apply_settle(settle);
                        Wake::Control
                    }
                    Err(_) => Wake::Closed,
                }
            }
        }
    }

    /// How long the loop may block before a timer is due (`None`: no timer, block for a
    /// command). The deadline is wall-clock time, and the wall clock can step while the
    /// shard sleeps (back an hour and forward again): the wait is never longer than
    /// [`limits::TIMER_SLEEP_MS_MAX`], so the shard re-reads the clock and fires what has
    /// come due within that bound, with no other command to wake it. A manual clock is
    /// slept on the same way (a `Tick` only wakes the shard sooner).
    fn until_next_timer(&self) -> Option<Duration> {
        let due = self.timers.next_due_ms()?;
        let wait_ms = due.saturating_sub(self.clock.now_ms());
        Some(Duration::from_millis(
            wait_ms.min(limits::TIMER_SLEEP_MS_MAX),
        ))
    }

    /// True when a record of this order is in the open batch.
    pub(super) fn has_open_record(&self, key: OrderKey) -> bool {
        self.frame_owners.iter().any(|owner| {
            matches!(owner, FrameOwner::Action { key: k, .. } | FrameOwner::Accepted { key: k, .. } if *k == key)
        })
    }

    /// After a commit: makes each frame's owner durable in the tables (the order index, the
    /// timers, the idempotency keys), the batch's frames numbered from `first_seq`.
    fn publish(&mut self, first_seq: u64) {
        for (frame_index, owner) in self.frame_owners.drain(..).enumerate() {
            let seq = first_seq + frame_index as u64;
            match owner {
                FrameOwner::Accepted {
                    key,
                    mut order,
                    timer,
                } => {
                    order.seq = seq;
                    self.orders.commit_accepted(key, order);
                    if let Some(timer) = timer {
                        self.timers.push(timer);
                    }
                }
                FrameOwner::Action {
                    key,
                    mut state,
                    timer,
                    bind,
                    restock_one,
                } => {
                    state.last_seq = seq;
                    self.orders.set_state(key, state);
                    if restock_one {
                        self.orders.take_one_unit(key);
                    }
                    if let Some((hash, fingerprint)) = bind {
                        self.keys.bind(BoundKey {
                            order: key,
                            key: hash,
                            seq,
                            fingerprint,
                            status: state.status,
                        });
                    }
                    if let Some(timer) = timer {
                        self.timers.push(timer);
                    }
                }
            }
        }
    }

    /// Journals the current batch and replies (steps 3 and 4 of the module doc).
    pub fn finish_batch(&mut self) {
        if self.frames.is_empty() {
            debug_assert!(self.deferred.is_empty());
            return;
        }
        let journal = self
            .journal
            .as_ref()
            .expect("a running shard has a journal");
        let committed = journal.append(&self.frames).and_then(|range| {
            journal.commit(range.last)?;
            Ok(range)
        });
        match committed {
            Ok(range) => {
                self.publish(range.first);
                self.reply_committed(range.first);
                self.undo.clear();
            }
            Err(error) => {
                self.undo_batch(&error.to_string());
                self.frame_owners.clear();
            }
        }
        self.frames.clear();
    }

    /// Answers the deferred replies of a durable batch whose frames start at `first_seq`.
    fn reply_committed(&mut self, first_seq: u64) {
        for deferred in self.deferred.drain(..) {
            match deferred {
                DeferredReply::Accepted {
                    reply,
                    frame_index,
                    status,
                    review,
                } => {
                    let seq = first_seq + frame_index as u64;
                    let outcome = if review.is_empty() {
                        OrderOutcome::Accepted { seq, status }
                    } else {
                        OrderOutcome::Held { seq, review }
                    };
                    let _ = reply.send(outcome);
                }
                DeferredReply::Replayed {
                    reply,
                    frame_index,
                    status,
                } => {
                    let seq = first_seq + frame_index as u64;
                    let _ = reply.send(OrderOutcome::Replayed { seq, status });
                }
                DeferredReply::Action {
                    reply,
                    frame_index,
                    status,
                } => {
                    let seq = first_seq + frame_index as u64;
                    let _ = reply.send(ActionOutcome::Done { seq, status });
                }
            }
        }
    }

    /// Takes back every decision of a batch the journal refused, newest first, and answers
    /// its deferred replies 503 with `reason`: nothing was taken.
    fn undo_batch(&mut self, reason: &str) {
        let mut undo = std::mem::take(&mut self.undo);
        for undo in undo.drain(..).rev() {
            match undo {
                Undo::Accepted {
                    slot_index,
                    qty,
                    payment,
                    key,
                    purchase_key,
                } => {
                    self.stock.untake_order(slot_index, qty, payment);
                    self.purchases.subtract(purchase_key, qty);
                    self.orders.remove_pending(key);
                }
                Undo::Action { entry, effect } => self.revert_effect(&entry, effect),
                Undo::ExchangeRestock { entry } => self.unrestock_exchanged(&entry),
            }
        }
        self.undo = undo;
        for deferred in self.deferred.drain(..) {
            match deferred {
                DeferredReply::Accepted { reply, .. } | DeferredReply::Replayed { reply, .. } => {
                    let _ = reply.send(OrderOutcome::Unavailable {
                        reason: reason.to_owned(),
                    });
                }
                DeferredReply::Action { reply, .. } => {
                    let _ = reply.send(ActionOutcome::Unavailable {
                        reason: reason.to_owned(),
                    });
                }
            }
        }
    }
}
