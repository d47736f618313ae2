//! The OpenAPI document as served at `/openapi.json` and `/openapi.yaml` and committed in `openapi/`: poem-openapi's,
//! rewritten in two places where client generators cannot read it, with the same meaning.
//!
//! 1. **Keywords beside a reference.** OpenAPI 3.0 ignores the siblings of a `$ref`, so poem-openapi gives a
//!    referenced schema its field's keywords (a description, `nullable`, a default) as
//!    `{..keywords, allOf: [{$ref}, {..keywords}]}`: the keywords twice. openapi-python-client takes a two-part
//!    `allOf` for a composition to merge, cannot merge an enum into it ("Cannot take allOf a non-object"), and
//!    dropped every schema holding such a field, and with them every CWOM endpoint. The second, repeated part goes:
//!    `{..keywords, allOf: [{$ref}]}`, the form FastAPI writes.
//! 2. **Defaults of object properties** (`{}` for `meta`, the empty `verification` of an artifact, ...), which that
//!    generator refuses ("ModelProperty cannot have a default value"). The server applies them when the property
//!    is omitted or null; the spec now says so in the property's description instead of in `default`.
//!
//! `tests/openapi_spec.rs` checks both rules hold everywhere; CI's contract check generates the Python client and
//! fails on any schema or endpoint it had to leave out. Swagger UI at `/docs` renders poem-openapi's document as it
//! is (it reads either form).

use std::sync::LazyLock;

use serde_yaml::{Mapping, Value};

/// The document, rewritten (module doc), once per process.
static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let mut document: Value =
        serde_yaml::from_str(&crate::openapi_service().spec_yaml()).expect("poem-openapi writes valid YAML");
    let schemas = document["components"]["schemas"].as_mapping().cloned().unwrap_or_default();
    rewrite(&mut document, &schemas);
    document
});

/// The document as YAML (`/openapi.yaml`, `openapi/openapi.yaml`).
pub fn spec_yaml() -> String {
    serde_yaml::to_string(&*DOCUMENT).expect("a YAML value serialises")
}

/// The document as JSON (`/openapi.json`), with the members in the same order as the YAML.
pub fn spec_json() -> String {
    serde_json::to_string_pretty(&*DOCUMENT).expect("the document has only JSON values")
}

/// Applies both rules at every depth, the inner schemas first: a property's `allOf` is down to its reference before
/// its object's properties are looked at. `schemas`: the components, to tell which references name objects.
fn rewrite(value: &mut Value, schemas: &Mapping) {
    match value {
        Value::Mapping(mapping) => {
            for (_, child) in mapping.iter_mut() {
                rewrite(child, schemas);
            }
            drop_repeated_keywords(mapping);
            if let Some(Value::Mapping(properties)) = mapping.get_mut("properties") {
                for (_, property) in properties.iter_mut() {
                    if let Value::Mapping(property) = property {
                        describe_object_default(property, schemas);
                    }
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|item| rewrite(item, schemas)),
        _ => {}
    }
}

/// `{..keywords, allOf: [{$ref}, {..keywords}]}` becomes `{..keywords, allOf: [{$ref}]}`: only when the second part
/// is exactly the schema's other keywords, so nothing is lost.
fn drop_repeated_keywords(schema: &mut Mapping) {
    let Some(Value::Sequence(parts)) = schema.get("allOf") else { return };
    let [reference, Value::Mapping(repeated)] = parts.as_slice() else { return };
    if !reference.as_mapping().is_some_and(|reference| reference.contains_key("$ref")) {
        return;
    }
    let mut siblings = schema.clone();
    siblings.remove("allOf");
    if *repeated == siblings {
        let reference = reference.clone();
        schema.insert("allOf".into(), Value::Sequence(vec![reference]));
    }
}

/// A property that is an object (inline, or a reference to an object schema) loses its `default`, which its
/// description then states.
fn describe_object_default(property: &mut Mapping, schemas: &Mapping) {
    if !is_object(property, schemas) {
        return;
    }
    let Some(default) = property.remove("default") else { return };
    let default = serde_json::to_string(&default).expect("a default is a JSON value");
    let stated = format!("Omitted or null: `{default}`.");
    let description = match property.get("description").and_then(Value::as_str) {
        Some(description) => format!("{description} {stated}"),
        None => stated,
    };
    property.insert("description".into(), Value::String(description));
}

/// Whether `schema` describes an object: `type: object`, or a reference (alone or as the one part of an `allOf`) to
/// a component whose type is object.
fn is_object(schema: &Mapping, schemas: &Mapping) -> bool {
    if schema.get("type").and_then(Value::as_str) == Some("object") {
        return true;
    }
    let reference = match schema.get("allOf") {
        Some(Value::Sequence(parts)) if parts.len() == 1 => parts[0].get("$ref"),
        _ => schema.get("$ref"),
    };
    reference
        .and_then(Value::as_str)
        .and_then(|reference| reference.strip_prefix("#/components/schemas/"))
        .and_then(|name| schemas.get(name))
        .is_some_and(|component| component.get("type").and_then(Value::as_str) == Some("object"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn a_reference_keeps_its_keywords_once_and_an_object_default_moves_into_the_description() {
        let schemas = yaml("Kind: {type: string, enum: [Repo]}\nPolicy: {type: object, properties: {}}\n");
        let mut document = yaml(
            "type: object
properties:
  kind:
    description: The kind.
    allOf: [{$ref: '#/components/schemas/Kind'}, {description: The kind.}]
  policy:
    nullable: true
    default: {a: 1}
    allOf: [{$ref: '#/components/schemas/Policy'}, {nullable: true, default: {a: 1}}]
  meta: {type: object, default: {}}
  tags: {type: array, items: {type: string}, default: []}
  odd:
    description: Mine.
    allOf: [{$ref: '#/components/schemas/Kind'}, {description: Another.}]
",
        );
        rewrite(&mut document, schemas.as_mapping().unwrap());
        let expected = yaml(
            "type: object
properties:
  kind:
    description: The kind.
    allOf: [{$ref: '#/components/schemas/Kind'}]
  policy:
    nullable: true
    allOf: [{$ref: '#/components/schemas/Policy'}]
    description: 'Omitted or null: `{\"a\":1}`.'
  meta: {type: object, description: 'Omitted or null: `{}`.'}
  tags: {type: array, items: {type: string}, default: []}
  odd:
    description: Mine.
    allOf: [{$ref: '#/components/schemas/Kind'}, {description: Another.}]
",
        );
        assert_eq!(document, expected);
    }
}
