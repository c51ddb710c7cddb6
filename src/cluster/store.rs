//! The cluster's state in Redis: key names, the Lua scripts that change a SKU's global stock
//! atomically, and the calls that run them. Nothing else in Stampede speaks to Redis.
//!
//! ```text
//! stampede:sku:{SKU}          hash, one slot per SKU (the hash tag is the SKU name)
//!   total                      the SKU's stock for the whole event (contract `stock_total`)
//!   pool                       units no node holds: what a grant takes from
//!   share:<node>               units leased to <node>: its `stock_total`, in its journal
//!   fig:<node>                 "available,reserved,sold" of <node>'s share, as it last reported
//!   per_user_limit, max_per_order, payment_timeout_s
//!   touch                      written by every script, so that the `WAIT` after it confirms
//!                              that everything before it on this hash reached a replica
//! stampede:{catalogue}:skus    set of every SKU name
//! stampede:{catalogue}:version counter, bumped by every SKU change: nodes poll it
//! <stream>                     the fulfilment stream (XADD), default `{stampede}:journal`
//! {<stream tag>}:pos:<node>    the last seq of <node> appended to the stream (same slot)
//! ```
//!
//! Invariants kept by the scripts (each runs atomically on the SKU's master):
//! `pool + Σ share:<node> = total`; `pool >= 0`; a grant never makes `pool` negative; a
//! share changes only from the value its node last knew (`expected`), so a retry of a call
//! whose answer was lost can never apply twice. A script's result counts only once `WAIT`
//! says a replica has it (see [`Store::eval_confirmed`]).

use std::time::Duration;

use parking_lot::Mutex;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Value};

use crate::limits;

/// Why a Redis call did not give an answer that can be relied on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no replica confirmed the write within {ms} ms (WAIT answered {replicas})")]
    NotReplicated { ms: u64, replicas: i64 },
    #[error("unexpected answer from redis: {0}")]
    Unexpected(String),
}

/// A SKU as the cluster holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalSku {
    pub total: u64,
    pub pool: u64,
    pub per_user_limit: u32,
    pub max_per_order: u32,
    pub payment_timeout_s: u32,
    /// Each node's lease: `(node, share, reported figures)`.
    pub nodes: Vec<NodeShare>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeShare {
    pub node: String,
    pub share: u64,
    /// `(available, reserved, sold)` of the share as the node last reported them.
    pub figures: Option<(u64, u64, u64)>,
}

/// What a share script answered: whether the node's expected share matched, and the share
/// and pool after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareAnswer {
    pub matched: bool,
    pub share: u64,
    pub pool: u64,
}

/// One journal record on its way to the stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub seq: u64,
    /// The record's `type`.
    pub kind: &'static str,
    /// Empty for SKU records.
    pub order_id: String,
    /// The NDJSON line of `GET /v1/journal`.
    pub line: String,
}

/// A SKU change for the whole cluster (`PUT /v1/skus/{sku}` on any node). `None` keeps the
/// value (or, for a new SKU, takes the contract's default).
#[derive(Debug, Clone, Default)]
pub struct GlobalSkuUpdate {
    pub stock: Option<u64>,
    pub per_user_limit: Option<u32>,
    pub max_per_order: Option<u32>,
    pub payment_timeout_s: Option<u32>,
}

/// Takes up to `want` units from the pool into the node's share, if the share is what the
/// node expects. Returns `{matched, share, pool}`.
const GRANT: &str = r"
local field = 'share:' .. ARGV[1]
local share = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local pool = tonumber(redis.call('HGET', KEYS[1], 'pool') or '0')
redis.call('HINCRBY', KEYS[1], 'touch', 1)
if share ~= tonumber(ARGV[2]) then return {0, share, pool} end
local n = math.min(tonumber(ARGV[3]), pool)
if n > 0 then
  pool = redis.call('HINCRBY', KEYS[1], 'pool', -n)
  share = redis.call('HINCRBY', KEYS[1], field, n)
end
return {1, share, pool}
";

/// Sets the node's share to ARGV[3] if it is what the node expects (ARGV[2]); the difference
/// goes to (or, repairing a write a failover lost, comes from) the pool, never below zero.
const SET_SHARE: &str = r"
local field = 'share:' .. ARGV[1]
local share = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local pool = tonumber(redis.call('HGET', KEYS[1], 'pool') or '0')
redis.call('HINCRBY', KEYS[1], 'touch', 1)
if share ~= tonumber(ARGV[2]) then return {0, share, pool} end
local target = tonumber(ARGV[3])
if target > share + pool then target = share + pool end
pool = redis.call('HINCRBY', KEYS[1], 'pool', share - target)
redis.call('HSET', KEYS[1], field, target)
return {1, target, pool}
";

/// Creates or changes a SKU: ARGV = stock, per_user_limit, max_per_order, payment_timeout_s
/// ('' keeps the value), then the defaults of the last three for a new SKU. The total may
/// not drop below what the nodes hold: `{0, held}` then, else `{1, 0}`.
const PUT_SKU: &str = r"
local exists = redis.call('EXISTS', KEYS[1]) == 1
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
local pool = tonumber(redis.call('HGET', KEYS[1], 'pool') or '0')
redis.call('HINCRBY', KEYS[1], 'touch', 1)
if ARGV[1] ~= '' then
  local wanted = tonumber(ARGV[1])
  if pool + wanted - total < 0 then return {0, total - pool} end
  redis.call('HSET', KEYS[1], 'total', wanted, 'pool', pool + wanted - total)
elseif not exists then
  redis.call('HSET', KEYS[1], 'total', 0, 'pool', 0)
end
local names = {'per_user_limit', 'max_per_order', 'payment_timeout_s'}
for i = 1, 3 do
  if ARGV[i + 1] ~= '' then
    redis.call('HSET', KEYS[1], names[i], ARGV[i + 1])
  elseif not exists then
    redis.call('HSET', KEYS[1], names[i], ARGV[i + 4])
  end
end
return {1, 0}
";

/// Appends records to the stream after the node's position, in order, and moves the
/// position in the same atomic step. ARGV = node, then per record: seq, type, order_id,
/// record, and last the stream's trim length. A record at or below the position was published before and is skipped; a gap is
/// refused (`{0, pos}`) so the caller resends from the position. Returns `{1, pos}`.
const PUBLISH: &str = r"
local pos = tonumber(redis.call('GET', KEYS[2]) or '0')
for i = 2, #ARGV - 1, 4 do
  local seq = tonumber(ARGV[i])
  if seq > pos + 1 then return {0, pos} end
  if seq == pos + 1 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[#ARGV], '*', 'node', ARGV[1], 'seq', ARGV[i],
      'type', ARGV[i + 1], 'order_id', ARGV[i + 2], 'record', ARGV[i + 3])
    pos = seq
  end
end
redis.call('SET', KEYS[2], pos)
return {1, pos}
";

pub fn sku_key(sku: &str) -> String {
    format!("stampede:sku:{{{sku}}}")
}

const CATALOGUE_SKUS: &str = "stampede:{catalogue}:skus";
const CATALOGUE_VERSION: &str = "stampede:{catalogue}:version";

/// The key that keeps a node's position in the stream: in the stream's slot (its hash tag,
/// or its whole name when it has none), so one script can move both.
pub fn stream_position_key(stream: &str, node: &str) -> String {
    let tag = hash_tag(stream).unwrap_or(stream);
    format!("{{{tag}}}:pos:{node}")
}

/// Redis Cluster's hash tag: the text between the first `{` and the next `}`, if not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

/// A connection to the Redis Cluster, made on first use and again after it broke. The
/// client follows MOVED/ASK, refreshes its slot map after a failover and multiplexes every
/// call of this node over one connection per master.
///
/// Calls confirmed by `WAIT` go over a pool of [`limits::REDIS_CONFIRMED_CONNECTIONS`]
/// connections: Redis blocks a connection for the whole `WAIT`, so on one multiplexed
/// connection every grant would queue behind the previous grant's replication.
pub struct Store {
    seeds: Vec<String>,
    /// `[0]` for plain calls, the rest for calls confirmed by `WAIT`, used in turn.
    connections: Vec<Mutex<Option<ClusterConnection>>>,
    next_confirmed: std::sync::atomic::AtomicUsize,
}

impl Store {
    pub fn new(seeds: &[String]) -> Self {
        Self {
            seeds: seeds.to_vec(),
            connections: (0..=limits::REDIS_CONFIRMED_CONNECTIONS)
                .map(|_| Mutex::new(None))
                .collect(),
            next_confirmed: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn confirmed_slot(&self) -> usize {
        let turn = self
            .next_confirmed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        1 + turn % limits::REDIS_CONFIRMED_CONNECTIONS
    }

    async fn connection(&self) -> Result<ClusterConnection, StoreError> {
        self.connection_at(0).await
    }

    async fn connection_at(&self, slot: usize) -> Result<ClusterConnection, StoreError> {
        if let Some(connection) = self.connections[slot].lock().clone() {
            return Ok(connection);
        }
        let urls: Vec<String> = self
            .seeds
            .iter()
            .map(|seed| format!("redis://{seed}"))
            .collect();
        let client = redis::cluster::ClusterClientBuilder::new(urls)
            .connection_timeout(limits::REDIS_CALL_TIMEOUT)
            .response_timeout(limits::REDIS_CALL_TIMEOUT)
            .retries(3)
            .build()?;
        let connection = timed(client.get_async_connection()).await?;
        *self.connections[slot].lock() = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets a connection after an error that may mean it is dead; the next call makes a
    /// new one from the seeds.
    fn reset(&self, slot: usize) {
        *self.connections[slot].lock() = None;
    }

    /// Runs `cmd` with the cluster's routing (by its key).
    async fn query(&self, cmd: Cmd) -> Result<Value, StoreError> {
        let mut connection = self.connection().await?;
        let result = timed(cmd.query_async::<Value>(&mut connection)).await;
        if let Err(StoreError::Redis(error)) = &result
            && (error.is_io_error() || error.is_connection_dropped())
        {
            self.reset(0);
        }
        result
    }

    /// Runs a script on the master of `key`, then `WAIT 1` on the same connection: the answer
    /// counts only when a replica confirmed it (else [`StoreError::NotReplicated`]).
    async fn eval_confirmed(
        &self,
        script: &str,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, StoreError> {
        let mut pipeline = redis::pipe();
        let eval = pipeline.cmd("EVAL").arg(script).arg(keys.len());
        for key in keys {
            eval.arg(*key);
        }
        for arg in args {
            eval.arg(arg);
        }
        pipeline
            .cmd("WAIT")
            .arg(1)
            .arg(limits::REDIS_WAIT_REPLICA_MS);
        let slot = self.confirmed_slot();
        let mut connection = self.connection_at(slot).await?;
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(keys[0], SlotAddr::Master));
        let answered = timed(connection.route_pipeline(pipeline, 0, 2, route)).await;
        let mut values = match answered {
            Ok(values) => values,
            Err(error) => {
                if let StoreError::Redis(error) = &error
                    && (error.is_io_error() || error.is_connection_dropped())
                {
                    self.reset(slot);
                }
                return Err(error);
            }
        };
        let replicas = match values.pop() {
            Some(Value::Int(replicas)) => replicas,
            other => return Err(StoreError::Unexpected(format!("WAIT gave {other:?}"))),
        };
        if replicas < 1 {
            return Err(StoreError::NotReplicated {
                ms: limits::REDIS_WAIT_REPLICA_MS,
                replicas,
            });
        }
        values
            .pop()
            .ok_or_else(|| StoreError::Unexpected("no script answer".into()))
    }

    /// Takes up to `want` units from the SKU's pool into `node`'s share (if its share is
    /// still `expected`), confirmed by a replica.
    pub async fn grant(
        &self,
        sku: &str,
        node: &str,
        expected: u64,
        want: u64,
    ) -> Result<ShareAnswer, StoreError> {
        let key = sku_key(sku);
        let value = self
            .eval_confirmed(
                GRANT,
                &[&key],
                &[node, &expected.to_string(), &want.to_string()],
            )
            .await?;
        share_answer(value)
    }

    /// Sets `node`'s share of the SKU to `target` (if it is still `expected`), confirmed.
    pub async fn set_share(
        &self,
        sku: &str,
        node: &str,
        expected: u64,
        target: u64,
    ) -> Result<ShareAnswer, StoreError> {
        let key = sku_key(sku);
        let value = self
            .eval_confirmed(
                SET_SHARE,
                &[&key],
                &[node, &expected.to_string(), &target.to_string()],
            )
            .await?;
        share_answer(value)
    }

    /// Creates or changes a SKU for the whole cluster; `Err(Ok(held))` when the new total is
    /// below the units the nodes hold.
    pub async fn put_sku(
        &self,
        sku: &str,
        update: &GlobalSkuUpdate,
    ) -> Result<Result<(), u64>, StoreError> {
        let key = sku_key(sku);
        let text = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_default();
        let args = [
            text(update.stock),
            text(update.per_user_limit.map(u64::from)),
            text(update.max_per_order.map(u64::from)),
            text(update.payment_timeout_s.map(u64::from)),
            "0".to_owned(),
            crate::config::default_max_per_order().to_string(),
            crate::config::default_payment_timeout_s().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let value = self.eval_confirmed(PUT_SKU, &[&key], &args).await?;
        let numbers = integers(&value)?;
        if numbers.first() == Some(&0) {
            return Ok(Err(numbers.get(1).copied().unwrap_or(0).max(0) as u64));
        }
        let mut add = redis::cmd("SADD");
        add.arg(CATALOGUE_SKUS).arg(sku);
        self.query(add).await?;
        let mut bump = redis::cmd("INCR");
        bump.arg(CATALOGUE_VERSION);
        self.query(bump).await?;
        Ok(Ok(()))
    }

    /// The catalogue's version (0 before any SKU change).
    pub async fn catalogue_version(&self) -> Result<u64, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(CATALOGUE_VERSION);
        match self.query(get).await? {
            Value::Nil => Ok(0),
            value => redis::from_redis_value::<u64>(value)
                .map_err(|e| StoreError::Unexpected(e.to_string())),
        }
    }

    /// Every SKU name of the cluster's catalogue, sorted.
    pub async fn sku_names(&self) -> Result<Vec<String>, StoreError> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(CATALOGUE_SKUS);
        let mut names: Vec<String> = redis::from_redis_value(self.query(members).await?)
            .map_err(|e| StoreError::Unexpected(e.to_string()))?;
        names.sort_unstable();
        Ok(names)
    }

    /// A SKU as the cluster holds it, `None` if the cluster does not know it.
    pub async fn sku(&self, sku: &str) -> Result<Option<GlobalSku>, StoreError> {
        let mut all = redis::cmd("HGETALL");
        all.arg(sku_key(sku));
        let fields: Vec<(String, String)> = redis::from_redis_value(self.query(all).await?)
            .map_err(|e| StoreError::Unexpected(e.to_string()))?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(parse_global_sku(&fields)))
    }

    /// Publishes this node's figures of its share of a SKU (for the global `GET`).
    pub async fn report(
        &self,
        sku: &str,
        node: &str,
        figures: (u64, u64, u64),
    ) -> Result<(), StoreError> {
        let mut set = redis::cmd("HSET");
        set.arg(sku_key(sku))
            .arg(format!("fig:{node}"))
            .arg(format!("{},{},{}", figures.0, figures.1, figures.2));
        self.query(set).await.map(drop)
    }

    /// The last seq of `node` in the stream (0 before its first record).
    pub async fn stream_position(&self, stream: &str, node: &str) -> Result<u64, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(stream_position_key(stream, node));
        match self.query(get).await? {
            Value::Nil => Ok(0),
            value => redis::from_redis_value::<u64>(value)
                .map_err(|e| StoreError::Unexpected(e.to_string())),
        }
    }

    /// Appends `records` (consecutive seqs) after `node`'s position; returns the position
    /// after the call. A position below the first record's seq − 1 (a gap) leaves the stream
    /// as it was and returns the position to resend from.
    pub async fn publish(
        &self,
        stream: &str,
        node: &str,
        records: &[StreamRecord],
    ) -> Result<u64, StoreError> {
        let position_key = stream_position_key(stream, node);
        let seqs: Vec<String> = records.iter().map(|r| r.seq.to_string()).collect();
        let trim = limits::STREAM_ENTRIES_MAX.to_string();
        let mut args = Vec::with_capacity(2 + records.len() * 4);
        args.push(node);
        for (record, seq) in records.iter().zip(&seqs) {
            args.extend([seq.as_str(), record.kind, &record.order_id, &record.line]);
        }
        args.push(&trim);
        let value = self
            .eval_confirmed(PUBLISH, &[stream, &position_key], &args)
            .await?;
        let numbers = integers(&value)?;
        Ok(numbers.get(1).copied().unwrap_or(0).max(0) as u64)
    }
}

async fn timed<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limits::REDIS_CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(limits::REDIS_CALL_TIMEOUT)),
    }
}

fn integers(value: &Value) -> Result<Vec<i64>, StoreError> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Int(n) => Ok(*n),
                other => Err(StoreError::Unexpected(format!("{other:?}"))),
            })
            .collect(),
        other => Err(StoreError::Unexpected(format!("{other:?}"))),
    }
}

fn share_answer(value: Value) -> Result<ShareAnswer, StoreError> {
    let numbers = integers(&value)?;
    let [matched, share, pool] = numbers[..] else {
        return Err(StoreError::Unexpected(format!("{numbers:?}")));
    };
    Ok(ShareAnswer {
        matched: matched == 1,
        share: share.max(0) as u64,
        pool: pool.max(0) as u64,
    })
}

fn parse_global_sku(fields: &[(String, String)]) -> GlobalSku {
    let mut sku = GlobalSku::default();
    let mut nodes: std::collections::BTreeMap<String, NodeShare> = Default::default();
    for (name, value) in fields {
        let number = || value.parse::<u64>().unwrap_or(0);
        match name.as_str() {
            "total" => sku.total = number(),
            "pool" => sku.pool = number(),
            "per_user_limit" => sku.per_user_limit = number() as u32,
            "max_per_order" => sku.max_per_order = number() as u32,
            "payment_timeout_s" => sku.payment_timeout_s = number() as u32,
            _ => {
                if let Some(node) = name.strip_prefix("share:") {
                    let entry = nodes.entry(node.to_owned()).or_default();
                    entry.node = node.to_owned();
                    entry.share = number();
                } else if let Some(node) = name.strip_prefix("fig:") {
                    let entry = nodes.entry(node.to_owned()).or_default();
                    entry.node = node.to_owned();
                    let parts: Vec<u64> = value.split(',').filter_map(|p| p.parse().ok()).collect();
                    if let [available, reserved, sold] = parts[..] {
                        entry.figures = Some((available, reserved, sold));
                    }
                }
            }
        }
    }
    sku.nodes = nodes.into_values().collect();
    sku
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_position_shares_the_streams_slot() {
        assert_eq!(
            stream_position_key("{stampede}:journal", "n1"),
            "{stampede}:pos:n1"
        );
        assert_eq!(stream_position_key("orders", "n1"), "{orders}:pos:n1");
        assert_eq!(hash_tag("a{}b"), None);
        assert_eq!(sku_key("SKU-1"), "stampede:sku:{SKU-1}");
    }

    #[test]
    fn a_sku_hash_reads_back_with_each_nodes_share_and_figures() {
        let fields: Vec<(String, String)> = [
            ("total", "100"),
            ("pool", "40"),
            ("share:a", "50"),
            ("fig:a", "10,5,35"),
            ("share:b", "10"),
            ("max_per_order", "2"),
            ("touch", "7"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let sku = parse_global_sku(&fields);
        assert_eq!((sku.total, sku.pool, sku.max_per_order), (100, 40, 2));
        assert_eq!(sku.nodes.len(), 2);
        assert_eq!(sku.nodes[0].figures, Some((10, 5, 35)));
        assert_eq!(sku.nodes[1].figures, None);
        assert_eq!(sku.nodes[1].share, 10);
    }
}
