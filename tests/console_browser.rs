//! The event console in a real browser: headless Chromium (Debian's `chromium`) driven over
//! the DevTools protocol loads `GET /console` from the real binary and an operator's steps
//! are played on the page: log in, watch the figures move while orders are placed, pause and
//! resume a SKU and top up its stock through the confirmation dialog, and be refused with a
//! wrong token.
//!
//! Without Chromium the tests skip with a message, unless `STAMPEDE_REQUIRE_BROWSER` is set
//! (CI sets it): then a missing browser fails them. `STAMPEDE_CHROMIUM` names another binary.
//! Every wait is bounded; the browser is launched with a fresh profile and never reaches
//! beyond loopback (no background networking, updates, sync or QUIC).

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Opts, Server, order};
use headless_chrome::{Browser, LaunchOptions, Tab};
use reqwest::StatusCode;
use serde_json::Value;

/// Bound on every wait for the page to show something.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A headless Chromium with one tab, on a profile of its own.
struct Console {
    tab: Arc<Tab>,
    _browser: Browser,
    _profile: tempfile::TempDir,
}

fn chromium_path() -> PathBuf {
    std::env::var_os("STAMPEDE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

impl Console {
    /// Launches the browser; `None` (with a message) when there is none and none is required.
    fn launch() -> Option<Console> {
        Console::launch_sized((1400, 1000))
    }

    /// [`Console::launch`] with a window of `size` pixels (width, height).
    fn launch_sized(size: (u32, u32)) -> Option<Console> {
        let path = chromium_path();
        if !path.exists() {
            assert!(
                std::env::var_os("STAMPEDE_REQUIRE_BROWSER").is_none(),
                "STAMPEDE_REQUIRE_BROWSER is set but {} does not exist",
                path.display()
            );
            eprintln!(
                "SKIPPED: no browser at {} (install Debian's chromium, or set \
                 STAMPEDE_CHROMIUM); set STAMPEDE_REQUIRE_BROWSER to make this a failure",
                path.display()
            );
            return None;
        }
        let profile = tempfile::tempdir().expect("a profile directory");
        let args: Vec<&OsStr> = [
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .iter()
        .map(OsStr::new)
        .collect();
        let options = LaunchOptions::default_builder()
            .path(Some(path))
            .headless(true)
            .sandbox(false)
            .window_size(Some(size))
            .user_data_dir(Some(profile.path().to_path_buf()))
            .args(args)
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .expect("launch options");
        let browser = Browser::new(options).expect("chromium starts");
        let tab = browser.new_tab().expect("a tab");
        tab.set_default_timeout(PAGE_TIMEOUT);
        Some(Console {
            tab,
            _browser: browser,
            _profile: profile,
        })
    }

    fn open(&self, url: &str) {
        self.tab
            .navigate_to(url)
            .and_then(|tab| tab.wait_until_navigated())
            .expect("the console page loads");
        self.tab.wait_for_element("#token").expect("the login form");
    }

    /// The value of a script expression (a JSON-able primitive).
    fn eval(&self, expression: &str) -> Value {
        self.tab
            .evaluate(expression, false)
            .unwrap_or_else(|error| panic!("{expression}: {error}"))
            .value
            .unwrap_or(Value::Null)
    }

    /// Waits until `condition` (a script expression) is true; panics with `what` after
    /// `PAGE_TIMEOUT`, showing the page's message line.
    fn wait_until(&self, what: &str, condition: &str) {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        while Instant::now() < deadline {
            if self.eval(&format!("Boolean({condition})")) == Value::Bool(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let message = self.eval("document.getElementById('message').textContent");
        panic!("the page did not show {what} within {PAGE_TIMEOUT:?} (message: {message})");
    }

    /// Types the token into the login form and submits it, as an operator does.
    fn log_in(&self, token: &str) {
        self.tab
            .wait_for_element("#token")
            .and_then(|input| input.click().map(|_| ()))
            .expect("the token field takes focus");
        self.tab.type_str(token).expect("the token is typed");
        self.tab.press_key("Enter").expect("the form is submitted");
    }

    fn text(&self, selector: &str) -> String {
        let value = self.eval(&format!(
            "(document.querySelector({selector:?}) || {{}}).textContent || ''"
        ));
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks a button of the SKU's row, then the dialog's Confirm (or Cancel), after
    /// `fill` put a value into its number field when given.
    fn sku_action(&self, sku: &str, button: &str, fill: Option<&str>, confirm: bool) {
        let selector = format!("tr[data-sku={sku:?}] button.{button}");
        self.wait_until(
            &format!("the {button} button of {sku}"),
            &format!("document.querySelector({selector:?})"),
        );
        self.eval(&format!("document.querySelector({selector:?}).click()"));
        self.wait_until(
            "the confirmation dialog",
            "document.getElementById('confirm').open",
        );
        if let Some(value) = fill {
            self.eval(&format!(
                "document.getElementById('confirm-input').value = {value:?}"
            ));
        }
        let choice = if confirm {
            "confirm-ok"
        } else {
            "confirm-cancel"
        };
        self.eval(&format!("document.getElementById({choice:?}).click()"));
        self.wait_until(
            "the dialog closed",
            "!document.getElementById('confirm').open",
        );
    }
}

fn row_text(sku: &str) -> String {
    format!("((document.querySelector('tr[data-sku=\"{sku}\"]') || {{}}).textContent || '')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_watches_the_sale_pauses_a_sku_and_tops_up_its_stock() {
    let Some(console) = Console::launch() else {
        return;
    };
    let server = Server::start(Opts::default()).await;
    server.create_sku("WEB-1", 40, 0, 5).await;
    console.open(&server.url("/console"));

    // A wrong token: an error on the form, nothing kept, nothing changed.
    let journal_before = server.journal().await.len();
    console.log_in("wrong-token-of-a-confused-operator");
    console.wait_until(
        "the refusal",
        "document.getElementById('login-error').textContent.includes('refused')",
    );
    assert_eq!(
        console.eval("sessionStorage.length"),
        0,
        "a refused token is not kept"
    );
    assert_eq!(
        console.eval("document.getElementById('console').className"),
        "hidden"
    );
    assert_eq!(
        server.journal().await.len(),
        journal_before,
        "nothing changed"
    );

    // The right token: the figures arrive, and the token is in no URL.
    console.log_in(ADMIN_TOKEN);
    console.wait_until(
        "readiness",
        "document.getElementById('status').textContent === 'ready'",
    );
    let url = console.eval("location.href");
    assert!(!url.as_str().unwrap().contains(ADMIN_TOKEN), "{url}");
    console.wait_until(
        "the SKU's row",
        &format!("{}.includes('40 / 0 / 0')", row_text("WEB-1")),
    );

    // Orders placed: the counts, the bar's figures and the sell rate move.
    let created_before: u64 = console.text("#count-created").parse().unwrap();
    for index in 0..4 {
        server
            .place(&order(
                &format!("web-{index}"),
                &format!("u{index}"),
                "WEB-1",
                2,
                "prepaid",
            ))
            .await;
    }
    console.wait_until(
        "four more created orders",
        &format!(
            "Number(document.getElementById('count-created').textContent) >= {}",
            created_before + 4
        ),
    );
    console.wait_until(
        "the reserved units",
        &format!("{}.includes('32 / 8 / 0')", row_text("WEB-1")),
    );

    // Pause: cancelled first (nothing happens), then confirmed.
    console.sku_action("WEB-1", "pause", None, false);
    assert_eq!(
        server.sku("WEB-1").await["paused"],
        false,
        "a cancelled dialog changes nothing"
    );
    console.sku_action("WEB-1", "pause", None, true);
    console.wait_until(
        "the paused badge",
        &format!("{}.includes('(paused)')", row_text("WEB-1")),
    );
    server
        .post_order(&order("web-late", "u9", "WEB-1", 1, "cod"))
        .await
        .assert_error(409, "paused");
    assert_eq!(server.sku("WEB-1").await["available"], 32, "nothing taken");
    assert!(
        server
            .journal()
            .await
            .iter()
            .any(|record| record["type"] == "pause" && record["sku"] == "WEB-1"),
        "the pause is journaled"
    );
    console.wait_until(
        "the paused count",
        "Number(document.getElementById('count-paused').textContent) >= 1",
    );

    // Resume, and top up the stock to 100 through the dialog's number field.
    console.sku_action("WEB-1", "resume", None, true);
    console.wait_until(
        "the pause lifted",
        &format!("!{}.includes('(paused)')", row_text("WEB-1")),
    );
    server
        .place(&order("web-late", "u9", "WEB-1", 1, "cod"))
        .await;
    console.sku_action("WEB-1", "topup", Some("100"), true);
    console.wait_until(
        "the new stock",
        &format!("{}.includes('91 / 8 / 1')", row_text("WEB-1")),
    );
    let view = server.sku("WEB-1").await;
    assert_eq!(view["stock_total"], 100, "{view}");

    // A refused change is shown, not hidden: stock below what is committed.
    console.sku_action("WEB-1", "topup", Some("3"), true);
    console.wait_until(
        "the refusal of the top-up",
        "document.getElementById('message').textContent.includes('stock_conflict')",
    );
    assert_eq!(server.sku("WEB-1").await["stock_total"], 100);
    let reply = server.get("/v1/skus/WEB-1").await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// Not a test of the engine: writes a screenshot of the console of a running engine for the
/// docs (`STAMPEDE_CONSOLE_URL`, `STAMPEDE_CONSOLE_TOKEN`, `STAMPEDE_CONSOLE_SHOT` = the PNG's
/// path), e.g. during a `stampede-load` run. Run with `--ignored`.
#[test]
#[ignore]
fn screenshot_of_a_running_console() {
    let (Some(url), Some(token), Some(out)) = (
        std::env::var_os("STAMPEDE_CONSOLE_URL"),
        std::env::var_os("STAMPEDE_CONSOLE_TOKEN"),
        std::env::var_os("STAMPEDE_CONSOLE_SHOT"),
    ) else {
        panic!("set STAMPEDE_CONSOLE_URL, STAMPEDE_CONSOLE_TOKEN and STAMPEDE_CONSOLE_SHOT");
    };
    let console = Console::launch_sized((1400, 1640)).expect("a browser");
    console.open(url.to_str().unwrap());
    console.log_in(token.to_str().unwrap());
    console.wait_until(
        "readiness",
        "document.getElementById('status').textContent === 'ready'",
    );
    let seconds: u64 = std::env::var("STAMPEDE_CONSOLE_WAIT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    std::thread::sleep(Duration::from_secs(seconds));
    let png = console
        .tab
        .capture_screenshot(
            headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption::Png,
            None,
            None,
            true,
        )
        .expect("a screenshot");
    std::fs::write(out, png).expect("the screenshot is written");
}

/// The review queue: held orders listed with their rules; one approved and one rejected
/// from their rows, two approved together with the bulk buttons; each decision is a journal
/// record and a refused unit is back on sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_approves_and_rejects_held_orders_from_the_review_queue() {
    let Some(console) = Console::launch() else {
        return;
    };
    let server = Server::start(Opts::default()).await;
    server.create_sku("REV-1", 30, 0, 5).await;
    let rules = server
        .send(
            server
                .client()
                .put(server.url("/v1/review/rules"))
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .json(&serde_json::json!({"qty_at_least": 3})),
        )
        .await;
    assert_eq!(rules.status, StatusCode::OK, "{}", rules.text);
    for id in ["rev-a", "rev-b", "rev-c", "rev-d"] {
        let held = server
            .place(&order(id, &format!("user-{id}"), "REV-1", 3, "prepaid"))
            .await;
        assert_eq!(held["status"], "held", "{held}");
    }
    console.open(&server.url("/console"));
    console.log_in(ADMIN_TOKEN);
    console.wait_until(
        "four held orders",
        "document.getElementById('held-count').textContent === '4'",
    );
    let row = |id: &str| format!("document.querySelector('tr[data-order-id=\"{id}\"]')");
    assert!(
        console
            .eval(&format!("{}.textContent", row("rev-a")))
            .as_str()
            .unwrap()
            .contains("large_qty"),
        "the row names the rule"
    );

    // One approved and one rejected from their rows, each after its dialog.
    for (id, button) in [("rev-a", "approve"), ("rev-b", "reject")] {
        console.eval(&format!(
            "{}.querySelector('button.{button}').click()",
            row(id)
        ));
        console.wait_until(
            "the confirmation dialog",
            "document.getElementById('confirm').open",
        );
        console.eval("document.getElementById('confirm-ok').click()");
        console.wait_until(&format!("{id} leaving the queue"), &format!("!{}", row(id)));
    }
    assert_eq!(server.order("rev-a").await["status"], "pending_payment");
    assert_eq!(server.order("rev-b").await["status"], "rejected");
    let journal = server.journal().await;
    let decided = |id: &str, kind: &str| {
        journal
            .iter()
            .any(|record| record["order_id"] == id && record["type"] == kind)
    };
    assert!(decided("rev-a", "approve"), "the approval is journaled");
    assert!(decided("rev-b", "reject"), "the rejection is journaled");
    assert_eq!(
        server.sku("REV-1").await["available"],
        30 - 3 * 3,
        "rev-b's units are back"
    );

    // Two at once: select both rows, approve the selection.
    console.wait_until(
        "two held orders",
        "document.getElementById('held-count').textContent === '2'",
    );
    console.eval("document.querySelectorAll('#reviews input.pick').forEach((box) => box.click())");
    console.eval("document.getElementById('approve-selected').click()");
    console.wait_until(
        "the confirmation dialog",
        "document.getElementById('confirm').open",
    );
    assert!(console.text("#confirm-text").contains("2 held orders"));
    console.eval("document.getElementById('confirm-ok').click()");
    console.wait_until(
        "an empty queue",
        "document.getElementById('held-count').textContent === '0'",
    );
    for id in ["rev-c", "rev-d"] {
        assert_eq!(server.order(id).await["status"], "pending_payment", "{id}");
    }
}
