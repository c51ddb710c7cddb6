//! The journal's on-disk format: what a record says (rkyv types, the consumer-facing schema)
//! and how it is framed (length, CRC32C, sequence number).
//!
//! ```text
//! segment file  <first_seq:020>.seg
//!   SegmentHeader { magic: [u8; 8] = "STMPJRN1", first_seq: u64 LE }       16 bytes
//!   Frame*                                                                 each 8-aligned
//!
//! Frame (field order is the format)
//!   payload_len: u32 LE    bytes of rkyv payload, 1..=RECORD_PAYLOAD_BYTES_MAX
//!   crc32c:      u32 LE    CRC32C over payload_len bytes ++ seq bytes ++ payload
//!   seq:         u64 LE    strictly increasing by one across all segments
//!   payload:     [u8; payload_len]   rkyv archive of `Record`, root at its end
//!   padding:     zeros up to the next multiple of 8
//! ```
//!
//! Invariants: every frame starts at an 8-aligned file offset, so a payload read into an
//! 8-aligned buffer (or a page-aligned map) is accessed in place with rkyv's validation; a
//! record never spans two segments; the CRC covers the length and the sequence number, so a
//! flipped bit anywhere in a frame is caught.

use rkyv::rancor;

use crate::limits;
use crate::order::{Action, OrderStatus, Payment};

pub const SEGMENT_MAGIC: [u8; 8] = *b"STMPJRN1";
pub const SEGMENT_HEADER_BYTES: usize = 16;
pub const FRAME_HEADER_BYTES: usize = 16;
pub const FRAME_ALIGN: usize = 8;
/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
const RFC3339_MS_MAX: u64 = 253_402_300_799_999;

/// One journal record: when it happened and what happened. `seq` lives in the frame.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Record {
    /// Wall-clock milliseconds since the Unix epoch when the shard decided.
    pub at_ms: u64,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Event {
    /// A new order took stock (`type: "accepted"`).
    Accepted(OrderAccepted),
    /// A SKU was created or its settings changed (`type: "sku"`).
    Sku(SkuChanged),
    /// An action on an accepted order, or the payment timer's reminder or expiry (`type`:
    /// the action's name, `payment_reminder` or `expired`). Boxed: an archived box is one
    /// relative pointer, so adding this variant left the archived `Event` (and every record
    /// journaled before it existed) exactly as it was. New variants must keep to that.
    Action(Box<OrderAction>),
    /// An action that carried an `Idempotency-Key` (`type`: the action's name, as for
    /// [`Event::Action`]). A variant of its own, boxed like `Action`, so that records
    /// journaled before keys existed (and every unkeyed action since) keep their bytes.
    KeyedAction(Box<KeyedOrderAction>),
    /// A new order that a review rule held (`type: "accepted"`, `status: "held"`, with the
    /// rules it matched in `review`): it took its units as reserved, and waits for an
    /// operator. Boxed like `Action`.
    Held(Box<HeldOrder>),
    /// The order-review rules were replaced (`type: "review_rules"`, `order_id: null`).
    ReviewRules(Box<ReviewRulesChanged>),
    /// A `ship`, `reship` or `exchange` that named its parcel (`type`: the action's name,
    /// with `carrier` and `tracking_no`), keyed or not. Boxed like `Action`.
    Shipment(Box<ShipmentAction>),
    /// An operator paused or resumed new orders for a SKU (`type`: `pause` or `resume`).
    /// Boxed like `Action`, so the archived `Event` keeps its size.
    SkuPause(Box<SkuPaused>),
}

/// An order action with the carrier and tracking number of the parcel it sent.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct ShipmentAction {
    pub action: OrderAction,
    /// The `Idempotency-Key` header, when the client sent one.
    pub idempotency_key: Option<String>,
    /// 1..=64 bytes each, as given.
    pub carrier: String,
    pub tracking_no: String,
}

/// An order held for review and the names of the rules it matched.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct HeldOrder {
    pub order: OrderAccepted,
    /// Rule names as the contract spells them (`address_shared`, `client_burst`, ...).
    pub review: Vec<String>,
}

/// The whole set of order-review rules after a `PUT /v1/review/rules` (each 0: off).
#[derive(
    Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct ReviewRulesChanged {
    pub address_buyers_max: u32,
    pub client_orders_per_min: u32,
    pub qty_at_least: u32,
    pub review_users: Vec<String>,
    pub deny_users: Vec<String>,
}

/// New orders for a SKU stopped (`paused`) or taken again.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SkuPaused {
    pub sku: String,
    /// The SKU's slot in the inventory map (as in its `sku` records).
    pub slot_index: u32,
    pub paused: bool,
}

/// An order action and the client's idempotency key for it.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct KeyedOrderAction {
    pub action: OrderAction,
    /// The `Idempotency-Key` header as given (validated: 1..=64 id characters).
    pub idempotency_key: String,
}

impl ArchivedEvent {
    /// The order action of an `Action` or `KeyedAction` record.
    pub fn order_action(&self) -> Option<&ArchivedOrderAction> {
        match self {
            Self::Action(action) => Some(action),
            Self::KeyedAction(keyed) => Some(&keyed.action),
            Self::Shipment(shipment) => Some(&shipment.action),
            Self::Accepted(_)
            | Self::Sku(_)
            | Self::Held(_)
            | Self::ReviewRules(_)
            | Self::SkuPause(_) => None,
        }
    }

    /// The carrier and tracking number of a `Shipment` record.
    pub fn shipment(&self) -> Option<(&str, &str)> {
        match self {
            Self::Shipment(shipment) => {
                Some((shipment.carrier.as_str(), shipment.tracking_no.as_str()))
            }
            Self::Accepted(_)
            | Self::Sku(_)
            | Self::Action(_)
            | Self::KeyedAction(_)
            | Self::Held(_)
            | Self::ReviewRules(_)
            | Self::SkuPause(_) => None,
        }
    }

    /// The new order of an `Accepted` or `Held` record.
    pub fn accepted_order(&self) -> Option<&ArchivedOrderAccepted> {
        match self {
            Self::Accepted(order) => Some(order),
            Self::Held(held) => Some(&held.order),
            Self::Action(_)
            | Self::KeyedAction(_)
            | Self::Sku(_)
            | Self::ReviewRules(_)
            | Self::Shipment(_)
            | Self::SkuPause(_) => None,
        }
    }

    /// The idempotency key of a `KeyedAction` record.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            Self::KeyedAction(keyed) => Some(keyed.idempotency_key.as_str()),
            Self::Shipment(shipment) => shipment.idempotency_key.as_ref().map(|k| k.as_str()),
            Self::Action(_)
            | Self::Accepted(_)
            | Self::Sku(_)
            | Self::Held(_)
            | Self::ReviewRules(_)
            | Self::SkuPause(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OrderAccepted {
    pub order_id: String,
    pub user_id: String,
    pub sku: String,
    pub qty: u32,
    pub payment: Payment,
    /// The buyer's address object as raw JSON text, stored as given.
    pub address: Option<String>,
}

/// One step of an order's life after its acceptance.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OrderAction {
    pub order_id: String,
    pub action: Action,
    /// The order's state after this record.
    pub status: OrderStatus,
    /// Seq of the order's previous record: following these links from the latest record
    /// back to the acceptance yields the order's history without an index on disk.
    pub prev_seq: u64,
    /// The client's `reason`, as given.
    pub reason: Option<String>,
    /// `modify`: the new address object as raw JSON text.
    pub address: Option<String>,
    /// `modify` after `ship`: a redirect the carrier must act on.
    pub redirect: bool,
    /// `return`: the goods are back on the shelf and the units available again;
    /// `exchange`: the one unit sent back is (the order keeps one unit fewer).
    pub restock: bool,
    /// `exchange`: the SKU one unit was taken from.
    pub exchange_sku: Option<String>,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct SkuChanged {
    pub sku: String,
    /// The SKU's slot in the inventory map; fixed for the SKU's life.
    pub slot_index: u32,
    pub stock_total: u64,
    pub per_user_limit: u32,
    pub max_per_order: u32,
    pub payment_timeout_s: u32,
}

impl ArchivedRecord {
    /// The contract's `type` of this record.
    pub fn type_name(&self) -> &'static str {
        match &self.event {
            ArchivedEvent::Accepted(_) | ArchivedEvent::Held(_) => "accepted",
            ArchivedEvent::ReviewRules(_) => "review_rules",
            ArchivedEvent::Sku(_) => "sku",
            ArchivedEvent::Action(action) => action.action.to_native().as_str(),
            ArchivedEvent::KeyedAction(keyed) => keyed.action.action.to_native().as_str(),
            ArchivedEvent::Shipment(shipment) => shipment.action.action.to_native().as_str(),
            ArchivedEvent::SkuPause(pause) if pause.paused => "pause",
            ArchivedEvent::SkuPause(_) => "resume",
        }
    }

    /// The record as the contract's NDJSON object: `{"seq","at","type",...}`.
    pub fn to_json(&self, seq: u64) -> serde_json::Value {
        let at_ms = self.at_ms.to_native();
        // RFC 3339 stops at the year 9999; a later (crafted) time is reported as null
        // rather than crash the reader. `at_ms` always carries the exact value.
        let at: serde_json::Value = if at_ms <= RFC3339_MS_MAX {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms),
            )
            .to_string()
            .into()
        } else {
            serde_json::Value::Null
        };
        let mut object = serde_json::Map::new();
        object.insert("seq".into(), seq.into());
        object.insert("at".into(), at);
        object.insert("at_ms".into(), at_ms.into());
        object.insert("type".into(), self.type_name().into());
        match &self.event {
            ArchivedEvent::Accepted(order) => accepted_json(order, &mut object),
            ArchivedEvent::Held(held) => {
                accepted_json(&held.order, &mut object);
                object.insert("status".into(), "held".into());
                let review: Vec<serde_json::Value> = held
                    .review
                    .iter()
                    .map(|rule| rule.as_str().into())
                    .collect();
                object.insert("review".into(), review.into());
            }
            ArchivedEvent::ReviewRules(rules) => {
                object.insert("order_id".into(), serde_json::Value::Null);
                object.insert("rules".into(), rules_json(rules));
            }
            ArchivedEvent::Shipment(shipment) => {
                action_json(&shipment.action, &mut object);
                if let Some(key) = shipment.idempotency_key.as_ref() {
                    object.insert("idempotency_key".into(), key.as_str().into());
                }
                object.insert("carrier".into(), shipment.carrier.as_str().into());
                object.insert("tracking_no".into(), shipment.tracking_no.as_str().into());
            }
            ArchivedEvent::Sku(sku) => {
                // Every record has `order_id` (contract); a stock change belongs to none.
                object.insert("order_id".into(), serde_json::Value::Null);
                object.insert("sku".into(), sku.sku.as_str().into());
                object.insert("stock_total".into(), sku.stock_total.to_native().into());
                object.insert(
                    "per_user_limit".into(),
                    sku.per_user_limit.to_native().into(),
                );
                object.insert("max_per_order".into(), sku.max_per_order.to_native().into());
                object.insert(
                    "payment_timeout_s".into(),
                    sku.payment_timeout_s.to_native().into(),
                );
            }
            ArchivedEvent::SkuPause(pause) => {
                object.insert("order_id".into(), serde_json::Value::Null);
                object.insert("sku".into(), pause.sku.as_str().into());
                object.insert("paused".into(), pause.paused.into());
            }
            ArchivedEvent::Action(action) => action_json(action, &mut object),
            ArchivedEvent::KeyedAction(keyed) => {
                action_json(&keyed.action, &mut object);
                object.insert(
                    "idempotency_key".into(),
                    keyed.idempotency_key.as_str().into(),
                );
            }
        }
        serde_json::Value::Object(object)
    }
}

/// The fields of a new order's NDJSON object (after `seq`, `at`, `at_ms`, `type`).
fn accepted_json(
    order: &ArchivedOrderAccepted,
    object: &mut serde_json::Map<String, serde_json::Value>,
) {
    object.insert("order_id".into(), order.order_id.as_str().into());
    object.insert("user_id".into(), order.user_id.as_str().into());
    object.insert("sku".into(), order.sku.as_str().into());
    object.insert("qty".into(), order.qty.to_native().into());
    object.insert("payment".into(), order.payment.to_native().as_str().into());
    if let Some(address) = order.address.as_ref() {
        object.insert("address".into(), json_object_text(address.as_str()));
    }
}

/// The review rules as the contract's body of `GET /v1/review/rules`.
pub fn rules_json(rules: &ArchivedReviewRulesChanged) -> serde_json::Value {
    let users = |list: &rkyv::vec::ArchivedVec<rkyv::string::ArchivedString>| {
        list.iter()
            .map(|user| serde_json::Value::from(user.as_str()))
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "address_buyers_max": rules.address_buyers_max.to_native(),
        "client_orders_per_min": rules.client_orders_per_min.to_native(),
        "qty_at_least": rules.qty_at_least.to_native(),
        "review_users": users(&rules.review_users),
        "deny_users": users(&rules.deny_users),
    })
}

/// The fields of an order action's NDJSON object (after `seq`, `at`, `at_ms`, `type`).
fn action_json(
    action: &ArchivedOrderAction,
    object: &mut serde_json::Map<String, serde_json::Value>,
) {
    object.insert("order_id".into(), action.order_id.as_str().into());
    object.insert("status".into(), action.status.to_native().as_str().into());
    object.insert("prev_seq".into(), action.prev_seq.to_native().into());
    if let Some(reason) = action.reason.as_ref() {
        object.insert("reason".into(), reason.as_str().into());
    }
    if let Some(address) = action.address.as_ref() {
        object.insert("address".into(), json_object_text(address.as_str()));
        object.insert("redirect".into(), action.redirect.into());
    }
    if action.action.to_native().takes_restock() {
        object.insert("restock".into(), action.restock.into());
    }
    if let Some(sku) = action.exchange_sku.as_ref() {
        object.insert("sku".into(), sku.as_str().into());
    }
}

/// An address stored as raw JSON text, back as a JSON value. Stored only after it parsed as
/// a JSON object, so this parse succeeds; should the bytes ever not parse, they are returned
/// as a string rather than dropped.
pub fn json_object_text(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("record of {0} bytes exceeds the {max} byte limit", max = limits::RECORD_PAYLOAD_BYTES_MAX)]
    TooLarge(usize),
    #[error("rkyv serialization failed: {0}")]
    Serialize(rancor::Error),
}

/// Frames built by one shard for one batch, laid out exactly as on disk except for `seq` and
/// `crc32c`, which the journal fills in when it assigns sequence numbers ([`seal_frames`]).
#[derive(Debug, Default)]
pub struct FrameBatch {
    bytes: Vec<u8>,
    count: usize,
}

impl FrameBatch {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// Appends one record. The batch is unchanged when the record cannot be encoded.
    pub fn push(&mut self, record: &Record) -> Result<(), EncodeError> {
        let start = self.bytes.len();
        debug_assert_eq!(start % FRAME_ALIGN, 0);
        self.bytes.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        // The payload starts 8-aligned within `bytes`, and rkyv aligns relative to the start
        // of its writer, so the archive is laid out as it will be read from the file.
        if let Err(error) =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(record, &mut self.bytes)
        {
            self.bytes.truncate(start);
            return Err(EncodeError::Serialize(error));
        }
        let payload_len = self.bytes.len() - start - FRAME_HEADER_BYTES;
        if payload_len == 0 || payload_len > limits::RECORD_PAYLOAD_BYTES_MAX {
            self.bytes.truncate(start);
            return Err(EncodeError::TooLarge(payload_len));
        }
        self.bytes[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        let padded = self.bytes.len().next_multiple_of(FRAME_ALIGN);
        self.bytes.resize(padded, 0);
        self.count += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }
}

/// Fills in `seq` (from `first_seq` on) and the CRC of every frame in `frames`, which holds
/// whole frames as [`FrameBatch`] lays them out. Returns the number of frames sealed.
pub fn seal_frames(frames: &mut [u8], first_seq: u64) -> u64 {
    let mut offset = 0;
    let mut seq = first_seq;
    while offset < frames.len() {
        let payload_len = read_u32(frames, offset) as usize;
        assert!(
            (1..=limits::RECORD_PAYLOAD_BYTES_MAX).contains(&payload_len),
            "frame batch corrupted in memory"
        );
        frames[offset + 8..offset + 16].copy_from_slice(&seq.to_le_bytes());
        let end = offset + FRAME_HEADER_BYTES + payload_len;
        let crc = frame_crc(&frames[offset..offset + 4], &frames[offset + 8..end]);
        frames[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset = end.next_multiple_of(FRAME_ALIGN);
        seq += 1;
    }
    seq - first_seq
}

/// The byte offset (within `frames`) of each frame of a batch this process built, in order:
/// walks the length fields only (the writer uses it to place index points inside a group).
pub fn frame_offsets(frames: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= frames.len() {
            return None;
        }
        let here = offset;
        let payload_len = read_u32(frames, here) as usize;
        offset = (here + FRAME_HEADER_BYTES + payload_len).next_multiple_of(FRAME_ALIGN);
        Some(here)
    })
}

fn frame_crc(len_bytes: &[u8], seq_and_payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), seq_and_payload)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// What lies at an offset of a buffer of journal bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameCheck<'a> {
    /// A whole frame whose CRC matches. `payload` is as aligned as the buffer allows.
    Valid {
        seq: u64,
        payload: &'a [u8],
        next_offset: usize,
    },
    /// The buffer ends exactly here: no more data.
    End,
    /// The frame runs past the end of the buffer: a torn write, or more data to read.
    Incomplete { needed: usize },
    /// The bytes here are not a frame (bad length or CRC mismatch).
    Corrupt { reason: String },
}

/// Checks the frame at `offset` of `bytes`. Never panics, whatever the bytes.
pub fn check_frame(bytes: &[u8], offset: usize) -> FrameCheck<'_> {
    if offset == bytes.len() {
        return FrameCheck::End;
    }
    if offset + FRAME_HEADER_BYTES > bytes.len() {
        return FrameCheck::Incomplete {
            needed: FRAME_HEADER_BYTES,
        };
    }
    let payload_len = read_u32(bytes, offset) as usize;
    if payload_len == 0 || payload_len > limits::RECORD_PAYLOAD_BYTES_MAX {
        return FrameCheck::Corrupt {
            reason: format!("frame length {payload_len} out of range"),
        };
    }
    let end = offset + FRAME_HEADER_BYTES + payload_len;
    if end > bytes.len() {
        return FrameCheck::Incomplete {
            needed: FRAME_HEADER_BYTES + payload_len,
        };
    }
    let stored_crc = read_u32(bytes, offset + 4);
    let crc = frame_crc(&bytes[offset..offset + 4], &bytes[offset + 8..end]);
    if crc != stored_crc {
        return FrameCheck::Corrupt {
            reason: format!("checksum mismatch (stored {stored_crc:08x}, computed {crc:08x})"),
        };
    }
    // The padding belongs to the frame: a frame whose padding is missing was cut short, and
    // accepting it would leave the next frame (and the writer) at an unaligned offset.
    let next_offset = end.next_multiple_of(FRAME_ALIGN);
    if next_offset > bytes.len() {
        return FrameCheck::Incomplete {
            needed: next_offset - offset,
        };
    }
    let seq = read_u64(bytes, offset + 8);
    FrameCheck::Valid {
        seq,
        payload: &bytes[offset + FRAME_HEADER_BYTES..end],
        next_offset,
    }
}

/// Validates a payload and returns the archived record, zero-copy. The payload must be
/// 8-aligned in memory (frames are, in an aligned buffer).
pub fn access_record(payload: &[u8]) -> Result<&ArchivedRecord, rancor::Error> {
    rkyv::access::<ArchivedRecord, rancor::Error>(payload)
}

/// Decodes a payload into an owned record (tests, tools; the hot paths stay zero-copy).
pub fn decode_record(payload: &[u8]) -> Result<Record, rancor::Error> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<Record, rancor::Error>(&aligned)
}

/// The 16-byte header every segment file starts with.
pub fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..].copy_from_slice(&first_seq.to_le_bytes());
    header
}

/// Parses a segment header; `None` when the magic does not match.
pub fn parse_segment_header(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < SEGMENT_HEADER_BYTES || bytes[..8] != SEGMENT_MAGIC {
        return None;
    }
    Some(read_u64(bytes, 8))
}

#[cfg(test)]
mod tests;
