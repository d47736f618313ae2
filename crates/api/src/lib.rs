//! The HTTP API: poem-openapi operations, DTOs, errors, auth, openapi_service()
