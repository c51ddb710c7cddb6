//! Order history (`GET /v1/orders/{id}`): an order's records read back from the journal,
//! newest first along each record's `prev_seq`, through the journal's sparse seq index. The
//! order index holds only the head of the chain (the latest record's seq), so an order's
//! history costs memory only while it is read.
//!
//! Invariant: a view shows durable records only, and a view *as of* a seq (the answer to a
//! keyed action's retry) shows the records up to it and the state they left.

use super::Engine;
use std::io;

use crate::journal::record::ArchivedEvent;
use crate::journal::{self, ArchivedRecord};
use crate::limits;

/// `GET /v1/orders/{id}`: the order as its journal records tell it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OrderView {
    pub order_id: String,
    /// `None` (null) only when retention deleted the order's acceptance record.
    pub user_id: Option<String>,
    pub sku: String,
    pub qty: u32,
    pub payment: Option<&'static str>,
    pub status: &'static str,
    /// The latest address: the last `modify`'s, or the one given with the order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<serde_json::Value>,
    /// The latest parcel: `{"carrier", "tracking_no", "at"}` of the newest `ship`, `reship`
    /// or `exchange` that named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipment: Option<serde_json::Value>,
    /// The review rules that held the order (order review), if any held it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<Vec<String>>,
    /// Every record of the order, oldest first: `{"event","seq","at",...}`.
    pub history: Vec<serde_json::Value>,
    /// False when retention deleted the segments holding the order's first records: the
    /// history then starts at the oldest record still kept.
    pub history_complete: bool,
}

/// An order's history read newest first ([`Engine::order_view_as_of`]): the records after
/// `as_of` are followed (for their links) but left out of the view.
struct HistoryWalk {
    as_of: u64,
    history: Vec<serde_json::Value>,
    /// Set by the acceptance record, which ends the walk.
    view: Option<OrderView>,
    latest_address: Option<serde_json::Value>,
    /// The status the newest record kept left (`None`: the order's current one).
    status: Option<crate::order::OrderStatus>,
    /// The newest kept record's parcel (`ship`, `reship`, `exchange` with a carrier).
    shipment: Option<serde_json::Value>,
}

impl HistoryWalk {
    /// The acceptance record (held for review when `review` is set): the view's fixed
    /// fields, and the end of the walk.
    fn accepted(
        &mut self,
        object: &mut serde_json::Map<String, serde_json::Value>,
        order: &journal::record::ArchivedOrderAccepted,
        review: Option<Vec<String>>,
    ) {
        for field in ["user_id", "sku", "qty", "payment", "address"] {
            object.remove(field);
        }
        let payment = order.payment.to_native();
        let initial = payment.first_status(review.is_some());
        object.insert("status".into(), initial.as_str().into());
        if self.latest_address.is_none() {
            self.latest_address = order
                .address
                .as_ref()
                .map(|a| journal::record::json_object_text(a.as_str()));
        }
        self.status.get_or_insert(initial);
        self.view = Some(OrderView {
            order_id: order.order_id.to_string(),
            user_id: Some(order.user_id.to_string()),
            sku: order.sku.to_string(),
            qty: order.qty.to_native(),
            payment: Some(payment.as_str()),
            status: initial.as_str(),
            address: None,
            shipment: None,
            review,
            history: Vec::new(),
            history_complete: true,
        });
    }

    /// Takes one record of the chain; returns the seq of the one before it (`None` at the
    /// acceptance), or what makes the chain broken.
    fn visit(&mut self, seq: u64, record: &ArchivedRecord) -> Result<Option<u64>, &'static str> {
        let kept = seq <= self.as_of;
        let mut item = record.to_json(seq);
        let object = item.as_object_mut().expect("records are objects");
        let event = object.remove("type").unwrap_or_default();
        object.insert("event".into(), event);
        object.remove("order_id");
        let prev_seq = match &record.event {
            ArchivedEvent::Accepted(order) => {
                self.accepted(object, order, None);
                None
            }
            ArchivedEvent::Held(held) => {
                let review = held.review.iter().map(|r| r.to_string()).collect();
                self.accepted(object, &held.order, Some(review));
                None
            }
            event @ (ArchivedEvent::Action(_)
            | ArchivedEvent::KeyedAction(_)
            | ArchivedEvent::Shipment(_)) => {
                let action = event.order_action().expect("an action record");
                object.remove("prev_seq");
                if kept {
                    if self.latest_address.is_none() {
                        self.latest_address = object.get("address").cloned();
                    }
                    self.status.get_or_insert(action.status.to_native());
                    if self.shipment.is_none()
                        && let Some((carrier, tracking_no)) = event.shipment()
                    {
                        self.shipment = Some(serde_json::json!({
                            "carrier": carrier,
                            "tracking_no": tracking_no,
                            "at": object.get("at").cloned().unwrap_or_default(),
                        }));
                    }
                }
                Some(action.prev_seq.to_native())
            }
            ArchivedEvent::Sku(_) => return Err("a stock change"),
            ArchivedEvent::ReviewRules(_) => return Err("a review rule change"),
            ArchivedEvent::SkuPause(_) => return Err("a pause of a sku"),
        };
        if kept {
            self.history.push(item);
        }
        Ok(prev_seq)
    }
}

impl Engine {
    /// The order as `GET /v1/orders/{id}` shows it, read back from the journal along the
    /// order's history chain (blocking file reads: call it off the async runtime). `None`
    /// when the order is unknown or not yet durable.
    pub fn order_view(&self, order_id: &str) -> io::Result<Option<OrderView>> {
        self.order_view_as_of(order_id, u64::MAX)
    }

    /// The order as `GET` showed it right after its record `as_of` (the answer to a retry of
    /// a keyed action): its history up to and including that record, and the status and
    /// address that record left.
    pub fn order_view_as_of(&self, order_id: &str, as_of: u64) -> io::Result<Option<OrderView>> {
        let key = self.keys.order_key(order_id);
        let Some(entry) = self.orders.get(key) else {
            return Ok(None);
        };
        let state = entry.state();
        let mut walk = HistoryWalk {
            as_of,
            history: Vec::with_capacity(state.records as usize),
            view: None,
            latest_address: None,
            status: None,
            shipment: None,
        };
        let mut seq = state.last_seq;
        let mut first_retained = self.first_retained_seq()?;
        while walk.view.is_none() {
            if walk.history.len() > limits::RECORDS_PER_ORDER_MAX as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("history of order {order_id} does not end"),
                ));
            }
            if seq < first_retained {
                // Retention deleted the rest of the chain: what is kept is the history.
                walk.view = Some(OrderView {
                    order_id: order_id.to_owned(),
                    user_id: None,
                    sku: self
                        .inventory
                        .slot(entry.slot_index)
                        .sku_name()
                        .unwrap_or_default(),
                    qty: entry.qty,
                    payment: None,
                    status: state.status.as_str(),
                    address: None,
                    shipment: None,
                    review: None,
                    history: Vec::new(),
                    history_complete: false,
                });
                break;
            }
            let mut step = Ok(None);
            let found = self
                .journal
                .read_with(seq, &mut |record| step = walk.visit(seq, record));
            let found = match found {
                Ok(found) => found,
                // Retention may delete the segment between the listing above and this read:
                // look again, and if the record is now before the oldest kept one, the
                // history ends here as it does for any retained-away record.
                Err(error) if error.kind() == io::ErrorKind::NotFound => false,
                Err(error) => return Err(error),
            };
            if !found {
                first_retained = self.first_retained_seq()?;
                if seq < first_retained {
                    continue;
                }
            }
            let broken = if found {
                step.err()
            } else {
                Some("not in the journal")
            };
            if let Some(broken) = broken {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("history of order {order_id} leads to seq {seq}, which is {broken}"),
                ));
            }
            if let Ok(Some(prev)) = step {
                seq = prev;
            }
        }
        let mut view = walk.view.expect("the loop ends on the acceptance");
        if view.order_id != order_id {
            // Another id with the same 64-bit key (see inventory::keys): not this order.
            return Ok(None);
        }
        walk.history.reverse();
        view.history = walk.history;
        view.address = walk.latest_address;
        view.shipment = walk.shipment;
        if let Some(status) = walk.status {
            view.status = status.as_str();
        }
        Ok(Some(view))
    }

    /// The seq of the oldest record still in the journal (retention deletes older ones).
    pub fn first_retained_seq(&self) -> io::Result<u64> {
        Ok(journal::list_segments(&self.journal_dir)?
            .first()
            .map_or(1, |(first_seq, _)| *first_seq))
    }
}
