//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! annotations and the request/response types (see `model`), never written by hand.

use super::model::{
    Attachment, AttemptView, BatchRequest, BatchResponse, BatchResult, BatchSent, EventView,
    EventsPage, PortalMode, RecipientResult, RecipientStatus, SendRequest, SendResponse,
    StatusResponse,
};
use super::problem::Problem;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "phigate HTTP API", description = "Send mail carrying PHI through phigate's DLP, policy, encrypted spool and verified-TLS delivery."),
    paths(super::http::send, super::http::batch, super::status::status, super::status::events),
    components(schemas(
        Attachment, AttemptView, BatchRequest, BatchResponse, BatchResult, BatchSent, EventView,
        EventsPage, PortalMode, Problem, RecipientResult, RecipientStatus, SendRequest,
        SendResponse, StatusResponse
    )),
    modifiers(&Bearer),
    tags((name = "messages"), (name = "events"))
)]
struct Doc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, with phigate's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Doc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented_as_openapi_3_1() {
        let v = serde_json::to_value(super::document()).expect("json");
        assert!(v["openapi"].as_str().is_some_and(|s| s.starts_with("3.1")));
        for p in [
            "/v1/messages",
            "/v1/messages/batch",
            "/v1/messages/{id}",
            "/v1/events",
        ] {
            assert!(v["paths"].get(p).is_some(), "{p} missing");
        }
        let send = &v["components"]["schemas"]["SendRequest"];
        assert_eq!(send["additionalProperties"], serde_json::json!(false));
        assert!(send["required"]
            .as_array()
            .is_some_and(|r| r.contains(&"from".into())));
    }
}
