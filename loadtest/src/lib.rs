//! # stampede-load
//!
//! The load generator for Stampede's capacity planners: flash-sale scenarios driven as an
//! open (fixed arrival rate, corrected for coordinated omission) or closed (busy
//! connections) load over HTTP/1.1 keep-alive connections, latency per outcome in
//! HdrHistograms, and an audit of the engine's stock and journal after the run.
//!
//! # Layout
//!
//! | module       | owns |
//! |--------------|------|
//! | [`cli`]      | the command line and its defaults, checked into [`cli::RunSettings`] |
//! | [`scenario`] | scenario TOML files (bundled ones in `loadtest/scenarios/`) and their checks |
//! | [`run`]      | one run: setup, load, audit, summary |
//! | [`target`]   | engine / bare HTTP server / Redis: connections, setup, audit inputs |
//! | [`driver`]   | connection tasks, open and closed models, ramp-up, warm-up, the end |
//! | [`schedule`] | the open model's intended send times |
//! | [`workload`] | what each request says: buyers, SKUs (via [`zipf`]), retries, double clicks |
//! | [`recorder`] | per-task HDR histograms and the shared per-second timeline |
//! | [`audit`]    | the invariants checked against the journal and the stock figures |
//! | [`report`]   | the summary, SLOs, exit code; text, JSON and HTML (inline SVG) renderings |
//! | [`progress`] | the live line on stderr |
//! | [`scalpers`] | the `scalpers` scenario: order review (rings, bursts, deny list), tolerant of an engine without it |
//! | [`saleday`]  | the `sale-day` scenario: order lifecycles, a consumer group, several URLs, lifecycle audit |
//!
//! # Data path
//!
//! 1. [`cli::Args::into_settings`] resolves the scenario and every default.
//! 2. [`run::run`] sets the target up: for the engine, `GET /readyz`, the journal's head
//!    (so the audit reads only this run's records), and `PUT /v1/skus/{sku}` for each SKU.
//! 3. [`driver::drive`] opens every connection, then starts one task per connection. Each
//!    task asks its [`workload::Workload`] for the next request, sends it at its intended time
//!    (open) or at once (closed), and records the answer in its own [`recorder::Recorder`]
//!    and order log; once a second it hands its finished second to the shared timeline.
//! 4. When the run length has passed, tasks stop sending, finish what is in flight, and their
//!    recorders and order logs are merged.
//! 5. [`audit::audit`] checks the merged order log against the SKU figures and the journal.
//! 6. [`report::summarize`] computes percentiles, SLO verdicts and the exit code; `main`
//!    prints the text table and writes the JSON and HTML files.

pub mod audit;
pub mod cli;
pub mod driver;
pub mod duration;
pub mod outcome;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod run;
pub mod saleday;
pub mod scalpers;
pub mod scenario;
pub mod schedule;
pub mod target;
pub mod workload;
pub mod zipf;
