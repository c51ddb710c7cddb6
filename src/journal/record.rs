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
            Self::Accepted(_) | Self::Sku(_) => None,
        }
    }

    /// The idempotency key of a `KeyedAction` record.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            Self::KeyedAction(keyed) => Some(keyed.idempotency_key.as_str()),
            Self::Action(_) | Self::Accepted(_) | Self::Sku(_) => None,
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
    /// `return`: the goods are back on the shelf and the units available again.
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
            ArchivedEvent::Accepted(_) => "accepted",
            ArchivedEvent::Sku(_) => "sku",
            ArchivedEvent::Action(action) => action.action.to_native().as_str(),
            ArchivedEvent::KeyedAction(keyed) => keyed.action.action.to_native().as_str(),
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
            ArchivedEvent::Accepted(order) => {
                object.insert("order_id".into(), order.order_id.as_str().into());
                object.insert("user_id".into(), order.user_id.as_str().into());
                object.insert("sku".into(), order.sku.as_str().into());
                object.insert("qty".into(), order.qty.to_native().into());
                object.insert("payment".into(), order.payment.to_native().as_str().into());
                if let Some(address) = order.address.as_ref() {
                    object.insert("address".into(), json_object_text(address.as_str()));
                }
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
    if action.action.to_native() == Action::Return {
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
mod tests {
    /// Frames as the engine wrote them before order actions existed (an `accepted` and a
    /// `sku` record, seq and CRC not yet sealed). Journals written then must stay readable,
    /// and these records must still encode to the same bytes.
    const GOLDEN_ACCEPTED: &str = "480000000000000000000000000000007b2263697479223a224f736c6f227d00f93e601aa2010000000000007534322d31ffffff753432ffffffffff534b552d31ffffff0200000001000000010000008f000000c0ffffff";
    const GOLDEN_SKU: &str = "3800000000000000000000000000000007000000000000000100000000000000534b552d31ffffff0300000000000000e80300000000000002000000020000008403000000000000";
    /// An order action as the engine wrote it before idempotency keys existed (a `modify`
    /// after `ship`, with a reason and an address): unkeyed actions keep these bytes.
    const GOLDEN_ACTION: &str = "900000000000000000000000000000007b2263697479223a2242657267656e227d000000000000007534322d31ffffff02090000000000002900000000000000010000006d6f766564ffffff0100000091000000c0ffffff01000000000000000000000000000000483f601aa201000002000000b4ffffff00000000000000000000000000000000000000000000000000000000000000000000000000000000";

    fn golden_action() -> OrderAction {
        OrderAction {
            order_id: "u42-1".into(),
            action: Action::Modify,
            status: OrderStatus::Shipped,
            prev_seq: 41,
            reason: Some("moved".into()),
            address: Some(r#"{"city":"Bergen"}"#.into()),
            redirect: true,
            restock: false,
            exchange_sku: None,
        }
    }

    fn golden_records() -> [Record; 3] {
        [
            Record {
                at_ms: 1_795_738_844_921,
                event: Event::Accepted(OrderAccepted {
                    order_id: "u42-1".into(),
                    user_id: "u42".into(),
                    sku: "SKU-1".into(),
                    qty: 2,
                    payment: Payment::Escrow,
                    address: Some(r#"{"city":"Oslo"}"#.into()),
                }),
            },
            Record {
                at_ms: 7,
                event: Event::Sku(SkuChanged {
                    sku: "SKU-1".into(),
                    slot_index: 3,
                    stock_total: 1000,
                    per_user_limit: 2,
                    max_per_order: 2,
                    payment_timeout_s: 900,
                }),
            },
            Record {
                at_ms: 1_795_738_845_000,
                event: Event::Action(Box::new(golden_action())),
            },
        ]
    }

    #[test]
    fn records_of_the_first_format_still_read_and_encode_the_same() {
        let goldens = [GOLDEN_ACCEPTED, GOLDEN_SKU, GOLDEN_ACTION];
        for (hex, record) in goldens.iter().zip(golden_records()) {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let mut batch = FrameBatch::default();
            batch.push(&record).unwrap();
            assert_eq!(batch.as_bytes(), &bytes[..], "{record:?} encodes as before");
            let len = read_u32(&bytes, 0) as usize;
            let mut payload = rkyv::util::AlignedVec::<16>::new();
            payload.extend_from_slice(&bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]);
            let archived = access_record(&payload).expect("old record validates");
            let back: Record = rkyv::deserialize::<Record, rancor::Error>(archived).unwrap();
            assert_eq!(back, record);
        }
        assert_eq!(std::mem::size_of::<ArchivedRecord>(), 56);
    }

    /// A keyed action: its own variant (the next discriminant), the action and key boxed
    /// behind one relative pointer, so the archived `Event` keeps its size and every older
    /// record its bytes. The bytes are pinned too: journals written now must stay readable.
    const GOLDEN_KEYED_ACTION: &str = "a00000000000000000000000000000007b2263697479223a2242657267656e227d72657472792d3766336100000000007534322d31ffffff02090000000000002900000000000000010000006d6f766564ffffff0100000091000000b8ffffff010000000000000000000000000000008a000000b1ffffff483f601aa201000003000000acffffff00000000000000000000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn keyed_actions_are_a_new_variant_and_keep_their_bytes() {
        let record = Record {
            at_ms: 1_795_738_845_000,
            event: Event::KeyedAction(Box::new(KeyedOrderAction {
                action: golden_action(),
                idempotency_key: "retry-7f3a".into(),
            })),
        };
        let mut batch = FrameBatch::default();
        batch.push(&record).unwrap();
        let hex: String = batch
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, GOLDEN_KEYED_ACTION, "a keyed action encodes as pinned");
        let payload = aligned(&batch.as_bytes()[FRAME_HEADER_BYTES..]);
        let len = read_u32(batch.as_bytes(), 0) as usize;
        let archived = access_record(&payload[..len]).expect("keyed record validates");
        assert_eq!(archived.type_name(), "modify");
        assert_eq!(archived.event.idempotency_key(), Some("retry-7f3a"));
        assert_eq!(
            archived
                .event
                .order_action()
                .map(|a| a.prev_seq.to_native()),
            Some(41)
        );
        let json = archived.to_json(42);
        assert_eq!(json["idempotency_key"], "retry-7f3a");
        assert_eq!(json["order_id"], "u42-1");
        assert_eq!(json["address"]["city"], "Bergen");
        assert_eq!(decode_record(&payload[..len]).unwrap(), record);
        // The unkeyed action of the same content shows no key.
        let mut plain = FrameBatch::default();
        plain
            .push(&Record {
                at_ms: 1,
                event: Event::Action(Box::new(golden_action())),
            })
            .unwrap();
        let payload = aligned(&plain.as_bytes()[FRAME_HEADER_BYTES..]);
        let len = read_u32(plain.as_bytes(), 0) as usize;
        let archived = access_record(&payload[..len]).unwrap();
        assert_eq!(archived.event.idempotency_key(), None);
        assert!(archived.to_json(1).get("idempotency_key").is_none());
        assert_eq!(std::mem::size_of::<ArchivedRecord>(), 56);
    }

    use super::*;
    use proptest::prelude::*;

    fn accepted(order_id: &str, qty: u32, address: Option<&str>) -> Record {
        Record {
            at_ms: 1_700_000_000_123,
            event: Event::Accepted(OrderAccepted {
                order_id: order_id.into(),
                user_id: "u42".into(),
                sku: "SKU-1".into(),
                qty,
                payment: Payment::Escrow,
                address: address.map(str::to_owned),
            }),
        }
    }

    /// Copies bytes into an 8-aligned buffer, as a segment read or map provides.
    fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
        let mut out = rkyv::util::AlignedVec::<16>::new();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn frames_round_trip_with_consecutive_seqs() {
        let mut batch = FrameBatch::default();
        batch.push(&accepted("a", 1, None)).unwrap();
        batch
            .push(&accepted("b", 2, Some(r#"{"city":"Oslo"}"#)))
            .unwrap();
        let mut bytes = batch.as_bytes().to_vec();
        assert_eq!(seal_frames(&mut bytes, 41), 2);
        let bytes = aligned(&bytes);

        let FrameCheck::Valid {
            seq,
            payload,
            next_offset,
        } = check_frame(&bytes, 0)
        else {
            panic!("first frame")
        };
        assert_eq!(seq, 41);
        assert_eq!(next_offset % FRAME_ALIGN, 0);
        assert_eq!(access_record(payload).unwrap().type_name(), "accepted");
        assert_eq!(decode_record(payload).unwrap(), accepted("a", 1, None));

        let FrameCheck::Valid {
            seq,
            payload,
            next_offset,
        } = check_frame(&bytes, next_offset)
        else {
            panic!("second frame")
        };
        assert_eq!(seq, 42);
        let json = access_record(payload).unwrap().to_json(seq);
        assert_eq!(json["address"]["city"], "Oslo");
        assert_eq!(json["payment"], "escrow");
        assert_eq!(json["qty"], 2);
        assert_eq!(json["at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(check_frame(&bytes, next_offset), FrameCheck::End);
    }

    #[test]
    fn every_flipped_bit_of_a_frame_is_detected() {
        let mut batch = FrameBatch::default();
        batch.push(&accepted("bitflip", 3, None)).unwrap();
        let mut sealed = batch.as_bytes().to_vec();
        seal_frames(&mut sealed, 7);
        let payload_end = FRAME_HEADER_BYTES + read_u32(&sealed, 0) as usize;
        for bit in 0..payload_end * 8 {
            let mut damaged = sealed.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let damaged = aligned(&damaged);
            assert!(
                !matches!(check_frame(&damaged, 0), FrameCheck::Valid { .. }),
                "bit {bit} flipped unnoticed"
            );
        }
    }

    #[test]
    fn a_truncated_frame_is_incomplete_not_valid() {
        let mut batch = FrameBatch::default();
        batch.push(&accepted("torn", 1, None)).unwrap();
        let mut sealed = batch.as_bytes().to_vec();
        seal_frames(&mut sealed, 1);
        // Every cut short of the padded frame end, padding included, is incomplete.
        for cut in 1..sealed.len() {
            let torn = aligned(&sealed[..cut]);
            assert!(
                matches!(check_frame(&torn, 0), FrameCheck::Incomplete { .. }),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn oversized_records_are_refused_and_leave_the_batch_unchanged() {
        let mut batch = FrameBatch::default();
        batch.push(&accepted("ok", 1, None)).unwrap();
        let before = batch.as_bytes().to_vec();
        let huge = "x".repeat(limits::RECORD_PAYLOAD_BYTES_MAX);
        assert!(matches!(
            batch.push(&accepted("big", 1, Some(&huge))),
            Err(EncodeError::TooLarge(_))
        ));
        assert_eq!(batch.as_bytes(), &before[..]);
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn segment_header_round_trips_and_rejects_foreign_files() {
        assert_eq!(parse_segment_header(&segment_header(99)), Some(99));
        assert_eq!(parse_segment_header(b"NOTAJOURNALFILE!"), None);
        assert_eq!(parse_segment_header(b"short"), None);
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            order_id in "[A-Za-z0-9_.:-]{1,64}",
            user_id in "[A-Za-z0-9_.:-]{1,64}",
            sku in "[A-Za-z0-9_.:-]{1,32}",
            qty in 1u32..1_000_000,
            payment in prop_oneof![Just(Payment::Prepaid), Just(Payment::Escrow), Just(Payment::Cod)],
            address in proptest::option::of("[ -~]{0,200}"),
            at_ms in any::<u64>(),
            seq in 1u64..(1 << 40),
        ) {
            let record = Record { at_ms, event: Event::Accepted(OrderAccepted {
                order_id, user_id, sku, qty, payment, address,
            })};
            let mut batch = FrameBatch::default();
            batch.push(&record).unwrap();
            let mut bytes = batch.as_bytes().to_vec();
            seal_frames(&mut bytes, seq);
            let bytes = aligned(&bytes);
            let FrameCheck::Valid { seq: read_seq, payload, .. } = check_frame(&bytes, 0) else {
                panic!("frame did not check");
            };
            prop_assert_eq!(read_seq, seq);
            prop_assert_eq!(decode_record(payload).unwrap(), record);
        }

        #[test]
        fn check_frame_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let bytes = aligned(&bytes);
            let _ = check_frame(&bytes, 0);
        }

        #[test]
        fn any_timestamp_renders_without_panicking(at_ms in any::<u64>()) {
            let mut batch = FrameBatch::default();
            batch.push(&Record { at_ms, event: Event::Sku(SkuChanged {
                sku: "S".into(), slot_index: 0, stock_total: 1, per_user_limit: 0,
                max_per_order: 1, payment_timeout_s: 1,
            })}).unwrap();
            let mut bytes = batch.as_bytes().to_vec();
            seal_frames(&mut bytes, 1);
            let bytes = aligned(&bytes);
            let FrameCheck::Valid { payload, .. } = check_frame(&bytes, 0) else { panic!() };
            let json = access_record(payload).unwrap().to_json(1);
            prop_assert_eq!(json["at_ms"].as_u64(), Some(at_ms));
        }
    }
}
