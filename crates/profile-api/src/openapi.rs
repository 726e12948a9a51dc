//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes and the
//! model types, so it cannot drift from the code.

use utoipa::OpenApi;

use crate::model::{Profile, ProfileInput};
use crate::problem::{FieldError, Problem};
use crate::routes::{self, Health};

/// The Profile API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Statecast Profile API", description = "User profiles: read-through cached, changes published as CloudEvents."),
    paths(
        routes::get_profile,
        routes::put_profile,
        routes::patch_profile,
        routes::delete_profile,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        routes::openapi,
    ),
    components(schemas(Profile, ProfileInput, Problem, FieldError, Health)),
    tags(
        (name = "profiles", description = "Profile CRUD with ETags"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;
