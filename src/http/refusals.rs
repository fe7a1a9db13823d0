//! The status each registry refusal answers with, shared by the admin API (JSON) and the console
//! (pages), so the two never disagree. `None` is storage trouble: 503, logged by the caller.
//!
//! Must not build responses: it only classifies.

use axum::http::StatusCode;

use crate::installations::RegistryError;
use crate::sources::listeners::RotationError;

pub fn rotation_status(e: &RotationError) -> Option<StatusCode> {
    Some(match e {
        RotationError::NoListener(_) | RotationError::NoEndpoint(_) => StatusCode::NOT_FOUND,
        RotationError::Active(_) | RotationError::Expired(_) => StatusCode::CONFLICT,
        RotationError::ExpiryInPast => StatusCode::UNPROCESSABLE_ENTITY,
        RotationError::Database(_) => return None,
    })
}

pub fn registry_status(e: &RegistryError) -> Option<StatusCode> {
    Some(match e {
        RegistryError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::NameTaken(_)
        | RegistryError::TwoSecretsLive(_)
        | RegistryError::NothingToRetire(_) => StatusCode::CONFLICT,
        RegistryError::Storage(_) => return None,
    })
}
