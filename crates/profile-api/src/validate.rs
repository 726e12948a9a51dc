//! Pure checks of client input: ids, bodies (with the offending field named), merge patches and
//! ETag headers. No I/O here, so everything is unit-tested below.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::model::ProfileInput;
use crate::problem::{ApiError, FieldError};

/// Fields the server manages; a client may never set them.
pub(crate) const SERVER_FIELDS: [&str; 3] = ["id", "version", "updatedAt"];
/// The fields a client writes, all required in a profile.
pub(crate) const INPUT_FIELDS: [&str; 3] = ["name", "email", "country"];

// Every rule below is a constant or a regular expression that the checks in this module use and
// that `openapi.rs` copies into the document, so the two cannot disagree. The expressions keep
// to the syntax that Rust's `regex`, ECMA-262 (JSON Schema's `pattern`) and Python's `re` (the
// contract fuzzer's generator) read alike: anchors, classes with `\xHH`/`\uHHHH` escapes, and
// counted repetition.

/// Longest profile id, in characters (all ASCII).
pub(crate) const ID_MAX_LENGTH: usize = 64;
/// Longest display name, in Unicode scalar values (JSON Schema's `maxLength` counts the same).
pub(crate) const NAME_MAX_LENGTH: usize = 200;
/// Longest e-mail address (RFC 5321's path limit less the angle brackets).
pub(crate) const EMAIL_MAX_LENGTH: usize = 254;
/// Longest local part (before the `@`) of an e-mail address, RFC 5321.
pub(crate) const EMAIL_LOCAL_MAX_LENGTH: usize = 64;
/// Longest label of the domain of an e-mail address, RFC 1035.
pub(crate) const EMAIL_LABEL_MAX_LENGTH: usize = 63;

/// A profile id: 1-64 of `[A-Za-z0-9_-]`.
pub(crate) static ID_PATTERN: LazyLock<String> =
    LazyLock::new(|| format!("^[A-Za-z0-9_-]{{1,{ID_MAX_LENGTH}}}$"));

/// A display name: no control character (C0, DEL, C1: PostgreSQL cannot store NUL, and none
/// belongs in a name) and at least one character that is not white space. The classes are
/// generated from `char::is_control` and `char::is_whitespace`.
pub(crate) static NAME_PATTERN: LazyLock<String> = LazyLock::new(|| {
    let allowed = char_class(|c| !c.is_control());
    let visible = char_class(|c| !c.is_control() && !c.is_whitespace());
    format!("^{allowed}*{visible}{allowed}*$")
});

/// An e-mail address as this API accepts it: a dot-atom local part of ASCII `atext` (RFC 5322;
/// no quoted strings) and a host name of letter-digit-hyphen labels of at most 63 characters
/// (no address literals), none with `--` in its third and fourth place (reserved by RFC 5891,
/// section 4.2.3.1, for `xn--` A-labels, which are not accepted: their validity is a Punycode
/// decoding no pattern can state). [`EMAIL_LOCAL_MAX_LENGTH`] is checked apart; the document
/// says it with `format: email`, which implies it.
pub(crate) static EMAIL_PATTERN: LazyLock<String> = LazyLock::new(|| {
    let atext = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]";
    let (ld, ldh) = ("[A-Za-z0-9]", "[A-Za-z0-9-]");
    // Labels of 1, 2, 3, 4 and 5-63 characters: letter or digit at both ends, and characters
    // 3 and 4 not both hyphens.
    let middle = EMAIL_LABEL_MAX_LENGTH - 5;
    let label = format!(
        "{ld}(?:{ld}|{ldh}{ld}|{ldh}{ldh}{ld}|{ldh}(?:{ld}{ldh}|-{ld}){ldh}{{0,{middle}}}{ld})?"
    );
    format!("^{atext}+(?:\\.{atext}+)*@{label}(?:\\.{label})*$")
});

/// The country codes accepted: every ISO 3166-1 alpha-2 code, upper case, sorted.
pub(crate) static COUNTRY_CODES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    isocountry::CountryCode::as_array_alpha2()
        .iter()
        .map(isocountry::CountryCode::alpha2)
        .collect()
});

/// `If-Match` / `If-None-Match` (RFC 9110, section 13.1): `*`, or a comma-separated list
/// (`#entity-tag`, section 5.6.1: empty elements allowed, so an empty value is an empty list that
/// matches nothing) of entity tags, strong (`"3"`) or weak (`W/"3"`), with optional spaces or
/// tabs around the commas. Only visible ASCII: a header with other bytes is refused before this
/// is consulted.
pub(crate) static ETAG_CONDITION_PATTERN: LazyLock<String> = LazyLock::new(|| {
    let tag = r#"(?:W/)?"[\x21\x23-\x7E]*""#;
    format!(r"^[ \t]*(?:\*|(?:{tag})?(?:[ \t]*,[ \t]*(?:{tag})?)*)[ \t]*$")
});

/// An ETag this API sends: `"<version>"`.
pub(crate) const ETAG_PATTERN: &str = r#"^"[0-9]+"$"#;

fn compiled(pattern: &str) -> Regex {
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("the validation patterns are valid regular expressions")
}

static ID_RE: LazyLock<Regex> = LazyLock::new(|| compiled(&ID_PATTERN));
static NAME_RE: LazyLock<Regex> = LazyLock::new(|| compiled(&NAME_PATTERN));
static EMAIL_RE: LazyLock<Regex> = LazyLock::new(|| compiled(&EMAIL_PATTERN));
static ETAG_CONDITION_RE: LazyLock<Regex> = LazyLock::new(|| compiled(&ETAG_CONDITION_PATTERN));
static ETAG_TAG_RE: LazyLock<Regex> = LazyLock::new(|| compiled(r#"(W/)?"([\x21\x23-\x7E]*)""#));

/// A regular-expression class (`[...]`) of the characters for which `keep` holds, as ranges of
/// `\uHHHH` escapes. Every character the predicates here reject is in the Basic Multilingual
/// Plane, so the negated form stays within four-digit escapes and covers the rest of Unicode.
fn char_class(keep: impl Fn(char) -> bool) -> String {
    let mut out = String::from("[^");
    let mut start: Option<u32> = None;
    // Collect the rejected ranges; `[^...]` of them is the class.
    for code in 0..=0x1_0000_u32 {
        let rejected = code < 0x1_0000 && char::from_u32(code).is_some_and(|c| !keep(c));
        match (rejected, start) {
            (true, None) => start = Some(code),
            (false, Some(first)) => {
                let last = code - 1;
                if first == last {
                    out.push_str(&format!("\\u{first:04X}"));
                } else {
                    out.push_str(&format!("\\u{first:04X}-\\u{last:04X}"));
                }
                start = None;
            }
            _ => {}
        }
    }
    debug_assert!(
        (0x1_0000..=0x10_FFFF_u32)
            .filter_map(char::from_u32)
            .all(&keep),
        "a rejected character outside the BMP"
    );
    out.push(']');
    out
}

/// Checks a path id: 1-64 of `[A-Za-z0-9_-]` ([`ID_PATTERN`]).
pub(crate) fn profile_id(id: &str) -> Result<(), ApiError> {
    if ID_RE.is_match(id) {
        Ok(())
    } else {
        Err(ApiError::Validation(vec![FieldError::new(
            "id",
            format!("must be 1-{ID_MAX_LENGTH} characters of A-Z, a-z, 0-9, '_' or '-'"),
        )]))
    }
}

/// Whether `name` is a valid display name.
pub(crate) fn is_valid_name(name: &str) -> bool {
    name.chars().count() <= NAME_MAX_LENGTH && NAME_RE.is_match(name)
}

/// Whether `email` is a valid e-mail address as this API accepts it.
pub(crate) fn is_valid_email(email: &str) -> bool {
    email.len() <= EMAIL_MAX_LENGTH
        && EMAIL_RE.is_match(email)
        && email
            .split_once('@')
            .is_some_and(|(local, _)| local.len() <= EMAIL_LOCAL_MAX_LENGTH)
}

/// Whether `country` is an ISO 3166-1 alpha-2 code in upper case.
pub(crate) fn is_valid_country(country: &str) -> bool {
    COUNTRY_CODES.binary_search(&country).is_ok()
}

/// Parses JSON bytes; syntax errors are 400.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// What is wrong with a string `value` of writable field `field`, if anything.
fn invalid_text(field: &str, value: &str) -> Option<String> {
    match field {
        "name" if !is_valid_name(value) => Some(format!(
            "must be 1-{NAME_MAX_LENGTH} characters, not all white space, without control \
             characters"
        )),
        "email" if !is_valid_email(value) => Some(format!(
            "must be an e-mail address local@domain of at most {EMAIL_MAX_LENGTH} characters \
             (ASCII dot-atom local part of at most {EMAIL_LOCAL_MAX_LENGTH}, host name domain)"
        )),
        "country" if !is_valid_country(value) => {
            Some("must be an ISO 3166-1 alpha-2 code in upper case, e.g. PT".to_owned())
        }
        _ => None,
    }
}

/// A member of a body that names no writable field: server-managed or unknown.
fn not_writable(key: &str, verb: &str) -> Option<FieldError> {
    if SERVER_FIELDS.contains(&key) {
        Some(FieldError::new(
            key,
            format!("is managed by the server and cannot be {verb}"),
        ))
    } else if INPUT_FIELDS.contains(&key) {
        None
    } else {
        Some(FieldError::new(key, "unknown field"))
    }
}

/// Validates a full profile body, naming every bad field.
pub(crate) fn profile_input(value: &Value) -> Result<ProfileInput, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::MalformedJson(
            "the body must be a JSON object".to_owned(),
        ));
    };
    let mut errors: Vec<FieldError> = map.keys().filter_map(|k| not_writable(k, "set")).collect();
    let mut text = |field: &str| -> Option<String> {
        let problem = match map.get(field) {
            None | Some(Value::Null) => "is required".to_owned(),
            Some(Value::String(s)) => match invalid_text(field, s) {
                None => return Some(s.clone()),
                Some(problem) => problem,
            },
            Some(_) => "must be a string".to_owned(),
        };
        errors.push(FieldError::new(field, problem));
        None
    };
    let (name, email, country) = (text("name"), text("email"), text("country"));
    match (name, email, country) {
        (Some(name), Some(email), Some(country)) if errors.is_empty() => Ok(ProfileInput {
            name,
            email,
            country,
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// The members of a merge patch that no current profile could take, as 422 field errors:
/// server-managed and unknown fields (even with `null`, which would remove nothing: a patch
/// names only what a profile has), `null` for a writable field (each is required), and values
/// that are not valid for their field. Checked before the database is asked, so an invalid
/// patch is 422 whatever the state (not 404 or 412). A patch that passes leaves a valid
/// profile from any valid one.
pub(crate) fn patch_member_errors(patch: &serde_json::Map<String, Value>) -> Vec<FieldError> {
    patch
        .iter()
        .filter_map(|(key, value)| {
            if let Some(error) = not_writable(key, "patched") {
                return Some(error);
            }
            let problem = match value {
                Value::Null => "is required and cannot be removed".to_owned(),
                Value::String(s) => invalid_text(key, s)?,
                _ => "must be a string".to_owned(),
            };
            Some(FieldError::new(key, problem))
        })
        .collect()
}

/// Applies an RFC 7396 merge patch to the writable fields of `current` and validates the result.
pub(crate) fn apply_merge_patch(current: &Value, patch: &Value) -> Result<ProfileInput, ApiError> {
    let Value::Object(members) = patch else {
        return Err(ApiError::MalformedJson(
            "a merge patch must be a JSON object".to_owned(),
        ));
    };
    let refused = patch_member_errors(members);
    if !refused.is_empty() {
        return Err(ApiError::Validation(refused));
    }
    let mut doc = current.clone();
    json_patch::merge(&mut doc, patch);
    profile_input(&doc)
}

/// A parsed `If-Match` / `If-None-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EtagCondition {
    /// `*`: any current representation.
    Any,
    /// A list of entity tags naming versions (tags that are not `"<digits>"` never match and are
    /// dropped).
    Versions(Vec<Tag>),
}

/// One entity tag of a condition that names a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// The version its opaque part names.
    pub(crate) version: i64,
    /// `W/"…"`: a weak validator, which only the weak comparison accepts.
    pub(crate) weak: bool,
}

impl EtagCondition {
    /// Parses `*` or a comma-separated list of (possibly weak) entity tags
    /// ([`ETAG_CONDITION_PATTERN`]); `None` when the header does not have that syntax.
    pub(crate) fn parse(header: &str) -> Option<Self> {
        if !ETAG_CONDITION_RE.is_match(header) {
            return None;
        }
        if header.trim_matches([' ', '\t']) == "*" {
            return Some(Self::Any);
        }
        let tags = ETAG_TAG_RE
            .captures_iter(header)
            .filter_map(|tag| {
                Some(Tag {
                    version: version_of(tag.get(2)?.as_str())?,
                    weak: tag.get(1).is_some(),
                })
            })
            .collect();
        Some(Self::Versions(tags))
    }

    /// `If-Match`: whether a profile at `version` (None: absent) matches under the strong
    /// comparison (RFC 9110, section 13.1.1): a weak tag never matches, since a write must be
    /// based on exactly the representation it names.
    pub(crate) fn matches_strong(&self, version: Option<i64>) -> bool {
        self.matches(version, false)
    }

    /// `If-None-Match`: whether a profile at `version` (None: absent) matches under the weak
    /// comparison (RFC 9110, section 13.1.2): `W/"3"` and `"3"` both name version 3.
    pub(crate) fn matches_weak(&self, version: Option<i64>) -> bool {
        self.matches(version, true)
    }

    fn matches(&self, version: Option<i64>, weak_allowed: bool) -> bool {
        match (self, version) {
            (_, None) => false,
            (Self::Any, Some(_)) => true,
            (Self::Versions(tags), Some(v)) => tags
                .iter()
                .any(|tag| tag.version == v && (weak_allowed || !tag.weak)),
        }
    }
}

/// The version an entity tag's opaque part names, if it is one this API sends: decimal digits
/// without a sign or a leading zero (`"01"` is another tag than `"1"`).
fn version_of(opaque: &str) -> Option<i64> {
    let canonical = !opaque.is_empty()
        && opaque.bytes().all(|b| b.is_ascii_digit())
        && (opaque == "0" || !opaque.starts_with('0'));
    if canonical { opaque.parse().ok() } else { None }
}

/// The strong ETag of a version: `"<version>"`.
pub(crate) fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn ids_are_1_to_64_url_safe_characters() {
        assert!(profile_id("alice_01-x").is_ok());
        assert!(profile_id(&"a".repeat(64)).is_ok());
        assert!(profile_id("").is_err());
        assert!(profile_id(&"a".repeat(65)).is_err());
        assert!(profile_id("a.b").is_err());
        assert!(profile_id("ä").is_err());
    }

    #[test]
    fn a_valid_body_passes() {
        let input =
            profile_input(&json!({"name": "Alice", "email": "a@example.com", "country": "PT"}))
                .unwrap();
        assert_eq!(input.country, "PT");
    }

    #[test]
    fn each_bad_field_is_named() {
        let err =
            profile_input(&json!({"name": "", "email": "nope", "country": "XX"})).unwrap_err();
        assert_eq!(fields(err), ["name", "email", "country"]);
        let err = profile_input(&json!({"name": "A", "email": "a@b.c", "country": "pt"}));
        assert_eq!(fields(err.unwrap_err()), ["country"]);
        let err =
            profile_input(&json!({"name": "x".repeat(201), "email": "a@b.c", "country": "PT"}));
        assert_eq!(fields(err.unwrap_err()), ["name"]);
    }

    #[test]
    fn unknown_missing_mistyped_and_server_fields_are_named() {
        let err =
            profile_input(&json!({"name": 5, "email": "a@b.c", "nickname": "x"})).unwrap_err();
        let mut got = fields(err);
        got.sort();
        assert_eq!(got, ["country", "name", "nickname"]);
        let err =
            profile_input(&json!({"name": "A", "email": "a@b.c", "country": "PT", "version": 3}));
        assert_eq!(fields(err.unwrap_err()), ["version"]);
        assert!(matches!(
            profile_input(&json!([1])),
            Err(ApiError::MalformedJson(_))
        ));
    }

    #[test]
    fn malformed_json_is_400() {
        assert!(matches!(
            parse_json(b"{\"name\":"),
            Err(ApiError::MalformedJson(_))
        ));
    }

    #[test]
    fn merge_patch_changes_removes_and_refuses_server_fields() {
        let current = json!({"name": "Alice", "email": "a@example.com", "country": "PT"});
        let out = apply_merge_patch(&current, &json!({"country": "ES"})).unwrap();
        assert_eq!((out.name.as_str(), out.country.as_str()), ("Alice", "ES"));
        let err = apply_merge_patch(&current, &json!({"name": null})).unwrap_err();
        assert_eq!(fields(err), ["name"]);
        let err = apply_merge_patch(&current, &json!({"version": 9})).unwrap_err();
        assert_eq!(fields(err), ["version"]);
        let err = apply_merge_patch(&current, &json!({"updatedAt": "x", "id": "b"})).unwrap_err();
        assert_eq!(fields(err).len(), 2);
        let err = apply_merge_patch(&current, &json!({"bogus": 1})).unwrap_err();
        assert_eq!(fields(err), ["bogus"]);
    }

    #[test]
    fn patch_members_no_profile_could_take_are_named_before_any_state_is_read() {
        let members = |v: Value| patch_member_errors(v.as_object().unwrap());
        assert!(members(json!({})).is_empty());
        assert!(members(json!({"name": "B", "email": "b@c.d", "country": "DE"})).is_empty());
        let named = |v: Value| -> Vec<String> { members(v).into_iter().map(|e| e.field).collect() };
        assert_eq!(named(json!({"name": null})), ["name"]);
        assert_eq!(named(json!({"email": -1})), ["email"]);
        assert_eq!(named(json!({"country": "pt", "name": "ok"})), ["country"]);
        assert_eq!(named(json!({"nickname": null})), ["nickname"]);
        assert_eq!(named(json!({"version": 2})), ["version"]);
    }

    #[test]
    fn etag_headers_parse_strong_weak_lists_and_star() {
        let parse = |h: &str| EtagCondition::parse(h).unwrap();
        let strong = |version| Tag {
            version,
            weak: false,
        };
        let versions =
            |tags: &[i64]| EtagCondition::Versions(tags.iter().map(|&v| strong(v)).collect());
        assert_eq!(parse("\"3\""), versions(&[3]));
        assert_eq!(
            parse("W/\"1\", \"2\" ,\"x\""),
            EtagCondition::Versions(vec![
                Tag {
                    version: 1,
                    weak: true
                },
                strong(2)
            ])
        );
        assert_eq!(parse(" * "), EtagCondition::Any);
        assert_eq!(parse("\"\""), versions(&[]));
        // Empty list elements are allowed (RFC 9110, section 5.6.1), an empty list matches nothing.
        assert_eq!(parse(""), versions(&[]));
        assert_eq!(parse(" , "), versions(&[]));
        assert_eq!(parse(",\"3\",,\"4\","), versions(&[3, 4]));
        for (header, version, strong_match, weak_match) in [
            ("", Some(1), false, false),
            ("\"3\"", Some(3), true, true),
            ("\"3\"", Some(4), false, false),
            ("*", None, false, false),
            ("*", Some(2), true, true),
            // A weak tag: the same version for If-None-Match, never for If-Match.
            ("W/\"3\"", Some(3), false, true),
            ("W/\"3\", \"3\"", Some(3), true, true),
            ("W/\"3\"", None, false, false),
            // Another tag than "1", whatever number it spells.
            ("\"01\"", Some(1), false, false),
            ("\"+1\"", Some(1), false, false),
        ] {
            let condition = parse(header);
            assert_eq!(
                condition.matches_strong(version),
                strong_match,
                "{header:?} strong"
            );
            assert_eq!(
                condition.matches_weak(version),
                weak_match,
                "{header:?} weak"
            );
        }
        assert_eq!(etag(7), "\"7\"");
    }

    #[test]
    fn malformed_etag_headers_are_refused() {
        for header in [
            "3",
            "junk",
            "\"3\",junk",
            "\"3",
            "3\"",
            "W/3",
            "w/\"3\"",
            "\"a\"b\"",
            "*, \"3\"",
            "**",
            "\"3\" \"4\"",
            "\"\u{7f}\"",
            ", *",
        ] {
            assert_eq!(EtagCondition::parse(header), None, "{header:?}");
        }
    }

    #[test]
    fn names_have_no_control_characters_and_something_visible() {
        assert!(is_valid_name("Alice"));
        assert!(is_valid_name(" Ålice Ünïcødé 🦀 "));
        assert!(is_valid_name(&"é".repeat(NAME_MAX_LENGTH)));
        assert!(!is_valid_name(&"é".repeat(NAME_MAX_LENGTH + 1)));
        for bad in [
            "",
            " ",
            "\u{a0}\u{3000}",
            "A\u{0}",
            "A\nB",
            "\tA",
            "A\u{7f}",
            "A\u{85}",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn emails_are_dot_atoms_at_host_names_within_the_rfc_limits() {
        let label = "b".repeat(EMAIL_LABEL_MAX_LENGTH);
        assert!(is_valid_email("alice@example.com"));
        assert!(is_valid_email("a.b+c!#$%&'*/=?^_`{|}~-@x-1.y"));
        assert!(is_valid_email("a@b"));
        assert!(is_valid_email("a@a--b.pt") && is_valid_email("a@abc--d.pt"));
        assert!(is_valid_email(&format!("{}@b.pt", "a".repeat(64))));
        assert!(!is_valid_email(&format!("{}@b.pt", "a".repeat(65))));
        assert!(is_valid_email(&format!("a@{label}.pt")));
        assert!(!is_valid_email(&format!("a@{label}b.pt")));
        let long = format!("{}@{label}.{label}.{label}.", "a".repeat(58));
        let at_limit = format!("{long}{}", "c".repeat(EMAIL_MAX_LENGTH - long.len()));
        assert_eq!(at_limit.len(), EMAIL_MAX_LENGTH);
        assert!(is_valid_email(&at_limit));
        assert!(!is_valid_email(&format!("{at_limit}c")));
        for bad in [
            "",
            "a",
            "@b",
            "a@",
            "a@b.",
            "a..b@c",
            ".a@b",
            "a.@b",
            "a@-b",
            "a@b-",
            "a@b_c",
            "\"a b\"@c",
            "a@[127.0.0.1]",
            "Alice <a@b.c>",
            "ä@b.c",
            "a@b.c\n",
            "a b@c",
            "a@ab--c.pt",
            "a@xn--bcher-kva.example",
        ] {
            assert!(!is_valid_email(bad), "{bad:?}");
        }
    }

    #[test]
    fn countries_are_the_iso_alpha2_codes_in_upper_case() {
        assert_eq!(COUNTRY_CODES.len(), 249);
        assert!(COUNTRY_CODES.windows(2).all(|w| w[0] < w[1]), "sorted");
        for code in COUNTRY_CODES.iter() {
            assert!(is_valid_country(code));
            assert!(isocountry::CountryCode::for_alpha2(code).is_ok());
        }
        for bad in ["pt", "Pt", "XX", "PRT", "", "P"] {
            assert!(!is_valid_country(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_patterns_compile_in_every_engine_we_rely_on_rust_here() {
        for pattern in [
            &*ID_PATTERN,
            &*NAME_PATTERN,
            &*EMAIL_PATTERN,
            &*ETAG_CONDITION_PATTERN,
            ETAG_PATTERN,
        ] {
            assert!(Regex::new(pattern).is_ok(), "{pattern}");
            // Only the escapes all three engines read the same way.
            assert!(
                !pattern.contains("\\s") && !pattern.contains("\\d") && !pattern.contains("\\w")
            );
            assert!(!pattern.contains("\\u{"), "{pattern}");
        }
    }
}
