//! The CEL half of a CRD's validation, offline: the `x-kubernetes-validations` rules of an
//! OpenAPI schema, evaluated with the `cel` interpreter against an object, the way the API
//! server evaluates them: after the schema's `default`s are filled in, each rule at the node
//! that declares it, with `self` bound to the object's value there, and only where that value
//! is present. No cluster exists on our
//! machines, so this is how tests prove the CRD itself, not only the operator's copy of the
//! rules, refuses bad resources.
//!
//! Kubernetes' CEL library adds functions (`quantity`, `url`, `isSorted`, ...) that the `cel`
//! crate lacks; a rule using one fails to evaluate, and that is reported as an error rather
//! than as a pass.

use serde_json::Value;

/// The messages of the rules that `object` violates, in schema order; an error when a rule
/// does not compile or cannot be evaluated.
pub fn cel_violations(schema: &Value, object: &Value) -> Result<Vec<String>, String> {
    let mut object = object.clone();
    apply_defaults(schema, &mut object);
    let mut violations = Vec::new();
    walk(schema, &object, "self", &mut violations)?;
    Ok(violations)
}

/// Structural defaulting, as the API server does before validating: a missing property whose
/// schema has a `default` gets it, at every level.
fn apply_defaults(schema: &Value, object: &mut Value) {
    if let (Some(properties), Some(fields)) =
        (schema["properties"].as_object(), object.as_object_mut())
    {
        for (name, sub_schema) in properties {
            if let Some(default) = sub_schema.get("default")
                && !fields.contains_key(name)
            {
                fields.insert(name.clone(), default.clone());
            }
            if let Some(value) = fields.get_mut(name) {
                apply_defaults(sub_schema, value);
            }
        }
    }
    if let (Some(items), Some(elements)) = (schema.get("items"), object.as_array_mut()) {
        for element in elements {
            apply_defaults(items, element);
        }
    }
}

fn walk(
    schema: &Value,
    object: &Value,
    path: &str,
    violations: &mut Vec<String>,
) -> Result<(), String> {
    if object.is_null() {
        return Ok(());
    }
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let source = rule["rule"]
            .as_str()
            .ok_or_else(|| format!("{path}: a validation without a rule"))?;
        if !evaluate(source, object).map_err(|e| format!("{path}: {source:?}: {e}"))? {
            let message = rule["message"].as_str().unwrap_or(source);
            violations.push(format!("{path}: {message}"));
        }
    }
    if let (Some(properties), Some(fields)) = (schema["properties"].as_object(), object.as_object())
    {
        for (name, sub_schema) in properties {
            if let Some(value) = fields.get(name) {
                walk(sub_schema, value, &format!("{path}.{name}"), violations)?;
            }
        }
    }
    if let (Some(items), Some(elements)) = (schema.get("items"), object.as_array()) {
        for (i, element) in elements.iter().enumerate() {
            walk(items, element, &format!("{path}[{i}]"), violations)?;
        }
    }
    Ok(())
}

fn evaluate(source: &str, object: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(source).map_err(|e| e.to_string())?;
    let mut context = cel::Context::default();
    context
        .add_variable("self", object.clone())
        .map_err(|e| e.to_string())?;
    match program.execute(&context).map_err(|e| e.to_string())? {
        cel::Value::Bool(verdict) => Ok(verdict),
        other => Err(format!("evaluated to {other:?}, not a bool")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "x-kubernetes-validations": [
                        {"rule": "!(has(self.replicas) && has(self.autoscaling))",
                         "message": "not both"}
                    ],
                    "properties": {
                        "autoscaling": {
                            "type": "object",
                            "x-kubernetes-validations": [
                                {"rule": "self.min <= self.max", "message": "min above max"}
                            ]
                        },
                        "topics": {"type": "array", "items": {
                            "type": "string",
                            "x-kubernetes-validations": [{"rule": "size(self) > 0"}]
                        }}
                    }
                }
            }
        })
    }

    #[test]
    fn rules_apply_where_declared_and_only_to_present_values() {
        let ok = json!({"spec": {"autoscaling": {"min": 1, "max": 3}, "topics": ["a"]}});
        assert_eq!(
            cel_violations(&schema(), &ok).unwrap(),
            Vec::<String>::new()
        );
        assert!(
            cel_violations(&schema(), &json!({"spec": {}}))
                .unwrap()
                .is_empty()
        );
        let bad = json!({"spec": {"replicas": 2, "autoscaling": {"min": 4, "max": 3},
                                  "topics": ["a", ""]}});
        assert_eq!(
            cel_violations(&schema(), &bad).unwrap(),
            [
                "self.spec: not both",
                "self.spec.autoscaling: min above max",
                "self.spec.topics[1]: size(self) > 0"
            ]
        );
    }

    #[test]
    fn defaults_are_filled_in_before_the_rules_run() {
        let schema = json!({
            "properties": {"min": {"default": 5}, "max": {}},
            "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "m"}]
        });
        assert_eq!(
            cel_violations(&schema, &json!({"max": 3})).unwrap(),
            ["self: m"]
        );
        assert!(
            cel_violations(&schema, &json!({"max": 9}))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_rule_that_cannot_be_evaluated_is_an_error_not_a_pass() {
        let schema = json!({"x-kubernetes-validations": [{"rule": "self.min <= "}]});
        assert!(cel_violations(&schema, &json!({"min": 1})).is_err());
        let schema = json!({"x-kubernetes-validations": [{"rule": "self.min"}]});
        assert!(cel_violations(&schema, &json!({"min": 1})).is_err());
    }
}
