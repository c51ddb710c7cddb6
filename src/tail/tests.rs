use super::*;

#[test]
fn types_are_the_journals() {
    assert_eq!(parse_type("accepted").unwrap(), "accepted");
    assert_eq!(parse_type("expired").unwrap(), "expired");
    assert_eq!(parse_type("payment_reminder").unwrap(), "payment_reminder");
    assert!(
        parse_type("acepted")
            .unwrap_err()
            .contains("accepted, sku, pay")
    );
    assert!(parse_group("pickers-1").is_ok());
    assert!(parse_group("../x").is_err());
}
