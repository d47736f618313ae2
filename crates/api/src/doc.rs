//! `Doc<T>`: a stored JSON document sent as it is, documented in the spec with the schema of `T`.
//!
//! Read models keep each object's GET shape as a JSON document; converting it into a typed struct only to
//! serialise it again would cost time and could only lose information. `T` exists for the spec, and the
//! spec-conformance run in CI (schemathesis) checks that documents match it.

use std::borrow::Cow;
use std::marker::PhantomData;

use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

/// A JSON document with the schema of `T`.
pub struct Doc<T> {
    value: Value,
    schema: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Doc<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

impl<T> Doc<T> {
    pub fn new(value: Value) -> Doc<T> {
        Doc { value, schema: PhantomData }
    }
}

impl<T: Type> Type for Doc<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Value;
    type RawElementValueType = Value;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Value> {
        Some(&self.value)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        Box::new(std::iter::once(&self.value))
    }
}

impl<T: Type> ToJSON for Doc<T> {
    fn to_json(&self) -> Option<Value> {
        Some(self.value.clone())
    }
}

impl<T: Type> ParseFromJSON for Doc<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        Ok(Doc::new(value.unwrap_or_default()))
    }
}

/// A JSON document already serialised (by PostgreSQL, from the read model), sent byte for byte as the body of a
/// response documented with the schema of `T`: no parse into a `Value`, no clone, no serialisation on the way.
pub struct JsonText<T> {
    text: String,
    schema: PhantomData<fn() -> T>,
}

impl<T> JsonText<T> {
    /// `text` must be one JSON value; read models' `document::text` is.
    pub fn new(text: String) -> JsonText<T> {
        JsonText { text, schema: PhantomData }
    }

    /// A document in hand, serialised.
    pub fn from_value(value: &Value) -> JsonText<T> {
        JsonText::new(value.to_string())
    }
}

impl<T: Type> poem_openapi::payload::Payload for JsonText<T> {
    /// The content type `Json` responses have, so the spec is the same.
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send> poem::IntoResponse for JsonText<T> {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .header(poem::http::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(self.text)
    }
}
