//! Request validation errors in the FastAPI/pydantic shape (`{"loc","msg","type"}`), the lax pydantic-style value
//! checks that produce them, and the NUL-character guard (PostgreSQL `jsonb`/`text` cannot store U+0000).

use std::fmt;

use serde_json::{Map, Value};

/// One step of an error location: an object key (rendered as a JSON string) or an array index (a JSON number).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocPart {
    /// An object key, e.g. `"target"`.
    Field(String),
    /// An array index.
    Index(usize),
}

impl LocPart {
    /// The JSON rendering: a string for a field, a number for an index.
    pub fn to_json(&self) -> Value {
        match self {
            LocPart::Field(name) => Value::String(name.clone()),
            LocPart::Index(index) => Value::from(*index),
        }
    }
}

impl From<&str> for LocPart {
    fn from(name: &str) -> LocPart {
        LocPart::Field(name.to_owned())
    }
}

impl From<String> for LocPart {
    fn from(name: String) -> LocPart {
        LocPart::Field(name)
    }
}

impl From<usize> for LocPart {
    fn from(index: usize) -> LocPart {
        LocPart::Index(index)
    }
}

impl fmt::Display for LocPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocPart::Field(name) => f.write_str(name),
            LocPart::Index(index) => write!(f, "{index}"),
        }
    }
}

/// One validation problem, as FastAPI reports it inside `422 {"detail": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Where the problem is, starting with `"body"` for request bodies, e.g. `["body","target","ref"]`.
    pub loc: Vec<LocPart>,
    /// The human-readable message, worded as pydantic v2 words it (e.g. `"Field required"`).
    pub msg: String,
    /// The pydantic error type, e.g. `missing`, `string_too_short`, `literal_error`, `extra_forbidden`.
    pub kind: String,
}

impl ValidationError {
    /// A new error at `loc`.
    pub fn new(loc: Vec<LocPart>, kind: impl Into<String>, msg: impl Into<String>) -> ValidationError {
        ValidationError { loc, msg: msg.into(), kind: kind.into() }
    }

    /// The error for a string (or object key) containing U+0000 at `loc`.
    pub fn nul_char(loc: Vec<LocPart>) -> ValidationError {
        ValidationError::new(loc, "value_error", "Value error, the NUL character (U+0000) is not allowed")
    }

    /// `{"loc":[...],"msg":...,"type":...}`.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("loc".to_owned(), Value::Array(self.loc.iter().map(LocPart::to_json).collect()));
        object.insert("msg".to_owned(), Value::String(self.msg.clone()));
        object.insert("type".to_owned(), Value::String(self.kind.clone()));
        Value::Object(object)
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loc: Vec<String> = self.loc.iter().map(LocPart::to_string).collect();
        write!(f, "{}: {} ({})", loc.join("."), self.msg, self.kind)
    }
}

impl std::error::Error for ValidationError {}

/// The whole 422 body: `{"detail": [error, ...]}`.
pub fn detail_json(errors: &[ValidationError]) -> Value {
    let mut object = Map::new();
    object.insert("detail".to_owned(), Value::Array(errors.iter().map(ValidationError::to_json).collect()));
    Value::Object(object)
}

/// The location (relative to `value`) of the first string or object key that contains U+0000, depth first in
/// document order; for a key, the location ends with that key. `None` when the value is clean.
pub fn find_nul_char(value: &Value) -> Option<Vec<LocPart>> {
    let mut loc = Vec::new();
    if find_nul_in(value, &mut loc) {
        Some(loc)
    } else {
        None
    }
}

fn find_nul_in(value: &Value, loc: &mut Vec<LocPart>) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                loc.push(LocPart::Index(index));
                if find_nul_in(item, loc) {
                    return true;
                }
                loc.pop();
            }
            false
        }
        Value::Object(object) => {
            for (key, item) in object {
                loc.push(LocPart::Field(key.clone()));
                if key.contains('\0') || find_nul_in(item, loc) {
                    return true;
                }
                loc.pop();
            }
            false
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `loc` extended by one part.
pub(crate) fn child(loc: &[LocPart], part: impl Into<LocPart>) -> Vec<LocPart> {
    let mut extended = loc.to_vec();
    extended.push(part.into());
    extended
}

/// Accumulates errors while lax, pydantic-v2-like checks run over a JSON value. Each check returns `None` (and
/// records an error) when the value is invalid.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    pub(crate) errors: Vec<ValidationError>,
}

impl Checker {
    pub(crate) fn push(&mut self, loc: Vec<LocPart>, kind: &str, msg: impl Into<String>) {
        self.errors.push(ValidationError::new(loc, kind, msg));
    }

    pub(crate) fn missing(&mut self, loc: Vec<LocPart>) {
        self.push(loc, "missing", "Field required");
    }

    pub(crate) fn extra_forbidden(&mut self, loc: Vec<LocPart>) {
        self.push(loc, "extra_forbidden", "Extra inputs are not permitted");
    }

    /// A nested model: the value must be a JSON object.
    pub(crate) fn model<'v>(&mut self, value: &'v Value, loc: &[LocPart]) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(object) => Some(object),
            _ => {
                self.push(
                    loc.to_vec(),
                    "model_attributes_type",
                    "Input should be a valid dictionary or object to extract fields from",
                );
                None
            }
        }
    }

    /// A free-form `Dict[str, Any]`.
    pub(crate) fn dict(&mut self, value: &Value, loc: &[LocPart]) -> Option<Map<String, Value>> {
        match value {
            Value::Object(object) => Some(object.clone()),
            _ => {
                self.push(loc.to_vec(), "dict_type", "Input should be a valid dictionary");
                None
            }
        }
    }

    /// A string whose length in characters is within `min..=max` (no coercion from other types).
    pub(crate) fn string(&mut self, value: &Value, loc: &[LocPart], min: usize, max: usize) -> Option<String> {
        let Value::String(text) = value else {
            self.push(loc.to_vec(), "string_type", "Input should be a valid string");
            return None;
        };
        self.length(text, loc, min, max).then(|| text.clone())
    }

    /// Checks the length of `text` in characters; records `string_too_short` / `string_too_long`.
    pub(crate) fn length(&mut self, text: &str, loc: &[LocPart], min: usize, max: usize) -> bool {
        let length = text.chars().count();
        if length < min {
            self.push(
                loc.to_vec(),
                "string_too_short",
                format!("String should have at least {min} character{}", plural(min)),
            );
            false
        } else if length > max {
            self.push(
                loc.to_vec(),
                "string_too_long",
                format!("String should have at most {max} character{}", plural(max)),
            );
            false
        } else {
            true
        }
    }

    /// One of the `allowed` strings (a `Literal[...]`).
    pub(crate) fn literal<'a>(&mut self, value: &Value, loc: &[LocPart], allowed: &[&'a str]) -> Option<&'a str> {
        if let Value::String(text) = value {
            if let Some(found) = allowed.iter().find(|candidate| **candidate == text) {
                return Some(found);
            }
        }
        let quoted: Vec<String> = allowed.iter().map(|candidate| format!("'{candidate}'")).collect();
        let expected = match quoted.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => quoted.join(""),
        };
        self.push(loc.to_vec(), "literal_error", format!("Input should be {expected}"));
        None
    }

    /// An integer within `ge..=le`. Lax like pydantic: a whole float (`60.0`), a digit string (`"60"`, `" 60 "`,
    /// `"60.00"`) and a bool are accepted; a fractional float or other string is not.
    pub(crate) fn int(&mut self, value: &Value, loc: &[LocPart], ge: i64, le: i64) -> Option<i64> {
        let number: i128 = match value {
            Value::Bool(flag) => i128::from(*flag),
            Value::Number(number) => {
                if let Some(int) = number.as_i64() {
                    i128::from(int)
                } else if let Some(int) = number.as_u64() {
                    i128::from(int)
                } else {
                    let float = number.as_f64().unwrap_or(f64::NAN);
                    if !float.is_finite() || float.fract() != 0.0 {
                        self.push(
                            loc.to_vec(),
                            "int_from_float",
                            "Input should be a valid integer, got a number with a fractional part",
                        );
                        return None;
                    }
                    // Saturating conversion: a huge whole float is simply out of range below.
                    float as i128
                }
            }
            Value::String(text) => match parse_int_string(text) {
                Some(int) => int,
                None => {
                    self.push(
                        loc.to_vec(),
                        "int_parsing",
                        "Input should be a valid integer, unable to parse string as an integer",
                    );
                    return None;
                }
            },
            Value::Null | Value::Array(_) | Value::Object(_) => {
                self.push(loc.to_vec(), "int_type", "Input should be a valid integer");
                return None;
            }
        };
        if number < i128::from(ge) {
            self.push(loc.to_vec(), "greater_than_equal", format!("Input should be greater than or equal to {ge}"));
            None
        } else if number > i128::from(le) {
            self.push(loc.to_vec(), "less_than_equal", format!("Input should be less than or equal to {le}"));
            None
        } else {
            i64::try_from(number).ok()
        }
    }

    /// A bool. Lax like pydantic: `0`/`1` and the strings `true/false, yes/no, on/off, t/f, y/n, 1/0` (any case).
    pub(crate) fn bool(&mut self, value: &Value, loc: &[LocPart]) -> Option<bool> {
        let parsed = match value {
            Value::Bool(flag) => Some(*flag),
            Value::Number(number) => match number.as_f64() {
                Some(0.0) => Some(false),
                Some(1.0) => Some(true),
                _ => None,
            },
            Value::String(text) => match text.to_ascii_lowercase().as_str() {
                "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
                "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
                _ => None,
            },
            Value::Null | Value::Array(_) | Value::Object(_) => {
                self.push(loc.to_vec(), "bool_type", "Input should be a valid boolean");
                return None;
            }
        };
        if parsed.is_none() {
            self.push(loc.to_vec(), "bool_parsing", "Input should be a valid boolean, unable to interpret input");
        }
        parsed
    }

    /// A `List[str]`; every item is checked and reported at its index.
    pub(crate) fn string_list(&mut self, value: &Value, loc: &[LocPart]) -> Option<Vec<String>> {
        let Value::Array(items) = value else {
            self.push(loc.to_vec(), "list_type", "Input should be a valid list");
            return None;
        };
        let mut strings = Vec::with_capacity(items.len());
        let mut valid = true;
        for (index, item) in items.iter().enumerate() {
            match self.string(item, &child(loc, index), 0, usize::MAX) {
                Some(text) => strings.push(text),
                None => valid = false,
            }
        }
        valid.then_some(strings)
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// Parses `" -60 "`, `"60"`, `"+60"` or `"60.000"` like pydantic's lax str→int; out-of-range digit strings
/// saturate (they then fail the bounds check, not the parse).
fn parse_int_string(text: &str) -> Option<i128> {
    let trimmed = text.trim();
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let digits = match unsigned.split_once('.') {
        Some((whole, zeros)) if !zeros.is_empty() && zeros.bytes().all(|byte| byte == b'0') => whole,
        Some(_) => return None,
        None => unsigned,
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.parse::<i128>().unwrap_or(i128::MAX);
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(name: &str) -> LocPart {
        LocPart::from(name)
    }

    #[test]
    fn renders_fastapi_shape() {
        let error = ValidationError::new(
            vec![field("body"), field("acceptance_criteria"), LocPart::Index(2)],
            "string_type",
            "Input should be a valid string",
        );
        assert_eq!(
            error.to_json(),
            json!({"loc": ["body", "acceptance_criteria", 2], "msg": "Input should be a valid string", "type": "string_type"})
        );
        assert_eq!(
            detail_json(std::slice::from_ref(&error)),
            json!({"detail": [{"loc": ["body", "acceptance_criteria", 2], "msg": "Input should be a valid string", "type": "string_type"}]})
        );
        assert_eq!(error.to_string(), "body.acceptance_criteria.2: Input should be a valid string (string_type)");
    }

    #[test]
    fn finds_nul_in_nested_strings_and_keys() {
        assert_eq!(
            find_nul_char(&json!({"a": [1, "ok", {"b": "x\u{0}y"}]})),
            Some(vec![field("a"), LocPart::Index(2), field("b")])
        );
        assert_eq!(find_nul_char(&json!({"a": {"k\u{0}": 1}})), Some(vec![field("a"), field("k\u{0}")]));
        assert_eq!(find_nul_char(&json!("\u{0}")), Some(vec![]));
        assert_eq!(find_nul_char(&json!({"a": ["clean", null, true, 1.5], "b": {"c": "d"}})), None);
    }

    #[test]
    fn lax_int() {
        let mut checker = Checker::default();
        let loc = [field("n")];
        assert_eq!(checker.int(&json!(60), &loc, 30, 100), Some(60));
        assert_eq!(checker.int(&json!("60"), &loc, 30, 100), Some(60));
        assert_eq!(checker.int(&json!(" 60 "), &loc, 30, 100), Some(60));
        assert_eq!(checker.int(&json!("60.00"), &loc, 30, 100), Some(60));
        assert_eq!(checker.int(&json!(60.0), &loc, 30, 100), Some(60));
        assert!(checker.errors.is_empty());
        assert_eq!(checker.int(&json!(60.5), &loc, 30, 100), None);
        assert_eq!(checker.int(&json!("6x"), &loc, 30, 100), None);
        assert_eq!(checker.int(&json!("60.5"), &loc, 30, 100), None);
        assert_eq!(checker.int(&json!(null), &loc, 30, 100), None);
        assert_eq!(checker.int(&json!(29), &loc, 30, 100), None);
        assert_eq!(checker.int(&json!("99999999999999999999999999999999999999999"), &loc, 30, 100), None);
        assert_eq!(checker.int(&json!(1e300), &loc, 30, 100), None);
        let kinds: Vec<&str> = checker.errors.iter().map(|error| error.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "int_from_float",
                "int_parsing",
                "int_parsing",
                "int_type",
                "greater_than_equal",
                "less_than_equal",
                "less_than_equal"
            ]
        );
        assert_eq!(checker.errors[4].msg, "Input should be greater than or equal to 30");
        assert_eq!(checker.errors[5].msg, "Input should be less than or equal to 100");
    }

    #[test]
    fn lax_bool_and_literal_and_lengths() {
        let mut checker = Checker::default();
        let loc = [field("b")];
        assert_eq!(checker.bool(&json!("yes"), &loc), Some(true));
        assert_eq!(checker.bool(&json!(0), &loc), Some(false));
        assert_eq!(checker.bool(&json!("maybe"), &loc), None);
        assert_eq!(checker.bool(&json!(null), &loc), None);
        assert_eq!(checker.literal(&json!("b"), &loc, &["a", "b", "c"]), Some("b"));
        assert_eq!(checker.literal(&json!("z"), &loc, &["a", "b", "c"]), None);
        assert_eq!(checker.literal(&json!(1.0), &loc, &["1.0"]), None);
        assert_eq!(checker.string(&json!(""), &loc, 1, 5), None);
        assert_eq!(checker.string(&json!("abcdef"), &loc, 1, 5), None);
        assert_eq!(checker.string(&json!(5), &loc, 1, 5), None);
        assert_eq!(checker.string(&json!("ééé"), &loc, 1, 3), Some("ééé".to_owned()));
        let rendered: Vec<(&str, &str)> =
            checker.errors.iter().map(|error| (error.kind.as_str(), error.msg.as_str())).collect();
        assert_eq!(
            rendered,
            [
                ("bool_parsing", "Input should be a valid boolean, unable to interpret input"),
                ("bool_type", "Input should be a valid boolean"),
                ("literal_error", "Input should be 'a', 'b' or 'c'"),
                ("literal_error", "Input should be '1.0'"),
                ("string_too_short", "String should have at least 1 character"),
                ("string_too_long", "String should have at most 5 characters"),
                ("string_type", "Input should be a valid string"),
            ]
        );
    }
}
