//! `tally check`: the example config passes; each kind of broken config is
//! rejected with a message that names the problem and the field.

use std::process::Command;

const EXAMPLE: &str = include_str!("../tally.example.toml");

/// Run `tally check` on `toml` with extra environment; (success, output).
fn check_with_env(toml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("TALLY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn check(toml: &str) -> (bool, String) {
    check_with_env(toml, &[])
}

/// The example with one line replaced.
fn broken(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "example lacks {from:?}");
    EXAMPLE.replacen(from, to, 1)
}

fn assert_rejected(toml: &str, needles: &[&str]) {
    let (ok, text) = check(toml);
    assert!(!ok, "accepted a broken config:\n{text}");
    for n in needles {
        assert!(text.contains(n), "message lacks {n:?}:\n{text}");
    }
}

#[test]
fn accepts_the_example() {
    let (ok, text) = check(EXAMPLE);
    assert!(ok, "{text}");
    assert!(text.contains("view page_views: views=count, duration=sum, longest=max, users=distinct, latency=quantiles by [properties.page] every 1m"), "{text}");
}

#[test]
fn prints_lookups_and_alerts_without_the_webhook_path() {
    // The example's commented-out lookup and alert, switched on.
    let mut toml = String::new();
    let mut on = false;
    for line in EXAMPLE.lines() {
        if line == "# [[lookup]]" || line == "# [[alert]]" {
            on = true;
        } else if !line.starts_with("# ") {
            on = false;
        }
        let line = match line.strip_prefix("# ") {
            Some(rest) if on => rest,
            _ => line,
        };
        toml.push_str(line);
        toml.push('\n');
    }
    let toml = toml.replace(
        "webhook = \"http://127.0.0.1:9000/hook\"",
        "webhook = \"https://hooks.example.com/T0/secret-token\"",
    );
    let (ok, text) = check(&toml);
    assert!(ok, "{text}");
    assert!(
        text.contains("lookup section: lookups/sections.csv (page -> section), missing -> other"),
        "{text}"
    );
    assert!(
        text.contains("alert home_quiet: page_views.views over 5m where properties.page in [\"/home\"] < 1 for 2m -> https://hooks.example.com/…"),
        "{text}"
    );
    assert!(!text.contains("secret-token"), "{text}");
}

#[test]
fn unknown_aggregate() {
    assert_rejected(
        &broken(r#"agg = "count" }"#, r#"agg = "median" }"#),
        &["median", "count", "distinct"],
    );
}

#[test]
fn sum_without_field() {
    assert_rejected(
        &broken(
            r#"{ name = "duration", agg = "sum", field = "properties.duration" }"#,
            r#"{ name = "duration", agg = "sum" }"#,
        ),
        &["page_views", "measures.duration", "needs a `field`"],
    );
}

#[test]
fn sum_of_a_non_numeric_field() {
    assert_rejected(
        &broken(
            r#"{ name = "duration", agg = "sum", field = "properties.duration" }"#,
            r#"{ name = "duration", agg = "sum", field = "user_id" }"#,
        ),
        &["page_views", "numeric field"],
    );
}

#[test]
fn quantiles_of_a_non_numeric_field() {
    assert_rejected(
        &broken(
            r#"{ name = "latency",  agg = "quantiles", field = "properties.latency_ms" }"#,
            r#"{ name = "latency",  agg = "quantiles", field = "event_id" }"#,
        ),
        &["page_views", "measures.latency", "numeric field"],
    );
}

#[test]
fn duplicate_measure_names() {
    assert_rejected(
        &broken(r#"name = "longest""#, r#"name = "duration""#),
        &["page_views", "`duration` is used twice"],
    );
}

#[test]
fn duplicate_view_names() {
    assert_rejected(
        &broken(r#"name = "events_by_type""#, r#"name = "page_views""#),
        &["page_views", "names must be unique"],
    );
}

#[test]
fn bad_granularity() {
    assert_rejected(
        &broken(r#"granularity = "1m""#, r#"granularity = "7m""#),
        &["7m", "divide a day"],
    );
    assert_rejected(
        &broken(r#"granularity = "1m""#, r#"granularity = "soon""#),
        &["soon", "1m"],
    );
}

#[test]
fn unknown_dimension_path() {
    assert_rejected(
        &broken(
            r#"dimensions = ["properties.page"]"#,
            r#"dimensions = ["page"]"#,
        ),
        &["page", "properties.<name>"],
    );
}

#[test]
fn duplicate_dimension() {
    assert_rejected(
        &broken(
            r#"dimensions = ["properties.page"]"#,
            r#"dimensions = ["properties.page", "properties.page"]"#,
        ),
        &["page_views", "listed twice"],
    );
}

#[test]
fn unknown_filter_field() {
    assert_rejected(
        &broken(
            r#"filter = { event_type = ["page_view"] }"#,
            r#"filter = { kind = ["page_view"] }"#,
        ),
        &["filter.kind"],
    );
}

#[test]
fn view_reads_an_unconfigured_topic() {
    assert_rejected(
        &broken(
            r#"topics = ["events"]
filter"#,
            r#"topics = ["clicks"]
filter"#,
        ),
        &["page_views", "clicks", "[kafka] topics"],
    );
}

#[test]
fn dedup_takes_only_event_id() {
    let (ok, text) = check(EXAMPLE);
    assert!(ok, "{text}");
    assert!(
        text.contains("view events_by_type: events=count, users=distinct, fastest=min by [event_type] every 1m, once per event_id and day"),
        "{text}"
    );
    assert_rejected(
        // The line itself, not the comments that quote it.
        &broken("\ndedup = \"event_id\"", "\ndedup = \"user_id\""),
        &[
            "events_by_type",
            "`dedup`",
            "user_id",
            r#"dedup = "event_id""#,
        ],
    );
    assert_rejected(
        &broken("dedup_window = 1000000", "dedup_window = 0"),
        &["speed.dedup_window", "more than 0"],
    );
}

#[test]
fn misspelled_key() {
    assert_rejected(
        &broken("flush_interval", "flush_intervl"),
        &["flush_intervl", "speed"],
    );
}

#[test]
fn bad_duration() {
    assert_rejected(
        &broken(r#"max_past = "30d""#, r#"max_past = "a month""#),
        &["events.max_past", "a month", "ms, s, m, h, d"],
    );
}

#[test]
fn bad_store_scheme() {
    assert_rejected(
        &broken(r#"url = "file://./tally-data""#, r#"url = "ftp://x""#),
        &["store.url", "s3://"],
    );
}

#[test]
fn bad_cron() {
    assert_rejected(
        &broken(r#"schedule = "0 0 2 * * *""#, r#"schedule = "0 2 * * *""#),
        &["batch.schedule", "6 fields"],
    );
}

#[test]
fn no_views() {
    let text = EXAMPLE.split("[[view]]").next().unwrap();
    assert_rejected(text, &["[[view]]"]);
}

#[test]
fn environment_overrides_are_validated_too() {
    let (ok, text) = check_with_env(EXAMPLE, &[("TALLY_REDIS__URL", "http://localhost")]);
    assert!(!ok, "{text}");
    assert!(text.contains("redis.url"), "{text}");
    // Other TALLY_* variables (the infra scripts' own) are not overrides.
    let (ok, text) = check_with_env(
        EXAMPLE,
        &[
            ("TALLY_KAFKA__BROKERS", "10.0.0.1:9093"),
            ("TALLY_CACHE", "/tmp/x"),
            ("TALLY_STATE", "/tmp/y"),
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("10.0.0.1:9093"), "{text}");
}

#[test]
fn missing_file_says_how_to_fix() {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["check", "--config", "/nonexistent/tally.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn every_role_refuses_a_missing_config_and_names_it() {
    let roles: [&[&str]; 9] = [
        &["run"],
        &["speed"],
        &["archive"],
        &["serve"],
        &["batch", "run"],
        &["batch", "schedule"],
        &["recompute", "--view", "v", "--from", "0", "--to", "1"],
        &["gen", "--count", "1"],
        &["demo"],
    ];
    for role in roles {
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(role)
            .args(["--config", "/nonexistent/tally.toml"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role:?}");
        assert!(
            stderr.contains("/nonexistent/tally.toml"),
            "{role:?}: {stderr}"
        );
    }
}

#[test]
fn accepts_the_compose_config() {
    let (ok, text) = check(include_str!("../infra/compose.tally.toml"));
    assert!(ok, "{text}");
    assert!(text.contains("s3://tally/data"), "{text}");
}

#[test]
fn the_redis_password_is_never_printed() {
    // Accepted: the summary shows the URL without the password.
    let toml = broken(
        r#"url = "redis://127.0.0.1:6379""#,
        r#"url = "redis://tally:s3cret-pw@127.0.0.1:6379""#,
    );
    let (ok, text) = check(&toml);
    assert!(ok, "{text}");
    assert!(text.contains("redis://tally:***@127.0.0.1:6379"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    // Rejected: the error names the field, still without the password.
    let toml = broken(
        r#"url = "redis://127.0.0.1:6379""#,
        r#"url = "http://tally:s3cret-pw@127.0.0.1:6379""#,
    );
    let (ok, text) = check(&toml);
    assert!(!ok, "{text}");
    assert!(text.contains("redis.url"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[test]
fn empty_or_short_tokens_are_refused_with_the_field_named() {
    for (field, value) in [
        ("admin_token", ""),
        ("read_token", "  "),
        ("read_token", "short"),
    ] {
        let toml = broken("[serve]\n", &format!("[serve]\n{field} = \"{value}\"\n"));
        assert_rejected(&toml, &[&format!("serve.{field}"), "openssl rand"]);
    }
    let ok = broken(
        "[serve]\n",
        "[serve]\nadmin_token = \"0123456789abcdef0123\"\n",
    );
    let (accepted, text) = check(&ok);
    assert!(accepted, "{text}");
    assert!(
        !text.contains("0123456789abcdef0123"),
        "token printed:\n{text}"
    );
}

#[test]
fn the_demo_config_passes_with_the_token_infra_demo_generates() {
    let demo = include_str!("../infra/demo.toml");
    let (ok, text) = check_with_env(
        demo,
        &[(
            "TALLY_SERVE__ADMIN_TOKEN",
            "3f1c0de9a8b7c6d5e4f30211aabbccdd",
        )],
    );
    assert!(ok, "{text}");
}

#[test]
fn kafka_security_mistakes_name_the_field() {
    let toml = broken(
        "[redis]\n",
        "[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"tally\"\n\n[redis]\n",
    );
    assert_rejected(&toml, &["kafka.security.sasl_password"]);
    // A SASL password never shows in what `tally check` prints.
    let toml = broken(
        "[redis]\n",
        "[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"tally\"\nsasl_password = \"pw-7781c\"\n\n[redis]\n",
    );
    let (ok, text) = check(&toml);
    assert!(ok, "{text}");
    assert!(!text.contains("pw-7781c"), "{text}");
}
