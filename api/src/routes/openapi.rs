//! `GET /v1/openapi.json` (public): the API's OpenAPI 3 description,
//! generated from the handlers' and types' own annotations (utoipa), so it
//! cannot drift from the code; a test checks it against real responses.

use std::sync::{Arc, LazyLock};

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{checks, content, signed_urls};
use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tether-api",
        description = "Short-lived URLs for images imported by Tether: signed URLs of the customer's store or of the platform's storage (direct), and Tether's own signed proxy URLs (proxy); connection checks of a customer's bucket and the AWS policies that set it up."
    ),
    paths(signed_urls::sign, content::content, checks::check, checks::setup_aws),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// The bearer scheme of `TETHER_API_TOKENS`.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document, rendered once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
});

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new().route("/v1/openapi.json", get(document))
}

async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
