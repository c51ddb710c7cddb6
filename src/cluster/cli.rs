//! `stampede cluster status` and `stampede cluster reclaim`: the operator's view of the
//! global stock, and the way to give back the units of a node that will not return.

use std::io::Write;
use std::sync::Arc;

use super::shares::Shares;
use super::store::{GlobalSku, Store};
use crate::config::Config;
use crate::engine::Engine;

/// Prints every SKU's global total and pool and each node's share and figures.
pub async fn status(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let store = Store::new(&config.cluster.redis);
    let names = store.sku_names().await?;
    writeln!(
        out,
        "{:<24} {:>10} {:>10}  {:<16} {:>10} {:>10} {:>10} {:>10}",
        "sku", "total", "pool", "node", "share", "available", "reserved", "sold"
    )?;
    for name in names {
        let Some(sku) = store.sku(&name).await? else {
            continue;
        };
        write_sku(out, &name, &sku)?;
    }
    Ok(())
}

fn write_sku(out: &mut impl Write, name: &str, sku: &GlobalSku) -> std::io::Result<()> {
    let (mut available, mut reserved, mut sold) = (sku.pool, 0, 0);
    for node in &sku.nodes {
        let (a, r, s) = node.figures.unwrap_or((node.share, 0, 0));
        available += a;
        reserved += r;
        sold += s;
    }
    writeln!(
        out,
        "{:<24} {:>10} {:>10}  {:<16} {:>10} {:>10} {:>10} {:>10}",
        name, sku.total, sku.pool, "(all)", "", available, reserved, sold
    )?;
    for node in &sku.nodes {
        let figures = node.figures.map_or_else(
            || ("?".to_owned(), "?".to_owned(), "?".to_owned()),
            |(a, r, s)| (a.to_string(), r.to_string(), s.to_string()),
        );
        writeln!(
            out,
            "{:<24} {:>10} {:>10}  {:<16} {:>10} {:>10} {:>10} {:>10}",
            "", "", "", node.node, node.share, figures.0, figures.1, figures.2
        )?;
    }
    Ok(())
}

/// Opens a stopped node's data dir (its lock keeps a running node out), gives every unsold
/// unit of its shares back to the global stock — journaled first, so a restart of the node
/// cannot sell them — and prints what went back. Units of orders awaiting payment stay with
/// the node: they come back when those orders expire, which needs the node.
pub async fn reclaim(config: &Config, out: &mut impl Write) -> anyhow::Result<u64> {
    let start_config = config.clone();
    let (engine, _report) =
        tokio::task::spawn_blocking(move || Engine::start(&start_config)).await??;
    let result = reclaim_from(&engine, config, out).await;
    let closing = engine.clone();
    tokio::task::spawn_blocking(move || closing.shutdown()).await??;
    result
}

async fn reclaim_from(
    engine: &Arc<Engine>,
    config: &Config,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let store = Arc::new(Store::new(&config.cluster.redis));
    let shares = Shares::new(
        engine.clone(),
        store.clone(),
        &config.cluster.node_id,
        config.cluster.lease_units,
        std::time::Duration::from_secs(config.cluster.idle_return_s),
    );
    let mut total = 0;
    writeln!(out, "{:<24} {:>10} {:>10}", "sku", "given_back", "kept")?;
    for view in engine.sku_views() {
        let back = shares.give_back(&view.sku, 0).await?;
        let after = engine.sku_view(&view.sku).expect("the sku exists");
        store
            .report(
                &view.sku,
                &config.cluster.node_id,
                (after.available, after.reserved, after.sold),
            )
            .await?;
        writeln!(
            out,
            "{:<24} {:>10} {:>10}",
            view.sku, back, after.stock_total
        )?;
        total += back;
    }
    Ok(total)
}
