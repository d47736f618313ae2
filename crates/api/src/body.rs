//! JSON request bodies on our terms: read with a size limit, parsed leniently about `Content-Type`, and every
//! failure answered in the original's shapes (413, or 422 with a FastAPI-style `detail` list).

use std::marker::PhantomData;

use domain::validation::{find_nul_char, LocPart, ValidationError};
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde_json::Value;

use crate::error::{payload_too_large, unprocessable};

/// The most bytes a request body may have unless configured otherwise (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The body limit in force, put in request extensions by the middleware.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

async fn read_json(request: &Request, body: &mut RequestBody) -> poem::Result<Value> {
    let limit = request.extensions().get::<BodyLimit>().map_or(DEFAULT_BODY_LIMIT, |limit| limit.0);
    let bytes = body.take()?.into_bytes_limit(limit).await.map_err(|error| match error {
        poem::error::ReadBodyError::PayloadTooLarge => payload_too_large(),
        other => poem::Error::from(other),
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(unprocessable(&[ValidationError::new(vec!["body".into()], "missing", "Field required")]));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|error| {
        unprocessable(&[ValidationError::new(
            vec!["body".into(), LocPart::Index(error.column())],
            "json_invalid",
            format!("JSON decode error: {error}"),
        )])
    })?;
    if let Some(loc) = find_nul_char(&value) {
        let mut full_loc = vec![LocPart::from("body")];
        full_loc.extend(loc);
        return Err(unprocessable(&[ValidationError::nul_char(full_loc)]));
    }
    Ok(value)
}

fn request_meta<T: Type>() -> Option<MetaRequest> {
    Some(MetaRequest {
        description: None,
        content: vec![MetaMediaType { content_type: "application/json", schema: T::schema_ref() }],
        required: true,
    })
}

/// A JSON body kept as a value (validated by the domain), documented with the schema of `T`.
pub struct RawJson<T> {
    pub value: Value,
    schema: PhantomData<fn() -> T>,
}

impl<'a, T: Type> ApiExtractor<'a> for RawJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        request_meta::<T>()
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(RawJson { value: read_json(request, body).await?, schema: PhantomData })
    }
}

/// A JSON body parsed into `T` by its OpenAPI schema: unknown fields, lengths, enums and types are checked, and
/// any failure is a 422.
pub struct ValidJson<T>(pub T);

impl<'a, T: ParseFromJSON> ApiExtractor<'a> for ValidJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        request_meta::<T>()
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let value = read_json(request, body).await?;
        T::parse_from_json(Some(value)).map(ValidJson).map_err(|error| {
            unprocessable(&[ValidationError::new(vec!["body".into()], "value_error", error.into_message())])
        })
    }
}
