use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn embedded_default_is_valid_and_has_a_demo_catalogue() {
    let config = Config::load_with_env(&Overrides::default(), no_env).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.journal.fsync, FsyncPolicy::Always);
    assert!(!config.catalogue.is_empty());
}

#[test]
fn environment_overrides_flags_which_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("event.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9000\"\n[journal]\nfsync = \"none\"\n",
    )
    .unwrap();
    let overrides = Overrides {
        config_file: Some(file),
        listen: Some("127.0.0.1:9001".parse().unwrap()),
        data_dir: None,
    };
    let config = Config::load_with_env(&overrides, no_env).unwrap();
    assert_eq!(config.listen.port(), 9001);
    assert_eq!(config.journal.fsync, FsyncPolicy::None);
    // The file changed one key of [journal]; the others keep their defaults.
    assert_eq!(
        config.journal.segment_bytes_max,
        limits::SEGMENT_BYTES_DEFAULT
    );

    let env = |name: &str| match name {
        "STAMPEDE_LISTEN" => Some("127.0.0.1:9002".to_string()),
        "STAMPEDE_JOURNAL_FSYNC" => Some("interval".to_string()),
        "STAMPEDE_SHARDS" => Some("3".to_string()),
        _ => None,
    };
    let config = Config::load_with_env(&overrides, env).unwrap();
    assert_eq!(config.listen.port(), 9002);
    assert_eq!(config.journal.fsync, FsyncPolicy::Interval);
    assert_eq!(config.shard_count(), 3);
}

#[test]
fn bad_values_are_refused_with_the_key_named() {
    let env = |name: &str| (name == "STAMPEDE_JOURNAL_FSYNC").then(|| "sometimes".to_string());
    let err = Config::load_with_env(&Overrides::default(), env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fsync"), "{err}");
    let env = |name: &str| (name == "STAMPEDE_SHARDS").then(|| "many".to_string());
    let err = Config::load_with_env(&Overrides::default(), env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("STAMPEDE_SHARDS"), "{err}");
    let env = |name: &str| (name == "STAMPEDE_SHARDS").then(|| "0".to_string());
    assert!(Config::load_with_env(&Overrides::default(), env).is_err());
}

#[test]
fn every_environment_override_is_documented_in_the_default_file() {
    for (name, path, _) in ENV_OVERRIDES {
        assert!(
            DEFAULT_TOML.contains(name),
            "{name} ({}) is not documented",
            path.join(".")
        );
    }
}

#[test]
fn unknown_keys_are_an_error_not_a_silent_typo() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[journal]\nfsycn = \"none\"\n").unwrap();
    let overrides = Overrides {
        config_file: Some(file),
        ..Default::default()
    };
    let err = Config::load_with_env(&overrides, no_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fsycn"), "{err}");
}
