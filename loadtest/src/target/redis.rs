//! The Redis + Lua baseline: the usual way a flash sale is built on Redis, measured with the
//! same generator, scenarios and audit as the engine.
//!
//! One Lua script per order ([`ORDER_SCRIPT`], run with `EVALSHA`) does, atomically:
//! `SET NX` of the order's dedup key (a retry with the same content gets the stored result,
//! other content is a conflict), the stock check, `DECRBY` of the stock, and `XADD` of the
//! order to a stream that plays the journal's part. Durability is Redis's AOF
//! (`appendfsync everysec` or `always`), set on the server, not here.
//!
//! The client is a minimal RESP2 implementation over one TCP connection per task: commands
//! are arrays of bulk strings, replies are parsed from a buffer ([`parse_reply`]), one request
//! in flight at a time, like the HTTP connections.

use std::net::SocketAddr;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ADMIN_TIMEOUT, Answered, RequestContext};
use crate::audit::{JournalScan, SkuState};
use crate::outcome::OutcomeClass;
use crate::scenario::SkuSpec;
use crate::workload::OrderRequest;

/// KEYS: the order's dedup key, the SKU's stock key, the order stream.
/// ARGV: order_id, user_id, sku, qty, payment.
/// Returns `{0, id}` accepted, `{1, id}` replay, `{2}` conflict, `{-1}` sold out, `{-2}`
/// unknown SKU.
pub const ORDER_SCRIPT: &str = r#"
local content = ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5]
if not redis.call('SET', KEYS[1], content, 'NX') then
  local previous = redis.call('GET', KEYS[1])
  local sep = string.find(previous, '#', 1, true)
  if sep and string.sub(previous, 1, sep - 1) == content then
    return {1, string.sub(previous, sep + 1)}
  end
  return {2}
end
local qty = tonumber(ARGV[4])
local stock = redis.call('GET', KEYS[2])
if not stock then
  redis.call('DEL', KEYS[1])
  return {-2}
end
if tonumber(stock) < qty then
  redis.call('DEL', KEYS[1])
  return {-1}
end
redis.call('DECRBY', KEYS[2], qty)
local id = redis.call('XADD', KEYS[3], '*', 'order_id', ARGV[1], 'user_id', ARGV[2],
  'sku', ARGV[3], 'qty', ARGV[4], 'payment', ARGV[5])
redis.call('SET', KEYS[1], content .. '#' .. id)
return {0, id}
"#;

/// Largest bulk string or array accepted in a reply: bounds memory on a confused peer.
const BULK_BYTES_MAX: usize = 64 * 1024 * 1024;
const ARRAY_LEN_MAX: usize = 1 << 20;
/// Stream entries read per `XRANGE` in the audit.
const STREAM_PAGE: usize = 10_000;

/// Where the orders go in Redis, and the loaded script's SHA1.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub addr: SocketAddr,
    pub script_sha: String,
    pub key_prefix: String,
}

impl RedisTarget {
    fn stock_key(&self, sku: &str) -> String {
        format!("{}:stock:{sku}", self.key_prefix)
    }
    fn order_key(&self, order_id: &str) -> String {
        format!("{}:order:{order_id}", self.key_prefix)
    }
    fn stream_key(&self) -> String {
        format!("{}:orders", self.key_prefix)
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(text) => Some(text.clone()),
            Reply::Bulk(Some(bytes)) => String::from_utf8(bytes.clone()).ok(),
            _ => None,
        }
    }
}

/// Writes a command as a RESP array of bulk strings.
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buffer`: `Ok(None)` when more bytes are needed,
/// else the reply and how many bytes it took.
pub fn parse_reply(buffer: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buffer, 0, 0)
}

fn parse_at(buffer: &[u8], start: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > 8 {
        return Err("reply nested too deep".into());
    }
    let Some(line_end) = buffer[start..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buffer[start + 1..start + line_end];
    let after = start + line_end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad RESP number {:?}", text()))
    };
    let Some(&tag) = buffer.get(start) else {
        return Ok(None);
    };
    match tag {
        b'+' => Ok(Some((Reply::Simple(text()), after))),
        b'-' => Ok(Some((Reply::Error(text()), after))),
        b':' => Ok(Some((Reply::Integer(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| "bad bulk length")?;
            if len > BULK_BYTES_MAX {
                return Err(format!("bulk string of {len} bytes is over the limit"));
            }
            if buffer.len() < after + len + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Bulk(Some(buffer[after..after + len].to_vec())),
                after + len + 2,
            )))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| "bad array length")?;
            if len > ARRAY_LEN_MAX {
                return Err(format!("array of {len} items is over the limit"));
            }
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = after;
            for _ in 0..len {
                match parse_at(buffer, at, depth + 1)? {
                    None => return Ok(None),
                    Some((item, next)) => {
                        items.push(item);
                        at = next;
                    }
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(format!("unknown RESP type byte {:?}", other as char)),
    }
}

/// A stream id `MS-N` as one increasing number, to stand in for a journal `seq`.
pub fn stream_id_seq(id: &str) -> Option<u64> {
    let (ms, n) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let n: u64 = n.parse().ok()?;
    (n < (1 << 20) && ms < (1 << 43)).then_some((ms << 20) | n)
}

/// One connection to Redis.
#[derive(Debug)]
pub struct RespConnection {
    stream: TcpStream,
    read_buffer: Vec<u8>,
    write_buffer: Vec<u8>,
}

impl RespConnection {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            read_buffer: Vec::with_capacity(4096),
            write_buffer: Vec::with_capacity(512),
        })
    }

    pub async fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.write_buffer.clear();
        encode_command(args, &mut self.write_buffer);
        self.stream.write_all(&self.write_buffer).await?;
        loop {
            match parse_reply(&self.read_buffer).map_err(std::io::Error::other)? {
                Some((reply, used)) => {
                    self.read_buffer.drain(..used);
                    return Ok(reply);
                }
                None => {
                    let mut chunk = [0u8; 16 * 1024];
                    let read = self.stream.read(&mut chunk).await?;
                    if read == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.read_buffer.extend_from_slice(&chunk[..read]);
                }
            }
        }
    }

    /// One order through the script, classified like an HTTP answer.
    pub async fn order(
        &mut self,
        redis: &RedisTarget,
        request: &OrderRequest,
        context: &mut RequestContext<'_>,
    ) -> Result<Answered, &'static str> {
        let order_id = crate::workload::order_id(context.run_id, request.key);
        let sku = &context.skus[request.sku_index as usize].name;
        let qty = request.qty.to_string();
        let user = request.user_id();
        let reply = self
            .command(&[
                b"EVALSHA",
                redis.script_sha.as_bytes(),
                b"3",
                redis.order_key(&order_id).as_bytes(),
                redis.stock_key(sku).as_bytes(),
                redis.stream_key().as_bytes(),
                order_id.as_bytes(),
                user.as_bytes(),
                sku.as_bytes(),
                qty.as_bytes(),
                request.payment.as_str().as_bytes(),
            ])
            .await
            .map_err(|_| "io")?;
        Ok(classify(&reply))
    }
}

/// Maps the script's reply to the outcome an HTTP client of the engine would see.
pub fn classify(reply: &Reply) -> Answered {
    let answered = |class, seq, detail| Answered { class, seq, detail };
    let Reply::Array(Some(items)) = reply else {
        return answered(OutcomeClass::OtherError, None, Some("redis_error"));
    };
    let seq = items
        .get(1)
        .and_then(Reply::text)
        .as_deref()
        .and_then(stream_id_seq);
    match items.first() {
        Some(Reply::Integer(0)) => answered(OutcomeClass::Created, seq, None),
        Some(Reply::Integer(1)) => answered(OutcomeClass::Replayed, seq, None),
        Some(Reply::Integer(2)) => answered(
            OutcomeClass::Unprocessable,
            None,
            Some("idempotency_conflict"),
        ),
        Some(Reply::Integer(-1)) => answered(OutcomeClass::Refused, None, Some("sold_out")),
        Some(Reply::Integer(-2)) => answered(OutcomeClass::OtherError, None, Some("unknown_sku")),
        _ => answered(OutcomeClass::OtherError, None, Some("redis_error")),
    }
}

async fn admin_command(connection: &mut RespConnection, args: &[&[u8]]) -> anyhow::Result<Reply> {
    let reply = tokio::time::timeout(ADMIN_TIMEOUT, connection.command(args))
        .await
        .map_err(|_| anyhow!("redis did not answer within {ADMIN_TIMEOUT:?}"))?
        .context("redis connection failed")?;
    if let Reply::Error(error) = &reply {
        bail!(
            "redis refused {}: {error}",
            String::from_utf8_lossy(args[0])
        );
    }
    Ok(reply)
}

/// Loads the script and sets each SKU's stock; the run's keys start with `key_prefix`.
pub async fn setup(
    addr: SocketAddr,
    run_id: &str,
    skus: &[SkuSpec],
) -> anyhow::Result<RedisTarget> {
    let mut connection = RespConnection::open(addr)
        .await
        .with_context(|| format!("cannot connect to redis at {addr}"))?;
    let sha = admin_command(
        &mut connection,
        &[b"SCRIPT", b"LOAD", ORDER_SCRIPT.as_bytes()],
    )
    .await?
    .text()
    .ok_or_else(|| anyhow!("SCRIPT LOAD did not answer a SHA1"))?;
    let target = RedisTarget {
        addr,
        script_sha: sha,
        key_prefix: format!("stampede-load:{run_id}"),
    };
    admin_command(&mut connection, &[b"DEL", target.stream_key().as_bytes()]).await?;
    for sku in skus {
        admin_command(
            &mut connection,
            &[
                b"SET",
                target.stock_key(&sku.name).as_bytes(),
                sku.stock.to_string().as_bytes(),
            ],
        )
        .await?;
    }
    Ok(target)
}

fn field(fields: &[Reply], name: &str) -> Option<String> {
    fields
        .chunks(2)
        .find(|pair| pair[0].text().as_deref() == Some(name))
        .and_then(|pair| pair.get(1))
        .and_then(Reply::text)
}

/// The audit's inputs from Redis: the stream read in full as the journal, and per SKU the
/// remaining stock as `available` with the streamed units as `sold`, so that the check
/// "available + sold = stock_total" is Redis's own conservation of stock.
pub async fn gather_audit_inputs(
    target: &RedisTarget,
    run_id: &str,
    skus: &[SkuSpec],
) -> anyhow::Result<(JournalScan, Vec<Option<SkuState>>)> {
    let mut connection = RespConnection::open(target.addr).await?;
    let mut scan = JournalScan::new(run_id, skus);
    let mut units = std::collections::HashMap::<String, u64>::new();
    let stream = target.stream_key();
    let mut start = "-".to_owned();
    let count = STREAM_PAGE.to_string();
    loop {
        let reply = admin_command(
            &mut connection,
            &[
                b"XRANGE",
                stream.as_bytes(),
                start.as_bytes(),
                b"+",
                b"COUNT",
                count.as_bytes(),
            ],
        )
        .await?;
        let Reply::Array(Some(entries)) = reply else {
            bail!("XRANGE answered {reply:?}");
        };
        let page = entries.len();
        for entry in entries {
            let Reply::Array(Some(parts)) = entry else {
                bail!("XRANGE entry is not an array");
            };
            let id = parts
                .first()
                .and_then(Reply::text)
                .ok_or_else(|| anyhow!("entry without id"))?;
            let Some(Reply::Array(Some(fields))) = parts.get(1) else {
                bail!("XRANGE entry {id} has no fields");
            };
            let seq = stream_id_seq(&id).ok_or_else(|| anyhow!("odd stream id {id}"))?;
            let order_id = field(fields, "order_id").unwrap_or_default();
            let sku = field(fields, "sku").unwrap_or_default();
            let qty: u64 = field(fields, "qty")
                .and_then(|q| q.parse().ok())
                .unwrap_or(0);
            *units.entry(sku.clone()).or_default() += qty;
            scan.add_accepted(seq, &order_id, &sku, qty);
            start = format!("({id}");
        }
        if page < STREAM_PAGE {
            break;
        }
    }
    let mut states = Vec::with_capacity(skus.len());
    for sku in skus {
        let reply = admin_command(
            &mut connection,
            &[b"GET", target.stock_key(&sku.name).as_bytes()],
        )
        .await?;
        let available = reply.text().and_then(|t| t.parse::<i64>().ok());
        states.push(available.map(|available| {
            let sold = units.get(&sku.name).copied().unwrap_or(0);
            // A negative stock (an oversell) shows up as a sum that does not add up.
            SkuState {
                sku: sku.name.clone(),
                stock_total: sku.stock,
                available: u64::try_from(available).unwrap_or(0),
                reserved: 0,
                sold: if available < 0 {
                    sold + available.unsigned_abs()
                } else {
                    sold
                },
            }
        }));
    }
    Ok((scan, states))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&[b"GET", b"k"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let full = b"*2\r\n:0\r\n$15\r\n1700000000000-3\r\n+OK\r\n";
        let (reply, used) = parse_reply(full).unwrap().unwrap();
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Integer(0),
                Reply::Bulk(Some(b"1700000000000-3".to_vec()))
            ]))
        );
        assert_eq!(&full[used..], b"+OK\r\n");
        for cut in 0..used {
            assert_eq!(parse_reply(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            parse_reply(b"$-1\r\n").unwrap().unwrap().0,
            Reply::Bulk(None)
        );
        assert_eq!(
            parse_reply(b"-NOSCRIPT x\r\n").unwrap().unwrap().0,
            Reply::Error("NOSCRIPT x".into())
        );
        assert!(parse_reply(b"?what\r\n").is_err());
    }

    #[test]
    fn script_replies_map_to_the_engines_outcomes() {
        let created = classify(
            &parse_reply(b"*2\r\n:0\r\n$3\r\n5-1\r\n")
                .unwrap()
                .unwrap()
                .0,
        );
        assert_eq!(
            (created.class, created.seq),
            (OutcomeClass::Created, Some((5 << 20) | 1))
        );
        let sold_out = classify(&Reply::Array(Some(vec![Reply::Integer(-1)])));
        assert_eq!(sold_out.class, OutcomeClass::Refused);
        let conflict = classify(&Reply::Array(Some(vec![Reply::Integer(2)])));
        assert_eq!(conflict.class, OutcomeClass::Unprocessable);
        assert_eq!(
            classify(&Reply::Error("ERR".into())).class,
            OutcomeClass::OtherError
        );
    }

    #[test]
    fn stream_ids_order_like_seqs() {
        assert!(stream_id_seq("10-5").unwrap() < stream_id_seq("11-0").unwrap());
        assert!(stream_id_seq("10-5").unwrap() > stream_id_seq("10-4").unwrap());
        assert_eq!(stream_id_seq("x-1"), None);
    }
}
