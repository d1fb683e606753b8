//! Firecracker's own OpenAPI (Swagger 2.0) spec, loaded and used as a validator.
//!
//! The spec is vendored byte for byte from Firecracker v1.16.1 (Apache-2.0, see
//! `spec/LICENSE-firecracker`). [`Spec::validate`] implements the part of JSON Schema the spec
//! uses: `$ref`, `type` (object, string, integer, boolean, array), `required`, `properties`,
//! `additionalProperties`, `enum`, `minimum`/`maximum`, `format: int32`, `items`. Unknown object
//! fields are rejected unless the schema allows additional properties, because Firecracker's own
//! request types use `deny_unknown_fields`.

use std::fmt;

use serde_json::Value;

/// The vendored Firecracker v1.16.1 spec, as shipped by Firecracker.
pub const BUNDLED_SPEC_YAML: &str = include_str!("../spec/firecracker-v1.16.1.yaml");

/// The vendored transcript of a real Firecracker v1.16.1 answering real requests.
pub const BUNDLED_TRANSCRIPT_MD: &str = include_str!("../spec/api-transcript-v1.16.1.md");

/// One problem found while validating a value against a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where in the value, as a JSON-pointer-like path (`/drives/0/drive_id`; empty for the root).
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// An operation of the spec matched against a concrete request.
#[derive(Debug, Clone)]
pub struct MatchedOperation<'a> {
    /// The path template as the spec writes it (`/drives/{drive_id}`).
    pub template: &'a str,
    /// Upper-case HTTP method.
    pub method: String,
    /// Path parameters by name.
    pub params: Vec<(String, String)>,
    /// The body schema, when the operation takes a body.
    pub body_schema: Option<&'a Value>,
    /// Whether the spec marks the body as required.
    pub body_required: bool,
    /// The spec's `operationId`.
    pub operation_id: &'a str,
}

/// The loaded spec.
#[derive(Debug, Clone)]
pub struct Spec {
    doc: Value,
}

impl Spec {
    /// The vendored v1.16.1 spec.
    ///
    /// # Panics
    /// Never in practice: the vendored file is parsed by the crate's own tests.
    #[must_use]
    pub fn bundled() -> Self {
        Self::from_yaml(BUNDLED_SPEC_YAML).expect("vendored Firecracker spec parses")
    }

    /// Parses a spec from its YAML text.
    ///
    /// # Errors
    /// When the text is not YAML or lacks `paths`/`definitions`.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let doc: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if !doc.get("paths").is_some_and(Value::is_object)
            || !doc.get("definitions").is_some_and(Value::is_object)
        {
            return Err("spec has no paths or definitions".into());
        }
        Ok(Self { doc })
    }

    /// The spec's `info.version`.
    #[must_use]
    pub fn version(&self) -> &str {
        self.doc["info"]["version"].as_str().unwrap_or("")
    }

    /// Every (METHOD, path template) pair the spec defines, sorted.
    #[must_use]
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(paths) = self.doc["paths"].as_object() {
            for (path, ops) in paths {
                if let Some(ops) = ops.as_object() {
                    for method in ops.keys() {
                        out.push((method.to_ascii_uppercase(), path.clone()));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// The names of every definition.
    #[must_use]
    pub fn definition_names(&self) -> Vec<String> {
        self.doc["definitions"]
            .as_object()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A definition's schema by name.
    #[must_use]
    pub fn definition(&self, name: &str) -> Option<&Value> {
        self.doc["definitions"].get(name)
    }

    /// Finds the operation for a concrete method and path (`PUT`, `/drives/rootfs`).
    #[must_use]
    pub fn find_operation(&self, method: &str, path: &str) -> Option<MatchedOperation<'_>> {
        let path = path.split('?').next().unwrap_or(path);
        let want = method.to_ascii_lowercase();
        let paths = self.doc["paths"].as_object()?;
        for (template, ops) in paths {
            let Some(params) = match_template(template, path) else {
                continue;
            };
            let Some(op) = ops.get(&want) else {
                continue;
            };
            let body = op["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["in"] == "body"));
            return Some(MatchedOperation {
                template,
                method: method.to_ascii_uppercase(),
                params,
                body_schema: body.map(|b| &b["schema"]),
                body_required: body.is_some_and(|b| b["required"] == Value::Bool(true)),
                operation_id: op["operationId"].as_str().unwrap_or(""),
            });
        }
        None
    }

    /// Validates `value` against the named definition.
    #[must_use]
    pub fn validate_definition(&self, name: &str, value: &Value) -> Vec<Violation> {
        let schema = serde_json::json!({ "$ref": format!("#/definitions/{name}") });
        self.validate(&schema, value)
    }

    /// Validates `value` against `schema`, returning every violation.
    #[must_use]
    pub fn validate(&self, schema: &Value, value: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        self.check(schema, value, "", false, &mut out);
        out
    }

    /// Validates a request body the way Firecracker's deserializer accepts it: like
    /// [`Spec::validate`], except that `null` for an optional (not required) field counts as
    /// the field being absent, because Firecracker reads those fields as `Option`s.
    #[must_use]
    pub fn validate_body(&self, schema: &Value, value: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        self.check(schema, value, "", true, &mut out);
        out
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut current = schema;
        for _ in 0..16 {
            match current.get("$ref").and_then(Value::as_str) {
                Some(reference) => {
                    let name = reference.trim_start_matches("#/definitions/");
                    match self.doc["definitions"].get(name) {
                        Some(target) => current = target,
                        None => return current,
                    }
                }
                None => return current,
            }
        }
        current
    }

    fn check(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        nulls_absent: bool,
        out: &mut Vec<Violation>,
    ) {
        let schema = self.resolve(schema);
        let mut fail = |message: String| {
            out.push(Violation {
                at: at.to_string(),
                message,
            });
        };
        let ty = schema.get("type").and_then(Value::as_str);
        match ty {
            Some("object") | None if schema.get("properties").is_some() || ty.is_some() => {
                let Some(obj) = value.as_object() else {
                    fail(format!("expected an object, got {}", kind(value)));
                    return;
                };
                let empty = serde_json::Map::new();
                let props = schema
                    .get("properties")
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                if let Some(required) = schema.get("required").and_then(Value::as_array) {
                    for name in required.iter().filter_map(Value::as_str) {
                        if !obj.contains_key(name) {
                            fail(format!("missing required field `{name}`"));
                        }
                    }
                }
                let additional = schema.get("additionalProperties") == Some(&Value::Bool(true));
                let required = |name: &str| {
                    schema
                        .get("required")
                        .and_then(Value::as_array)
                        .is_some_and(|r| r.iter().any(|n| n.as_str() == Some(name)))
                };
                for (key, val) in obj {
                    let child_at = format!("{at}/{key}");
                    if nulls_absent && val.is_null() && !required(key) && props.contains_key(key) {
                        continue;
                    }
                    match props.get(key) {
                        Some(prop) => self.check(prop, val, &child_at, nulls_absent, out),
                        None if additional => {}
                        None => out.push(Violation {
                            at: child_at,
                            message: format!("unknown field `{key}`"),
                        }),
                    }
                }
            }
            Some("string") => {
                let Some(s) = value.as_str() else {
                    fail(format!("expected a string, got {}", kind(value)));
                    return;
                };
                check_enum(schema, value, &mut fail, s);
            }
            Some("integer") => {
                let n = match value {
                    Value::Number(n) if n.is_i64() || n.is_u64() => n,
                    _ => {
                        fail(format!("expected an integer, got {}", kind(value)));
                        return;
                    }
                };
                let as_f = n.as_f64().unwrap_or(0.0);
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                    && as_f < min
                {
                    fail(format!("{n} is below the minimum {min}"));
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                    && as_f > max
                {
                    fail(format!("{n} is above the maximum {max}"));
                }
                if schema.get("format").and_then(Value::as_str) == Some("int32")
                    && n.as_i64().is_none_or(|v| i32::try_from(v).is_err())
                {
                    fail(format!("{n} does not fit int32"));
                }
                check_enum(schema, value, &mut fail, &n.to_string());
            }
            Some("boolean") if !value.is_boolean() => {
                fail(format!("expected a boolean, got {}", kind(value)));
            }
            Some("boolean") => {}
            Some("array") => {
                let Some(items) = value.as_array() else {
                    fail(format!("expected an array, got {}", kind(value)));
                    return;
                };
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &format!("{at}/{i}"), nulls_absent, out);
                    }
                }
            }
            Some(other) => fail(format!("schema type `{other}` is not supported")),
            None => {}
        }
    }
}

fn check_enum(schema: &Value, value: &Value, fail: &mut impl FnMut(String), shown: &str) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        // YAML turns an enum member such as `2M` into a string but `None` into a string too;
        // compare as strings so both spellings of a member match.
        let matches = allowed.iter().any(|a| match (a, value) {
            (Value::String(a), Value::String(v)) => a == v,
            (a, v) => a == v,
        });
        if !matches {
            let names: Vec<String> = allowed
                .iter()
                .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string))
                .collect();
            fail(format!("`{shown}` is not one of [{}]", names.join(", ")));
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Matches `/drives/{drive_id}` against `/drives/rootfs`, returning the parameters.
fn match_template(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut params = Vec::new();
    for (ts, ps) in t.iter().zip(&p) {
        if let Some(name) = ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if ps.is_empty() {
                return None;
            }
            params.push((name.to_string(), (*ps).to_string()));
        } else if ts != ps {
            return None;
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bundled_spec_is_v1_16_1_with_every_path() {
        let spec = Spec::bundled();
        assert_eq!(spec.version(), "1.16.1");
        let ops = spec.operations();
        assert!(ops.contains(&("PUT".into(), "/snapshot/load".into())));
        assert!(ops.contains(&("PATCH".into(), "/balloon/hinting/start".into())));
        assert_eq!(ops.len(), 38, "{ops:?}");
    }

    #[test]
    fn finds_templated_operations() {
        let spec = Spec::bundled();
        let op = spec.find_operation("PUT", "/drives/rootfs").unwrap();
        assert_eq!(op.template, "/drives/{drive_id}");
        assert_eq!(op.params, vec![("drive_id".into(), "rootfs".into())]);
        assert!(op.body_required);
        assert!(spec.find_operation("DELETE", "/drives/rootfs").is_none());
        assert!(spec.find_operation("GET", "/no-such-endpoint").is_none());
        assert!(spec.find_operation("PUT", "/drives/").is_none());
    }

    #[test]
    fn validation_catches_unknown_missing_wrong_type_enum_and_range() {
        let spec = Spec::bundled();
        assert!(
            spec.validate_definition(
                "MachineConfiguration",
                &json!({"vcpu_count": 2, "mem_size_mib": 256, "huge_pages": "2M"})
            )
            .is_empty()
        );
        let v = spec.validate_definition(
            "MachineConfiguration",
            &json!({"vcpu_count": 33, "mem_sise_mib": 256, "smt": "no", "huge_pages": "1G"}),
        );
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains("above the maximum")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("missing required field `mem_size_mib`"))
        );
        assert!(
            text.iter()
                .any(|t| t.contains("unknown field `mem_sise_mib`"))
        );
        assert!(text.iter().any(|t| t.contains("/smt: expected a boolean")));
        assert!(
            text.iter()
                .any(|t| t.contains("/huge_pages: `1G` is not one of"))
        );
    }

    #[test]
    fn request_bodies_may_send_null_for_optional_fields_only() {
        let spec = Spec::bundled();
        let schema = json!({"$ref": "#/definitions/Drive"});
        let body = json!({"drive_id": "a", "is_root_device": false, "partuuid": null,
                          "rate_limiter": null});
        assert!(spec.validate_body(&schema, &body).is_empty());
        assert!(
            !spec.validate(&schema, &body).is_empty(),
            "strict validation keeps nulls"
        );
        let required_null = json!({"drive_id": null, "is_root_device": false});
        let v = spec.validate_body(&schema, &required_null);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].at, "/drive_id");
        let unknown_null = json!({"drive_id": "a", "is_root_device": false, "bogus": null});
        assert!(
            spec.validate_body(&schema, &unknown_null)
                .iter()
                .any(|x| x.message.contains("unknown field `bogus`"))
        );
    }

    #[test]
    fn nested_refs_and_arrays_are_checked() {
        let spec = Spec::bundled();
        let v = spec.validate_definition(
            "Drive",
            &json!({"drive_id": "a", "is_root_device": false,
                    "rate_limiter": {"bandwidth": {"size": -1}}}),
        );
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(
                &"/rate_limiter/bandwidth: missing required field `refill_time`".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("/rate_limiter/bandwidth/size: -1 is below"))
        );
        assert!(
            spec.validate_definition("MmdsContentsObject", &json!({"anything": {"goes": 1}}))
                .is_empty()
        );
    }
}
