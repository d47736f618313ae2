//! The committed spec in `openapi/` is generated from the code: this test regenerates it, rewrites the file
//! when it differs, and fails, so a stale spec never lands (run `cargo test` and commit the result).

use std::path::PathBuf;

#[test]
fn the_committed_openapi_spec_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.yaml");
    let generated = api::spec::spec_yaml();
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        std::fs::write(&path, &generated).expect("write openapi/openapi.yaml");
        panic!("openapi/openapi.yaml was stale and has been regenerated; review and commit it");
    }
}

#[test]
fn every_operation_has_an_operation_id_and_a_summary() {
    let spec: serde_json::Value = serde_json::from_str(&api::spec::spec_json()).unwrap();
    let mut n_operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            n_operations += 1;
            assert!(operation["operationId"].is_string(), "{method} {path} has no operationId");
            assert!(
                operation["summary"].is_string() || operation["description"].is_string(),
                "{method} {path} is undocumented"
            );
        }
    }
    assert!(n_operations >= 7);
}

/// `error::internal` answers 503 with `Retry-After` from any operation whose database work fails because the database
/// is unavailable; clients generated from the spec should know. The operations that never touch the database do not
/// declare it.
#[test]
fn every_operation_that_uses_the_database_declares_its_503_with_retry_after() {
    let spec: serde_json::Value = serde_json::from_str(&api::spec::spec_json()).unwrap();
    // Liveness, readiness (which reports the database down rather than failing), the version, and the always-405
    // changes of immutable objects.
    let without_the_database = [
        "health",
        "healthz",
        "version",
        "replaceContextPacket",
        "patchContextPacket",
        "replaceConstraintSnapshot",
        "patchConstraintSnapshot",
    ];
    let mut declared = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            let unavailable = &operation["responses"]["503"];
            if without_the_database.contains(&id) {
                assert!(unavailable.is_null(), "{method} {path} ({id}) never uses the database but declares a 503");
                continue;
            }
            declared += 1;
            assert!(unavailable.is_object(), "{method} {path} ({id}) uses the database and declares no 503");
            assert!(
                unavailable["headers"]
                    .as_object()
                    .is_some_and(|headers| headers.keys().any(|name| name.eq_ignore_ascii_case("retry-after"))),
                "{method} {path} ({id}): no Retry-After on its 503: {unavailable}"
            );
            assert!(
                unavailable["description"].as_str().is_some_and(|text| text.contains("Retry-After")),
                "{method} {path} ({id}): {unavailable}"
            );
            assert_eq!(
                unavailable["content"]["application/json; charset=utf-8"]["schema"]["$ref"],
                "#/components/schemas/ErrorDetail",
                "{method} {path} ({id}): {unavailable}"
            );
        }
    }
    assert!(declared >= 30, "{declared}");
}

/// What `api::spec` rewrites for client generators holds everywhere in the served document: no reference carries
/// its keywords again in a second `allOf` part, and no property that is an object has a `default` (both made
/// openapi-python-client drop every CWOM schema and endpoint).
#[test]
fn no_reference_repeats_its_keywords_in_an_all_of_and_no_object_property_has_a_default() {
    let spec: serde_json::Value = serde_json::from_str(&api::spec::spec_json()).unwrap();
    let schemas = &spec["components"]["schemas"];
    let is_object = |schema: &serde_json::Value| {
        let reference = schema["allOf"][0]["$ref"].as_str().or(schema["$ref"].as_str());
        schema["type"] == "object"
            || reference
                .and_then(|reference| reference.strip_prefix("#/components/schemas/"))
                .is_some_and(|name| schemas[name]["type"] == "object")
    };
    let mut found = Vec::new();
    let mut stack = vec![("".to_owned(), &spec)];
    while let Some((at, value)) = stack.pop() {
        match value {
            serde_json::Value::Object(members) => {
                if let Some(parts) = members.get("allOf").and_then(|parts| parts.as_array()) {
                    if parts.len() > 1 && parts[0].get("$ref").is_some() && parts[1].get("$ref").is_none() {
                        found.push(format!("{at}: a reference with its keywords in allOf"));
                    }
                }
                if let Some(properties) = members.get("properties").and_then(|properties| properties.as_object()) {
                    for (name, property) in properties {
                        if property.get("default").is_some() && is_object(property) {
                            found.push(format!("{at}/properties/{name}: an object with a default"));
                        }
                    }
                }
                stack.extend(members.iter().map(|(key, child)| (format!("{at}/{key}"), child)));
            }
            serde_json::Value::Array(items) => {
                stack.extend(items.iter().enumerate().map(|(n, child)| (format!("{at}/{n}"), child)));
            }
            _ => {}
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The running service serves the rewritten document, the same bytes as `api::spec` (and so as the committed file).
#[tokio::test]
async fn the_service_serves_the_rewritten_document_as_json_and_yaml() {
    let test = crate::harness::TestApp::spawn().await;
    for (path, expected, content_type) in [
        ("/openapi.json", api::spec::spec_json(), "application/json"),
        ("/openapi.yaml", api::spec::spec_yaml(), "application/x-yaml"),
    ] {
        let response = test.client.get(path).send().await;
        assert_eq!(response.0.status(), 200, "{path}");
        assert_eq!(response.0.headers()["content-type"], content_type, "{path}");
        let body = response.0.into_body().into_string().await.unwrap();
        assert!(body == expected, "{path} serves another document");
    }
}
