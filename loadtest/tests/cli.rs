//! The binary's exit codes for usage and setup errors, and its help.

use std::process::Command;

fn stampede_load(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_stampede-load"))
        .args(args)
        .env_remove("STAMPEDE_ADMIN_TOKEN")
        .output()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_exits_zero_and_teaches_the_load_models() {
    let (code, stdout, _) = stampede_load(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("COORDINATED OMISSION") && stdout.contains("EXAMPLES"));
}

#[test]
fn the_bundled_scenarios_are_listed() {
    let (code, stdout, _) = stampede_load(&["--list-scenarios"]);
    assert_eq!(code, 0);
    for name in [
        "hot-sku",
        "catalogue-sale",
        "retries",
        "duplicate-clicks",
        "limit-abusers",
    ] {
        assert!(stdout.contains(name), "{stdout}");
    }
}

#[test]
fn usage_errors_exit_three() {
    let (code, _, stderr) = stampede_load(&[]);
    assert_eq!(code, 3, "{stderr}");
    let (code, _, stderr) = stampede_load(&["--scenario", "no-such-scenario", "--target", "bare"]);
    assert_eq!(code, 3);
    assert!(stderr.contains("not a bundled scenario"), "{stderr}");
    let (code, _, stderr) = stampede_load(&["--scenario", "hot-sku", "--frobnicate"]);
    assert_eq!(code, 3, "{stderr}");
}

#[test]
fn an_unreachable_target_is_a_setup_error() {
    // Bind and drop a listener: nothing listens on that loopback port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, _, stderr) = stampede_load(&[
        "-s",
        "throughput",
        "--url",
        &url,
        "--admin-token",
        "x",
        "-d",
        "1s",
        "-q",
    ]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}
