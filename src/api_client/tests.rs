use super::*;

#[test]
fn urls_are_plain_http_roots() {
    let endpoint = parse_url("http://127.0.0.1:8080").unwrap();
    assert_eq!(endpoint.connect, "127.0.0.1:8080");
    assert_eq!(endpoint.host, "127.0.0.1:8080");
    assert_eq!(
        parse_url("http://localhost/").unwrap().connect,
        "localhost:80"
    );
    assert_eq!(parse_url("http://[::1]:9/").unwrap().connect, "[::1]:9");
    assert!(parse_url("https://127.0.0.1:8080").is_err());
    assert!(parse_url("127.0.0.1:8080").is_err());
    assert!(parse_url("http://127.0.0.1:8080/v1/journal").is_err());
    assert!(parse_url("http://:8080").is_err());
}
