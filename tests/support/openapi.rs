//! Checks HTTP answers against an OpenAPI 3.0 document (docs/api.yaml):
//! the status is documented for the operation, the content type is one the
//! response names, and a JSON body validates against its schema.
//!
//! The schema validator is the subset of OpenAPI 3.0 schemas the document
//! uses: `type`, `nullable`, `properties`, `required`,
//! `additionalProperties` (false or a schema), `items`, `enum`, `$ref`,
//! `allOf`/`oneOf`/`anyOf`, `minimum`/`maximum`, `minItems`, `format`
//! (`int32`, `int64`, `uuid`, `date-time`; `double` and `float` say
//! nothing). Any other keyword is refused when the document is loaded, so
//! the document cannot say something this file would silently ignore.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

/// What a validating keyword may be; everything else in a schema must be
/// an annotation (below) or an `x-` extension.
const KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "nullable",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "allOf",
    "oneOf",
    "anyOf",
    "minimum",
    "maximum",
    "minItems",
    "format",
];
const ANNOTATIONS: &[&str] = &["description", "title", "example", "default", "deprecated"];
const FORMATS: &[&str] = &["int32", "int64", "uuid", "date-time", "double", "float"];
pub const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// An HTTP answer as the checks need it.
pub struct Answer<'a> {
    pub status: u16,
    /// Names in lower case.
    pub headers: &'a [(String, String)],
    pub body: &'a str,
}

impl Answer<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A media type's essence (`type/subtype`, lower case) and parameters.
fn media_type(text: &str) -> (String, BTreeSet<String>) {
    let mut parts = text.split(';').map(|p| p.trim().to_ascii_lowercase());
    let essence = parts.next().unwrap_or_default();
    (essence, parts.filter(|p| !p.is_empty()).collect())
}

pub struct Document {
    pub doc: Value,
}

impl Document {
    /// Loads and lints the document: every `$ref` resolves and every
    /// schema uses only what `validate` understands.
    pub fn load(path: &Path) -> Document {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let doc: Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let document = Document { doc };
        let mut problems = Vec::new();
        document.lint(&document.doc, "#", &mut problems);
        assert!(
            problems.is_empty(),
            "{} is not what the checks understand:\n{}",
            path.display(),
            problems.join("\n")
        );
        document
    }

    /// Every documented (path, method), methods in lower case.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for method in METHODS {
                if item.get(*method).is_some() {
                    all.insert((path.clone(), method.to_string()));
                }
            }
        }
        all
    }

    /// Follows a local `$ref` (`#/a/b`), or returns `value` itself.
    pub fn resolve<'a>(&'a self, value: &'a Value) -> Result<&'a Value, String> {
        match value.get("$ref").and_then(Value::as_str) {
            None => Ok(value),
            Some(reference) => {
                let pointer = reference
                    .strip_prefix('#')
                    .ok_or_else(|| format!("only local references are supported: {reference}"))?;
                self.doc
                    .pointer(pointer)
                    .ok_or_else(|| format!("{reference} does not resolve"))
            }
        }
    }

    /// The response the document gives for `status` of `method path`.
    pub fn response(&self, path: &str, method: &str, status: u16) -> Result<&Value, String> {
        let operation = self.doc["paths"]
            .get(path)
            .and_then(|item| item.get(method.to_ascii_lowercase()))
            .ok_or_else(|| format!("{} {path} is not in the document", method.to_uppercase()))?;
        let response = operation["responses"]
            .get(status.to_string())
            .ok_or_else(|| {
                format!(
                    "{} {path} answered {status}, which the document does not list",
                    method.to_uppercase()
                )
            })?;
        self.resolve(response)
    }

    /// Checks an answer against a response object: the headers it says
    /// are required, the content type (its parameters too, when the
    /// document gives some) and the body.
    pub fn check_response(&self, response: &Value, answer: &Answer) -> Result<(), String> {
        for (name, header) in response["headers"].as_object().into_iter().flatten() {
            let header = self.resolve(header)?;
            let value = answer.header(name);
            if header["required"] == true && value.is_none() {
                return Err(format!("the required header {name} is missing"));
            }
            if let (Some(schema), Some(value)) = (header.get("schema"), value) {
                let problems = self.validate(schema, &Value::String(value.to_string()));
                if !problems.is_empty() {
                    return Err(format!("header {name}: {problems:?}"));
                }
            }
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return match answer.body.is_empty() {
                true => Ok(()),
                false => Err(format!(
                    "the document gives no body, the answer has one: {}",
                    answer.body
                )),
            };
        };
        let got = answer
            .header("content-type")
            .ok_or("the answer has no Content-Type")?;
        let (essence, parameters) = media_type(got);
        let (_, media) = content
            .iter()
            .find(|(documented, _)| {
                let (e, p) = media_type(documented);
                e == essence && p.is_subset(&parameters)
            })
            .ok_or_else(|| {
                format!(
                    "Content-Type {got} is not one of the documented {:?}",
                    content.keys().collect::<Vec<_>>()
                )
            })?;
        if essence != "application/json" {
            return Ok(());
        }
        let body: Value = serde_json::from_str(answer.body)
            .map_err(|e| format!("the body is not JSON ({e}): {}", answer.body))?;
        let schema = media
            .get("schema")
            .ok_or("the JSON response has no schema")?;
        let problems = self.validate(schema, &body);
        match problems.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "the body does not match the document:\n  {}\nbody: {}",
                problems.join("\n  "),
                answer.body
            )),
        }
    }

    /// Checks an answer of `method path`: the status is documented, then
    /// the response (content type, body).
    pub fn check(&self, path: &str, method: &str, answer: &Answer) -> Result<(), String> {
        let response = self.response(path, method, answer.status)?;
        self.check_response(response, answer)
    }

    /// Every way `value` differs from `schema`, each with its JSON path.
    pub fn validate(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        self.walk(schema, value, "$", &mut problems);
        problems
    }

    fn walk(&self, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let schema = match self.resolve(schema) {
            Ok(schema) => schema,
            Err(e) => return problems.push(format!("{at}: {e}")),
        };
        if value.is_null() {
            if schema["nullable"] != true {
                problems.push(format!("{at}: null, and the schema is not nullable"));
            }
            return;
        }
        for sub in schema["allOf"].as_array().into_iter().flatten() {
            self.walk(sub, value, at, problems);
        }
        for (keyword, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(choices) = schema[keyword].as_array() {
                let passing = choices
                    .iter()
                    .filter(|choice| self.validate(choice, value).is_empty())
                    .count();
                if passing == 0 || (exactly_one && passing > 1) {
                    problems.push(format!(
                        "{at}: {passing} of the {keyword} choices match {value}"
                    ));
                }
            }
        }
        if let Some(allowed) = schema["enum"].as_array() {
            if !allowed.contains(value) {
                problems.push(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        if let Some(kind) = schema["type"].as_str() {
            let fits = match kind {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                _ => false,
            };
            if !fits {
                return problems.push(format!("{at}: {value} is not of type {kind}"));
            }
        }
        self.format(schema, value, at, problems);
        if let Some(number) = value.as_f64() {
            if let Some(min) = schema["minimum"].as_f64() {
                if number < min {
                    problems.push(format!("{at}: {value} is below the minimum {min}"));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                if number > max {
                    problems.push(format!("{at}: {value} is above the maximum {max}"));
                }
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(min) = schema["minItems"].as_u64() {
                if (items.len() as u64) < min {
                    problems.push(format!("{at}: fewer than {min} items"));
                }
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    self.walk(item, v, &format!("{at}[{i}]"), problems);
                }
            }
        }
        if let Some(object) = value.as_object() {
            self.object(schema, object, at, problems);
        }
    }

    fn object(
        &self,
        schema: &Value,
        object: &Map<String, Value>,
        at: &str,
        problems: &mut Vec<String>,
    ) {
        let properties = schema["properties"].as_object();
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or("");
            if !object.contains_key(name) {
                problems.push(format!("{at}: the required `{name}` is missing"));
            }
        }
        for (name, v) in object {
            let path = format!("{at}.{name}");
            match (
                properties.and_then(|p| p.get(name)),
                schema.get("additionalProperties"),
            ) {
                (Some(property), _) => self.walk(property, v, &path, problems),
                (None, Some(Value::Bool(false))) => problems.push(format!(
                    "{path}: not in the document (additionalProperties: false)"
                )),
                (None, Some(extra @ Value::Object(_))) => self.walk(extra, v, &path, problems),
                (None, _) => {}
            }
        }
    }

    fn format(&self, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let ok = match schema["format"].as_str() {
            Some("int32") => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            Some("int64") => value.is_i64(),
            Some("uuid") => value.as_str().is_some_and(is_uuid),
            Some("date-time") => value.as_str().is_some_and(is_date_time),
            _ => true,
        };
        if !ok {
            problems.push(format!(
                "{at}: {value} is not a valid {}",
                schema["format"].as_str().unwrap_or("")
            ));
        }
    }

    /// Every schema under `value` (at `at`) uses only known keywords and
    /// formats, and every `$ref` anywhere resolves.
    fn lint(&self, value: &Value, at: &str, problems: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref") {
                    if let Err(e) = self.resolve(value) {
                        problems.push(format!("{at}: {e}"));
                    }
                    if !reference.is_string() {
                        problems.push(format!("{at}: $ref is not a string"));
                    }
                }
                for (key, v) in map {
                    let here = format!("{at}/{key}");
                    if key == "schema" || (at.ends_with("/components/schemas")) {
                        self.lint_schema(v, &here, problems);
                    } else {
                        self.lint(v, &here, problems);
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.lint(v, &format!("{at}/{i}"), problems);
                }
            }
            _ => {}
        }
    }

    fn lint_schema(&self, schema: &Value, at: &str, problems: &mut Vec<String>) {
        let Some(map) = schema.as_object() else {
            return problems.push(format!("{at}: a schema must be an object"));
        };
        for (key, v) in map {
            let here = format!("{at}/{key}");
            if key.starts_with("x-") || ANNOTATIONS.contains(&key.as_str()) {
                continue;
            }
            if !KEYWORDS.contains(&key.as_str()) {
                problems.push(format!(
                    "{here}: `{key}` is not a keyword these checks know"
                ));
                continue;
            }
            match key.as_str() {
                "$ref" => {
                    if let Err(e) = self.resolve(schema) {
                        problems.push(format!("{here}: {e}"));
                    }
                    if map.len() > 1 && !map.keys().all(|k| k == "$ref" || k == "description") {
                        problems.push(format!(
                            "{here}: keywords beside $ref are ignored in OpenAPI 3.0"
                        ));
                    }
                }
                "format" if !v.as_str().is_some_and(|f| FORMATS.contains(&f)) => {
                    problems.push(format!("{here}: unknown format {v}"));
                }
                "properties" => {
                    for (name, property) in v.as_object().into_iter().flatten() {
                        self.lint_schema(property, &format!("{here}/{name}"), problems);
                    }
                }
                "required" => {
                    let declared = map.get("properties").and_then(Value::as_object);
                    for name in v.as_array().into_iter().flatten() {
                        let name = name.as_str().unwrap_or("");
                        if declared.is_some_and(|p| !p.contains_key(name)) {
                            problems
                                .push(format!("{here}: `{name}` is required but not a property"));
                        }
                    }
                }
                "items" => self.lint_schema(v, &here, problems),
                "additionalProperties" if v.is_object() => self.lint_schema(v, &here, problems),
                "allOf" | "oneOf" | "anyOf" => {
                    for (i, sub) in v.as_array().into_iter().flatten().enumerate() {
                        self.lint_schema(sub, &format!("{here}/{i}"), problems);
                    }
                }
                _ => {}
            }
        }
    }
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// RFC 3339: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn is_date_time(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !(digits(0..4) && digits(5..7) && digits(8..10) && digits(11..13))
        || !(digits(14..16) && digits(17..19))
        || (b[4], b[7], b[10], b[13], b[16]) != (b'-', b'-', b'T', b':', b':')
    {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return false;
        }
        rest = &fraction[end..];
    }
    rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':')
}
