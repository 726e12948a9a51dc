//! Pure checks of client input: ids, bodies (with the offending field named), merge patches and
//! ETag headers. No I/O here, so everything is unit-tested below.

use serde_json::Value;

use crate::model::ProfileInput;
use crate::problem::{ApiError, FieldError};

/// Fields the server manages; a client may never set them.
const SERVER_FIELDS: [&str; 3] = ["id", "version", "updatedAt"];
const INPUT_FIELDS: [&str; 3] = ["name", "email", "country"];

/// Checks a path id: 1-64 of `[A-Za-z0-9_-]`.
pub(crate) fn profile_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Validation(vec![FieldError::new(
            "id",
            "must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
        )]))
    }
}

/// Parses JSON bytes; syntax errors are 400.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// Validates a full profile body, naming every bad field.
pub(crate) fn profile_input(value: &Value) -> Result<ProfileInput, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::MalformedJson(
            "the body must be a JSON object".to_owned(),
        ));
    };
    let mut errors = Vec::new();
    for key in map.keys() {
        if SERVER_FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(
                key,
                "is managed by the server and cannot be set",
            ));
        } else if !INPUT_FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(key, "unknown field"));
        }
    }
    let mut text = |field: &str| -> Option<String> {
        match map.get(field) {
            None | Some(Value::Null) => {
                errors.push(FieldError::new(field, "is required"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(FieldError::new(field, "must be a string"));
                None
            }
        }
    };
    let (name, email, country) = (text("name"), text("email"), text("country"));
    if let Some(name) = &name {
        let chars = name.chars().count();
        if chars == 0 || chars > 200 || name.trim().is_empty() {
            errors.push(FieldError::new("name", "must be 1-200 characters"));
        }
    }
    if let Some(email) = &email
        && !email_address::EmailAddress::is_valid(email)
    {
        errors.push(FieldError::new("email", "must be a valid e-mail address"));
    }
    if let Some(country) = &country
        && !(country.len() == 2
            && country.bytes().all(|b| b.is_ascii_uppercase())
            && isocountry::CountryCode::for_alpha2(country).is_ok())
    {
        errors.push(FieldError::new(
            "country",
            "must be an ISO 3166-1 alpha-2 code in upper case, e.g. PT",
        ));
    }
    match (name, email, country) {
        (Some(name), Some(email), Some(country)) if errors.is_empty() => Ok(ProfileInput {
            name,
            email,
            country,
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// Applies an RFC 7396 merge patch to the writable fields of `current` and validates the result.
pub(crate) fn apply_merge_patch(current: &Value, patch: &Value) -> Result<ProfileInput, ApiError> {
    let Value::Object(members) = patch else {
        return Err(ApiError::MalformedJson(
            "a merge patch must be a JSON object".to_owned(),
        ));
    };
    let server: Vec<FieldError> = members
        .keys()
        .filter(|k| SERVER_FIELDS.contains(&k.as_str()))
        .map(|k| FieldError::new(k, "is managed by the server and cannot be patched"))
        .collect();
    if !server.is_empty() {
        return Err(ApiError::Validation(server));
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
    /// A list of versions (entity tags that are not `"<digits>"` never match and are dropped).
    Versions(Vec<i64>),
}

impl EtagCondition {
    /// Parses `*` or a comma-separated list of (possibly weak) entity tags.
    pub(crate) fn parse(header: &str) -> Self {
        let header = header.trim();
        if header == "*" {
            return Self::Any;
        }
        let versions = header
            .split(',')
            .filter_map(|tag| {
                let tag = tag.trim();
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
            })
            .collect();
        Self::Versions(versions)
    }

    /// Whether a profile at `version` (None: absent) matches.
    pub(crate) fn matches(&self, version: Option<i64>) -> bool {
        match (self, version) {
            (_, None) => false,
            (Self::Any, Some(_)) => true,
            (Self::Versions(list), Some(v)) => list.contains(&v),
        }
    }
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
    fn etag_headers_parse_strong_weak_lists_and_star() {
        assert_eq!(
            EtagCondition::parse("\"3\""),
            EtagCondition::Versions(vec![3])
        );
        assert_eq!(
            EtagCondition::parse("W/\"1\", \"2\" ,junk"),
            EtagCondition::Versions(vec![1, 2])
        );
        assert_eq!(EtagCondition::parse(" * "), EtagCondition::Any);
        assert!(EtagCondition::parse("\"3\"").matches(Some(3)));
        assert!(!EtagCondition::parse("\"3\"").matches(Some(4)));
        assert!(!EtagCondition::parse("*").matches(None));
        assert!(!EtagCondition::parse("3").matches(Some(3)));
        assert_eq!(etag(7), "\"7\"");
    }
}
