//! The document against the validators: for each constrained input, the schema in the document
//! (judged by the `jsonschema` crate, formats on: the engine the contract fuzzer validates with)
//! and the check the API runs accept and refuse the same values.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use super::*;
use crate::validate::{
    EMAIL_LABEL_MAX_LENGTH, EMAIL_LOCAL_MAX_LENGTH, EMAIL_MAX_LENGTH, EtagCondition, ID_MAX_LENGTH,
    NAME_MAX_LENGTH,
};

fn auth_on() -> AuthSettings {
    AuthSettings {
        hs256_secret: Some("secret".into()),
        rate_limit_per_second: 100,
        rate_limit_burst: 200,
        ..AuthSettings::default()
    }
}

fn doc() -> Value {
    document(&auth_on())
}

/// A validator for `#/components/schemas/<name>` of the document.
fn schema_of(doc: &Value, name: &str) -> jsonschema::Validator {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// Asserts that the document and the validator agree on every sample.
fn agree(name: &str, samples: &[Value], validator: impl Fn(&Value) -> bool) {
    let doc = doc();
    let schema = schema_of(&doc, name);
    let mut disagreements = Vec::new();
    for sample in samples {
        let (by_doc, by_api) = (schema.is_valid(sample), validator(sample));
        if by_doc != by_api {
            disagreements.push(format!("{sample}: document {by_doc}, API {by_api}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{name}: {} of {} samples disagree:\n{}",
        disagreements.len(),
        samples.len(),
        disagreements.join("\n")
    );
}

/// Random strings over an alphabet of the characters the rules are about.
fn random_strings(seed: u64, count: usize, max_len: usize, alphabet: &[char]) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let len = rng.random_range(0..=max_len);
            (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect()
        })
        .collect()
}

const TRICKY: &[char] = &[
    'a', 'Z', '0', '9', '_', '-', '.', '@', ' ', '\t', '\n', '\r', '\u{0}', '\u{1f}', '\u{7f}',
    '\u{85}', '\u{a0}', '\u{2000}', '\u{2028}', '\u{3000}', '\u{feff}', '\u{200b}', 'é', 'ß', '🦀',
    '"', '\\', '/', '+', '!', '#', '*', ',', '<', '>', '[', ']', '(', ')', 'W',
];

fn strings(values: impl IntoIterator<Item = String>) -> Vec<Value> {
    values.into_iter().map(Value::String).collect()
}

#[test]
fn the_document_uses_the_validators_patterns_and_limits() {
    let doc = doc();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["ProfileId"]["pattern"], *validate::ID_PATTERN);
    assert_eq!(schemas["ProfileId"]["maxLength"], ID_MAX_LENGTH);
    assert_eq!(schemas["ProfileName"]["pattern"], *validate::NAME_PATTERN);
    assert_eq!(schemas["ProfileName"]["maxLength"], NAME_MAX_LENGTH);
    assert_eq!(schemas["ProfileEmail"]["pattern"], *validate::EMAIL_PATTERN);
    assert_eq!(schemas["ProfileEmail"]["maxLength"], EMAIL_MAX_LENGTH);
    assert_eq!(schemas["ProfileEmail"]["format"], "email");
    assert_eq!(
        schemas["ProfileCountry"]["enum"],
        json!(*validate::COUNTRY_CODES)
    );
    assert_eq!(
        schemas["EtagCondition"]["pattern"],
        *validate::ETAG_CONDITION_PATTERN
    );
    let ops = &doc["paths"]["/v1/profiles/{id}"];
    for op in Op::ALL {
        let params = ops[op.method()]["parameters"].as_array().unwrap();
        let id = params.iter().find(|p| p["name"] == "id").unwrap();
        assert_eq!(id["in"], "path");
        assert_eq!(id["schema"]["$ref"], "#/components/schemas/ProfileId");
        let header = if op == Op::Get {
            "If-None-Match"
        } else {
            "If-Match"
        };
        let condition = params.iter().find(|p| p["name"] == header).unwrap();
        assert_eq!(condition["in"], "header");
        assert_eq!(
            condition["schema"]["$ref"],
            "#/components/schemas/EtagCondition"
        );
    }
    assert_eq!(
        ops["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ProfileInput"
    );
    for media in ["application/merge-patch+json", "application/json"] {
        assert_eq!(
            ops["patch"]["requestBody"]["content"][media]["schema"]["$ref"],
            "#/components/schemas/ProfilePatch"
        );
    }
}

#[test]
fn ids_the_document_allows_are_the_ids_the_api_accepts() {
    let mut samples = strings([
        String::new(),
        "a".repeat(ID_MAX_LENGTH),
        "a".repeat(ID_MAX_LENGTH + 1),
        "alice_01-X".into(),
        "a.b".into(),
        "a b".into(),
        "ä".into(),
        "a\n".into(),
        "\na".into(),
    ]);
    samples.extend(strings(random_strings(1, 2_000, ID_MAX_LENGTH + 2, TRICKY)));
    agree("ProfileId", &samples, |v| {
        validate::profile_id(v.as_str().unwrap()).is_ok()
    });
}

#[test]
fn names_the_document_allows_are_the_names_the_api_accepts() {
    let mut samples = strings([
        String::new(),
        " ".into(),
        "A".into(),
        "x".repeat(NAME_MAX_LENGTH),
        "x".repeat(NAME_MAX_LENGTH + 1),
        "🦀".repeat(NAME_MAX_LENGTH),
        "🦀".repeat(NAME_MAX_LENGTH + 1),
        "A\u{0}".into(),
        "Alice\n".into(),
        "\u{a0}\u{3000}\u{2028}".into(),
        "\u{feff}".into(),
        "\u{200b}".into(),
    ]);
    samples.extend(strings(random_strings(2, 3_000, 12, TRICKY)));
    samples.extend(strings(random_strings(3, 200, NAME_MAX_LENGTH + 5, TRICKY)));
    // Every character alone: a name of one character is valid iff the character is.
    samples.extend(strings(
        (0..=0x3100_u32)
            .chain([0xfeff, 0xfffe, 0xffff, 0x1_0000, 0x1_f980, 0x10_ffff])
            .filter_map(char::from_u32)
            .map(String::from),
    ));
    agree("ProfileName", &samples, |v| {
        validate::is_valid_name(v.as_str().unwrap())
    });
}

#[test]
fn emails_the_document_allows_are_the_emails_the_api_accepts() {
    let label = "b".repeat(EMAIL_LABEL_MAX_LENGTH);
    let local = "a".repeat(EMAIL_LOCAL_MAX_LENGTH);
    let long = format!("{}@{label}.{label}.{label}.", "a".repeat(58));
    let at_limit = format!("{long}{}", "c".repeat(EMAIL_MAX_LENGTH - long.len()));
    let mut samples = strings([
        "alice@example.com".into(),
        "a@b".into(),
        format!("{local}@b.pt"),
        format!("{local}a@b.pt"),
        format!("a@{label}.pt"),
        format!("a@{label}b.pt"),
        at_limit.clone(),
        format!("{at_limit}c"),
        "a.b+c!#$%&'*/=?^_`{|}~-@x-1.y".into(),
        "\"a b\"@c".into(),
        "a@[127.0.0.1]".into(),
        "Alice <a@b.c>".into(),
        "a@b.c\n".into(),
        "ä@b.c".into(),
        "a@ä.pt".into(),
        "a..b@c".into(),
        "a@-b".into(),
        "a@1.2".into(),
        "a@ab--c.pt".into(),
        "a@xn--bcher-kva.example".into(),
        "a@xn--abc.example".into(),
    ]);
    let alphabet = [
        'a', 'Z', '0', '-', '.', '@', '+', '_', '!', ' ', '"', '[', ']', '<', '>', 'é', '\n',
    ];
    samples.extend(strings(random_strings(4, 3_000, 14, &alphabet)));
    samples.extend(strings(
        random_strings(5, 3_000, 10, &['a', 'b', '-', '.'])
            .into_iter()
            .map(|s| format!("x@{s}")),
    ));
    agree("ProfileEmail", &samples, |v| {
        validate::is_valid_email(v.as_str().unwrap())
    });
}

#[test]
fn countries_the_document_allows_are_the_countries_the_api_accepts() {
    let mut samples = strings(validate::COUNTRY_CODES.iter().map(|c| (*c).to_owned()));
    for a in 'A'..='Z' {
        for b in ['A', 'Q', 'Z', 'a'] {
            samples.push(Value::String(format!("{a}{b}")));
        }
    }
    samples.extend(strings(["".into(), "PRT".into(), "pt".into(), "P".into()]));
    agree("ProfileCountry", &samples, |v| {
        validate::is_valid_country(v.as_str().unwrap())
    });
}

#[test]
fn etag_conditions_the_document_allows_are_the_ones_the_api_parses() {
    let mut samples = strings(
        [
            "*",
            " * ",
            "\"1\"",
            "W/\"1\"",
            "\"1\", W/\"2\"",
            "\"1\",\"2\"",
            "\"\"",
            "\"a-b\"",
            "",
            "1",
            "\"1",
            "W/1",
            "w/\"1\"",
            "\"1\",",
            "*,\"1\"",
            "\"a\"b\"",
            "\"1\" \"2\"",
            "\"1\"\t,\t\"2\"",
            ",",
            " , ,",
            ",\"1\",,W/\"2\",",
            ", *",
            "* ,",
        ]
        .map(String::from),
    );
    let alphabet = [
        '"', 'W', '/', '*', ',', ' ', '\t', '1', 'x', '\u{7f}', '\u{21}',
    ];
    samples.extend(strings(random_strings(6, 3_000, 10, &alphabet)));
    agree("EtagCondition", &samples, |v| {
        EtagCondition::parse(v.as_str().unwrap()).is_some()
    });
}

#[test]
fn bodies_the_document_allows_are_the_bodies_the_api_accepts() {
    let ok = json!({"name": "Alice", "email": "alice@example.com", "country": "PT"});
    let with = |field: &str, value: Value| {
        let mut body = ok.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = ok.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let samples = vec![
        ok.clone(),
        with("name", json!("x".repeat(NAME_MAX_LENGTH))),
        with("name", json!("x".repeat(NAME_MAX_LENGTH + 1))),
        with("name", json!("A\u{0}")),
        with("name", json!(5)),
        with("name", Value::Null),
        with("email", json!("nope")),
        with("country", json!("pt")),
        with("nickname", json!("x")),
        with("version", json!(3)),
        with("id", json!("alice")),
        with("updatedAt", json!("2026-01-01T00:00:00Z")),
        without("name"),
        without("email"),
        without("country"),
        json!({}),
    ];
    agree("ProfileInput", &samples, |v| {
        validate::profile_input(v).is_ok()
    });
    // A patch the document allows is one whose result is valid for any current profile; one it
    // refuses is refused for every current profile.
    let current = ok.clone();
    let patches = vec![
        json!({}),
        json!({"country": "ES"}),
        json!({"name": "x".repeat(NAME_MAX_LENGTH)}),
        json!({"name": "x".repeat(NAME_MAX_LENGTH + 1)}),
        json!({"name": null}),
        json!({"email": "a@b", "country": "DE", "name": "B"}),
        json!({"email": "a b@c"}),
        json!({"version": 9}),
        json!({"nickname": "x"}),
        json!({"nickname": null}),
    ];
    agree("ProfilePatch", &patches, |p| {
        validate::apply_merge_patch(&current, p).is_ok()
    });
}

#[test]
fn the_profiles_the_api_returns_match_the_documented_profile() {
    let profile = crate::model::Profile {
        id: "a".repeat(ID_MAX_LENGTH),
        name: "🦀".repeat(NAME_MAX_LENGTH),
        email: "alice@example.com".into(),
        country: "PT".into(),
        version: 1,
        updated_at: chrono::Utc::now(),
    };
    let doc = doc();
    let schema = schema_of(&doc, "Profile");
    let value = serde_json::to_value(&profile).unwrap();
    assert!(schema.is_valid(&value), "{value}");
    // Every field of the type is in the schema, and the other way round.
    let documented: Vec<&String> = doc["components"]["schemas"]["Profile"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let sent: Vec<&String> = value.as_object().unwrap().keys().collect();
    let (mut documented, mut sent) = (documented, sent);
    documented.sort();
    sent.sort();
    assert_eq!(documented, sent);
}

fn statuses(doc: &Value, op: Op) -> Vec<u16> {
    doc["paths"]["/v1/profiles/{id}"][op.method()]["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn every_status_an_operation_can_answer_is_documented_errors_as_problems() {
    let doc = doc();
    let expect: [(Op, &[u16]); 4] = [
        (Op::Get, &[200, 304, 400, 401, 404, 422, 429, 503]),
        (
            Op::Put,
            &[200, 201, 400, 401, 403, 412, 413, 415, 422, 429, 503],
        ),
        (
            Op::Patch,
            &[200, 400, 401, 403, 404, 412, 413, 415, 422, 429, 503],
        ),
        (Op::Delete, &[204, 400, 401, 403, 404, 412, 422, 429, 503]),
    ];
    for (op, expected) in expect {
        let mut got = statuses(&doc, op);
        got.sort_unstable();
        assert_eq!(got, expected, "{op:?}");
        let responses = &doc["paths"]["/v1/profiles/{id}"][op.method()]["responses"];
        for status in got.iter().filter(|s| **s >= 400) {
            let response = &responses[status.to_string()];
            assert_eq!(
                response["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{op:?} {status}"
            );
        }
        for status in [429, 503] {
            assert!(
                responses[status.to_string()]["headers"]["Retry-After"].is_object(),
                "{op:?} {status}"
            );
        }
    }
    // A DELETE of an invalid id is refused with 422 (issue 13): documented.
    assert!(statuses(&doc, Op::Delete).contains(&422));
}

#[test]
fn the_document_follows_the_auth_settings() {
    let on = document(&auth_on());
    let ops = &on["paths"]["/v1/profiles/{id}"];
    for op in Op::ALL {
        assert_eq!(
            ops[op.method()]["security"],
            json!([{"bearer": []}]),
            "{op:?}"
        );
    }
    assert_eq!(
        on["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let public = document(&AuthSettings {
        public_reads: true,
        ..auth_on()
    });
    let ops = &public["paths"]["/v1/profiles/{id}"];
    assert_eq!(ops["get"]["security"], json!([{"bearer": []}, {}]));
    assert_eq!(ops["put"]["security"], json!([{"bearer": []}]));

    let off = document(&AuthSettings {
        disabled: true,
        rate_limit_per_second: 0,
        ..AuthSettings::default()
    });
    let ops = &off["paths"]["/v1/profiles/{id}"];
    assert!(off["components"]["securitySchemes"].is_null());
    for op in Op::ALL {
        assert!(ops[op.method()]["security"].is_null(), "{op:?}");
        let got = statuses(&off, op);
        // A malformed Authorization header is still 401; nobody is forbidden or rate-limited.
        assert!(got.contains(&401) && !got.contains(&403) && !got.contains(&429));
    }
}

#[test]
fn the_links_name_operations_and_parameters_that_exist() {
    let doc = doc();
    let ops = doc["paths"]["/v1/profiles/{id}"].as_object().unwrap();
    let ids: Vec<&Value> = ops.values().map(|op| &op["operationId"]).collect();
    for op in ops.values() {
        for response in op["responses"].as_object().unwrap().values() {
            let Some(links) = response["links"].as_object() else {
                continue;
            };
            for link in links.values() {
                assert!(ids.contains(&&link["operationId"]), "{link}");
                let target = ops
                    .values()
                    .find(|o| o["operationId"] == link["operationId"])
                    .unwrap();
                for name in link["parameters"].as_object().unwrap().keys() {
                    let (location, name) = name.split_once('.').unwrap();
                    assert!(
                        target["parameters"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["in"] == location && p["name"] == name),
                        "{link}"
                    );
                }
            }
        }
    }
}
