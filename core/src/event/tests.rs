//! Decoding as a whole: each reason has its rejection, and the fast path
//! never changes a verdict (a differential test against the general parser
//! over generated, partly damaged records).

use std::borrow::Cow;

use super::*;

const KTS: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

fn ok(json: &str) -> Event<'_> {
    decode(json.as_bytes(), KTS, &Limits::default()).expect("valid event")
}

fn rejected(json: &[u8]) -> Reject {
    decode(json, KTS, &Limits::default()).expect_err("rejected")
}

#[test]
fn decodes_the_design_example_with_rfc3339() {
    let e = ok(
        r#"{"event_id":"evt_123","event_type":"page_view","timestamp":"2024-01-01T00:00:00Z",
        "user_id":"user_456","properties":{"page":"/home","duration":30}}"#,
    );
    assert_eq!(e.event_id, "evt_123");
    assert_eq!(e.event_type, "page_view");
    assert_eq!(e.time_ms, KTS);
    assert_eq!(e.user_id.as_deref(), Some("user_456"));
    assert_eq!(e.property("page"), Some(&Scalar::Str("/home".into())));
    assert_eq!(e.property("duration"), Some(&Scalar::Int(30)));
    assert!(
        matches!(e.event_id, Cow::Borrowed(_)),
        "no copy for plain strings"
    );
}

#[test]
fn floats_beyond_the_sum_range_are_rejected_and_big_integers_are_not() {
    let with = |v: &str| {
        format!(
            r#"{{"event_id":"e","event_type":"t","timestamp":{KTS},"properties":{{"bytes":{v}}}}}"#
        )
    };
    assert_eq!(
        ok(&with("6000000000000000000")).property("bytes"),
        Some(&Scalar::Int(6_000_000_000_000_000_000))
    );
    assert_eq!(
        ok(&with("1e300")).property("bytes"),
        Some(&Scalar::Float(1e300))
    );
    // (Beyond f64's range, 2e400, is not JSON a reader can take: `not_json`.)
    for v in ["1e301", "-1.5e308", "1.0000001e300"] {
        let r = rejected(with(v).as_bytes());
        assert_eq!(r.code(), "number_out_of_range", "{v}: {r}");
        assert!(r.to_string().contains("`bytes`"), "{r}");
    }
}

#[test]
fn epoch_millis_and_rfc3339_with_offset_agree() {
    let a = ok(r#"{"event_id":"a","event_type":"t","timestamp":1704067200123}"#);
    let b = ok(r#"{"event_id":"a","event_type":"t","timestamp":"2024-01-01T01:00:00.123+01:00"}"#);
    assert_eq!(a.time_ms, 1_704_067_200_123);
    assert_eq!(a.time_ms, b.time_ms);
    assert_eq!(a.user_id, None);
    assert!(a.properties.is_empty());
}

#[test]
fn escaped_strings_are_unescaped() {
    let e = ok(
        r#"{"event_id":"a\"b","event_type":"t","timestamp":1704067200000,"properties":{"p\u00e9":"x\ny"}}"#,
    );
    assert_eq!(e.event_id, "a\"b");
    assert_eq!(e.properties[0], ("pé".into(), Scalar::Str("x\ny".into())));
}

#[test]
fn unknown_fields_are_ignored() {
    let e = ok(
        r#"{"extra":{"deep":[1,2,{"x":null}]},"event_id":"a","event_type":"t","timestamp":1704067200000}"#,
    );
    assert_eq!(e.event_id, "a");
}

#[test]
fn each_reason_has_its_own_rejection() {
    let cases: Vec<(&[u8], &str)> = vec![
        (b"", "empty"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"{\"event_id\":", "not_json"),
        (b"{\"event_id\":\"a\"} trailing", "not_json"),
        (b"[1,2]", "not_object"),
        (b"\"just a string\"", "not_object"),
        (br#"{"event_type":"t","timestamp":1704067200000}"#, "missing_field"),
        (br#"{"event_id":"a","event_type":"t"}"#, "missing_field"),
        (br#"{"event_id":7,"event_type":"t","timestamp":1704067200000}"#, "wrong_type"),
        (br#"{"event_id":"a","event_type":"t","timestamp":true}"#, "wrong_type"),
        (br#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"properties":[1]}"#, "wrong_type"),
        (br#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"user_id":{"x":1}}"#, "wrong_type"),
        (br#"{"event_id":"","event_type":"t","timestamp":1704067200000}"#, "empty_field"),
        (br#"{"event_id":"a","event_id":"b","event_type":"t","timestamp":1704067200000}"#, "duplicate_field"),
        (br#"{"event_id":"a","event_type":"t","timestamp":"yesterday"}"#, "bad_timestamp"),
        (br#"{"event_id":"a","event_type":"t","timestamp":"2024-13-01T00:00:00Z"}"#, "bad_timestamp"),
        (br#"{"event_id":"a","event_type":"t","timestamp":0}"#, "timestamp_out_of_range"),
        (br#"{"event_id":"a","event_type":"t","timestamp":"2030-01-01T00:00:00Z"}"#, "timestamp_out_of_range"),
        (br#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"properties":{"p":{"x":1}}}"#, "property_not_scalar"),
    ];
    for (input, code) in cases {
        let r = rejected(input);
        assert_eq!(
            r.code(),
            code,
            "{:?} -> {r}",
            String::from_utf8_lossy(input)
        );
    }
    let big = format!(
        r#"{{"event_id":"a","event_type":"t","timestamp":1704067200000,"properties":{{"p":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    assert_eq!(rejected(big.as_bytes()).code(), "too_large");
}

#[test]
fn every_code_is_listed() {
    for code in Reject::CODES {
        assert!(!code.is_empty());
    }
    let mut codes = Reject::CODES.to_vec();
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), Reject::CODES.len());
}

#[test]
fn range_is_relative_to_the_kafka_timestamp() {
    let limits = Limits {
        max_past_ms: 1000,
        max_future_ms: 10,
        ..Limits::default()
    };
    let rec = br#"{"event_id":"a","event_type":"t","timestamp":1704067200000}"#;
    assert!(decode(rec, KTS + 1000, &limits).is_ok());
    assert!(decode(rec, KTS + 1001, &limits).is_err());
    assert!(decode(rec, KTS - 10, &limits).is_ok());
    assert!(decode(rec, KTS - 11, &limits).is_err());
}

mod fast_path {
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            r#""plain""#,
            r#""""#,
            r#""with \"escape\"""#,
            r#""tab\there""#,
            r#""é ü""#,
            "0",
            "7",
            "30",
            "01",
            "-5",
            "-0",
            "1.5",
            "1.",
            ".5",
            "2e3",
            "2E-3",
            "1e400",
            "123456789012345678",
            "1234567890123456789",
            "18446744073709551616",
            "1704067200000",
            r#""2024-01-01T00:00:00Z""#,
            r#""2024-13-01T00:00:00Z""#,
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "[]",
            "[1,2]",
            "{}",
            r#"{"a":1}"#,
            r#"{"page":"/a","n":1}"#,
            r#"{"p":{"x":1}}"#,
            r#"{"p":[1]}"#,
            r#"{"p":1.25,"q":null}"#,
        ])
        .prop_map(str::to_owned)
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "event_id",
            "event_type",
            "timestamp",
            "user_id",
            "properties",
            "extra",
            r"event\u005fid",
            "",
        ])
        .prop_map(|k| format!("\"{k}\""))
    }

    fn ws() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "", "", " ", "\n\t", "\r "]).prop_map(str::to_owned)
    }

    /// A valid event's members, each possibly replaced by a random key or
    /// value, plus random extra members, shuffled, then possibly damaged.
    fn record() -> impl Strategy<Value = Vec<u8>> {
        let valid = vec![
            (r#""event_id""#, r#""evt_1""#),
            (r#""event_type""#, r#""page_view""#),
            (r#""timestamp""#, "1704067200000"),
            (r#""user_id""#, r#""user_9""#),
            (
                r#""properties""#,
                r#"{"page":"/a","n":30,"r":0.5,"b":true,"z":null}"#,
            ),
        ];
        let members = prop::collection::vec((0..8u8, key(), token(), ws(), ws()), valid.len())
            .prop_map(move |choices| {
                choices
                    .into_iter()
                    .zip(&valid)
                    .filter_map(|((roll, k, v, a, b), (vk, vv))| match roll {
                        0 => None,
                        1 => Some(format!("{a}{k}{b}:{vv}")),
                        2 => Some(format!("{a}{vk}:{b}{v}")),
                        _ => Some(format!("{a}{vk}{b}:{vv}")),
                    })
                    .collect::<Vec<_>>()
            });
        let extra = prop::collection::vec(
            (ws(), key(), token()).prop_map(|(a, k, v)| format!("{a}{k}:{v}")),
            0..2,
        );
        let object = (members, extra, ws(), ws())
            .prop_flat_map(|(mut m, extra, a, b)| {
                m.extend(extra);
                (Just(m).prop_shuffle(), Just(a), Just(b))
            })
            .prop_map(|(members, a, b)| format!("{a}{{{}}}{b}", members.join(",")));
        (
            object,
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..2),
        )
            .prop_map(|(text, damage)| {
                let mut bytes = text.into_bytes();
                for (at, byte, how) in damage {
                    if bytes.is_empty() {
                        break;
                    }
                    let i = at.index(bytes.len());
                    match how {
                        0 => {
                            bytes.remove(i);
                        }
                        1 => bytes.insert(i, byte),
                        _ => bytes[i] = b"{}[],:\"0-.e \\"[byte as usize % 12],
                    }
                }
                bytes
            })
    }

    fn general(bytes: &[u8]) -> Result<Event<'_>, Reject> {
        let text = std::str::from_utf8(bytes).map_err(|_| Reject::NotUtf8)?;
        decode_general(text, KTS, &Limits::default())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// The fast path never changes a verdict: same event, same reason.
        #[test]
        fn same_verdict_as_the_general_parser(rec in record()) {
            prop_assume!(!rec.is_empty());
            prop_assert_eq!(decode(&rec, KTS, &Limits::default()), general(&rec));
        }
    }

    /// The differential test above is only worth something if the
    /// generated records exercise both paths and both verdicts.
    #[test]
    fn the_generator_covers_both_paths() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = record();
        let (mut fast_ok, mut fast_rejected, mut declined) = (0, 0, 0);
        for _ in 0..5_000 {
            let rec = strategy.new_tree(&mut runner).unwrap().current();
            match std::str::from_utf8(&rec).ok().and_then(fast::scan) {
                Some(raw) => match raw.validate(KTS, &Limits::default()) {
                    Ok(_) => fast_ok += 1,
                    Err(_) => fast_rejected += 1,
                },
                None => declined += 1,
            }
        }
        assert!(
            fast_ok > 100 && fast_rejected > 200 && declined > 1000,
            "fast ok {fast_ok}, fast rejected {fast_rejected}, declined {declined}"
        );
    }

    #[test]
    fn the_common_shape_takes_the_fast_path_and_borrows() {
        let rec = r#"{"event_id":"evt_1","event_type":"page_view","timestamp":1704067200000,"user_id":"u","properties":{"page":"/p","duration":30,"ratio":0.25,"ok":true,"none":null}}"#;
        let raw = fast::scan(rec).expect("fast path");
        let e = raw.validate(KTS, &Limits::default()).unwrap();
        assert_eq!(e, general(rec.as_bytes()).unwrap());
        assert!(matches!(e.event_id, Cow::Borrowed(_)));
        assert_eq!(e.property("ratio"), Some(&Scalar::Float(0.25)));
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        for rec in [
            r#"{"event_id":"a\"b"}"#,
            r#"{"event_id":"a","event_id":"b"}"#,
            r#"{"x":[1]}"#,
            r#"{"x":-1}"#,
            r#"{"x":01}"#,
            r#"{"x":1234567890123456789}"#,
            r#"{"properties":null}"#,
            r#"{"a":1} x"#,
            r#"[]"#,
        ] {
            assert!(fast::scan(rec).is_none(), "{rec}");
        }
    }
}

#[test]
fn numeric_user_ids_keep_their_text() {
    let e = ok(r#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"user_id":42}"#);
    assert_eq!(e.user_id.as_deref(), Some("42"));
}
