//! The HTTP contract (docs/architecture.md §4): an OpenAPI 3.1 document built from the code.
//! Each role's routes come from its `OpenApiRouter` (`#[utoipa::path]` on the handlers,
//! `ToSchema` on the types), so a route cannot be served without being described. This
//! module adds what every role shares — the probes, `/openapi.json`, the security schemes —
//! and the error answers that the shared layers give on every route (auth, body limits,
//! timeouts, the store), each with the JSON error body.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Schema};
use utoipa::OpenApi as _;

use super::error::{ErrorBody, ErrorCode};
use super::{Health, Readiness};

/// The probes and the document itself, which every role serves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "meeting-events",
        description = "The HTTP APIs of the meeting system's roles — meeting, election, voting, permission and live — as one origin serves them (the Ingress routes each path to its role). Every error answer carries the JSON error body with a stable `error` code.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(super::health, super::ready, super::metrics, super::openapi_json),
    components(schemas(ErrorBody, ErrorCode, Health, Readiness)),
    tags(
        (name = "meeting", description = "Meetings and their agendas (the meeting role)"),
        (name = "election", description = "Elections and nominations (the election role)"),
        (name = "voting", description = "Ballots and votes (the voting role)"),
        (name = "permission", description = "Who manages a meeting (the permission role)"),
        (name = "live", description = "Server-sent event streams for the browser (the live role)"),
        (name = "probes", description = "Health, readiness, metrics and this document (every role)")
    )
)]
struct Shared;

/// The name of the bearer scheme in `security` requirements.
pub(crate) const BEARER: &str = "bearer";
/// The name of the live role's cookie scheme.
pub(crate) const COOKIE: &str = "live_session";

/// The document for `roles`' routes (one role's, or every role's for the whole origin).
pub(crate) fn document(routes: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let mut doc = Shared::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    for role in routes {
        doc.merge(role);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An HS256 token whose `sub` is the user (`app token` issues one).",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        COOKIE,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            COOKIE,
            "The cookie `POST /live/session` sets (the bearer token, HttpOnly, Path=/live): how a browser's EventSource authenticates.",
        ))),
    );
    for schema in components.schemas.values_mut() {
        unwrap_described_fields(schema);
    }
    for (name, response) in shared_responses() {
        components
            .responses
            .insert(name.to_string(), RefOr::T(response));
    }
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            add_shared_errors(op);
        }
    }
    doc
}

/// utoipa gives a described field of an inlined type (a [`super::Text`]) as a `oneOf` of
/// that one schema beside the description; the contract says the same thing plainly, the
/// schema with the description in it.
fn unwrap_described_fields(schema: &mut RefOr<Schema>) {
    let RefOr::T(Schema::Object(object)) = schema else {
        return;
    };
    for field in object.properties.values_mut() {
        let RefOr::T(Schema::OneOf(one)) = field else {
            continue;
        };
        if let [RefOr::T(Schema::Object(inner))] = one.items.as_slice() {
            let mut inner = inner.clone();
            inner.description = one.description.take().or(inner.description);
            *field = RefOr::T(Schema::Object(inner));
        }
    }
}

/// The error answers the shared layers may give, as reusable responses.
fn shared_responses() -> Vec<(&'static str, Response)> {
    let error = |description: &str| {
        ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
    };
    let retry_after = HeaderBuilder::new()
        .schema(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::Integer))
        .description(Some("Seconds to wait before trying again."))
        .build();
    vec![
        ("BadRequest", error("`bad_request`: the body, a path parameter or the query does not parse.").build()),
        ("Unauthorized", error("`unauthorized`: no credential, or one that does not verify (with `WWW-Authenticate: Bearer`).").build()),
        ("RequestTimeout", error("`request_timeout`: the request, body included, took longer than `HTTP_REQUEST_TIMEOUT`.").build()),
        ("HeadersTooLarge", error("`headers_too_large`: the request's target and headers are over 16 KiB.").build()),
        ("PayloadTooLarge", error("`payload_too_large`: the body is over `HTTP_MAX_BODY_BYTES`.").build()),
        ("UnsupportedMediaType", error("`unsupported_media_type`: the body is not sent as `application/json`.").build()),
        ("Invalid", error("`invalid`: well-formed, but a value is not acceptable (an empty or over-long text, an unknown word, `limit` outside 1–1000).").build()),
        ("Internal", error("`internal`: a failure of ours; the cause is logged, not answered.").build()),
        (
            "Unavailable",
            error("`store_unavailable` (the store is not answering) or `busy` (it is busy with concurrent changes): try again after `Retry-After`.")
                .header("Retry-After", retry_after)
                .build(),
        ),
    ]
}

/// Each operation of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
        &mut item.head,
        &mut item.options,
    ]
    .into_iter()
    .flatten()
}

/// The answers of the shared layers, by what the operation takes: every role route may time
/// out or meet a failing store; one with a credential may be refused it; one with a path or
/// query may not parse; one that writes may get a body that is too large, not JSON, or not
/// acceptable. The probes answer for themselves.
fn add_shared_errors(op: &mut Operation) {
    if op
        .tags
        .as_ref()
        .is_some_and(|t| t.iter().any(|t| t == "probes"))
    {
        return;
    }
    let secured = op
        .security
        .as_ref()
        .is_some_and(|s| !s.is_empty() && s.iter().any(|r| r != &Default::default()));
    let params = op.parameters.as_deref().unwrap_or_default();
    let parses = !params.is_empty() || op.request_body.is_some();
    let query = params
        .iter()
        .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query);
    let mut add = |status: &str, name: &str| {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    };
    if parses {
        add("400", "BadRequest");
    }
    if secured {
        add("401", "Unauthorized");
    }
    add("408", "RequestTimeout");
    add("431", "HeadersTooLarge");
    if !secured && !parses {
        // A static answer (the page, its settings): nothing behind it can fail.
        return;
    }
    add("500", "Internal");
    add("503", "Unavailable");
    if op.request_body.is_some() {
        add("413", "PayloadTooLarge");
        add("415", "UnsupportedMediaType");
    }
    if op.request_body.is_some() || query {
        add("422", "Invalid");
    }
}
