//! Errors of the admin API: a status and `{"error": {"code", "message"}}`,
//! with `field` when one value is to blame. Every rejection of axum's
//! extractors is turned into that shape too.

use axum::{
    body::Bytes,
    extract::{
        rejection::{PathRejection, QueryRejection},
        FromRequest, FromRequestParts, Request,
    },
    http::{header, request::Parts, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    control::{ChangeError, PublishError},
    policy::{self, Invalid, ParseError},
};

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for scripts: `invalid_value`, `malformed_json`, `invalid_body`,
    /// `unsupported_media_type`, `payload_too_large`, `invalid_path`,
    /// `invalid_query`, `not_found`, `rule_not_found`, `class_not_found`,
    /// `class_name_mismatch`, `source_not_tracked`, `method_not_allowed`, `conflict`,
    /// `unauthorized`, `kernel_error`, `store_error`, `fleet_conflict`, `fleet_unavailable`.
    pub code: String,
    /// For people: what was wrong, naming the value.
    pub message: String,
    /// The field to blame, as a dotted path (`limits.rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `fleet_conflict`: the version of the fleet's policy that won, to
    /// make the change again against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub current_version: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, current_version: None }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
                current_version: self.current_version,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_value",
            field: Some(invalid.key.clone()),
            message: invalid.to_string(),
            current_version: None,
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(err: ChangeError) -> Self {
        match err {
            ChangeError::Invalid(invalid) => invalid.into(),
            ChangeError::DuplicateRule { ref key, .. } => {
                let field = Some(key.clone());
                Self { field, ..Self::new(StatusCode::CONFLICT, "conflict", err.to_string()) }
            }
            err @ ChangeError::NoSuchRule(_) => Self::not_found("rule_not_found", err.to_string()),
            err @ ChangeError::NoSuchSet(_) => {
                let mut api = Self::not_found("set_not_found", err.to_string());
                api.field = Some("name".into());
                api
            }
            err @ ChangeError::SetInUse { .. } => {
                Self::new(StatusCode::CONFLICT, "set_in_use", err.to_string())
            }
            err @ ChangeError::NoSuchClass(_) => {
                let mut api = Self::not_found("class_not_found", err.to_string());
                api.field = Some("name".into());
                api
            }
            err @ ChangeError::ClassNameMismatch { .. } => {
                let mut api = Self::bad_request("class_name_mismatch", err.to_string());
                api.field = Some("class.name".into());
                api
            }
            err @ ChangeError::NotBanned(_) => Self::not_found("not_banned", err.to_string()),
            err @ (ChangeError::NotTracked(_) | ChangeError::NotMetered { .. }) => {
                Self::not_found("source_not_tracked", err.to_string())
            }
            err @ ChangeError::Kernel(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "kernel_error", err.to_string())
            }
            err @ ChangeError::Store(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", err.to_string())
            }
            ChangeError::Fleet(err @ PublishError::Conflict { current }) => {
                let mut api = Self::new(StatusCode::CONFLICT, "fleet_conflict", err.to_string());
                api.current_version = Some(current);
                api
            }
            ChangeError::Fleet(err @ PublishError::Unavailable(_)) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "fleet_unavailable", err.to_string())
            }
        }
    }
}

/// A JSON body refused: a value out of range is `invalid_value` with its
/// key; a body not of the expected shape `invalid_body`; one that is no JSON
/// `malformed_json`.
impl From<ParseError<serde_json::Error>> for ApiError {
    fn from(err: ParseError<serde_json::Error>) -> Self {
        match err {
            ParseError::Invalid(invalid) => invalid.into(),
            ParseError::Format { path, source } => {
                let code = match source.classify() {
                    serde_json::error::Category::Data => "invalid_body",
                    _ => "malformed_json",
                };
                let at = if path.is_empty() { String::new() } else { format!("{path}: ") };
                Self::bad_request(code, format!("the body does not fit: {at}{source}"))
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

/// A JSON body, refused in the API's error shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Body<T>(pub T);

/// A type a request body holds, and the key its fields are named under in
/// errors (`limits.rate`, `rule.cidr`).
pub trait BodyKey {
    const KEY: &'static str;
}

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned + BodyKey,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_bytes(req, super::MAX_BODY).await?;
        // Every body of this API is an object: a struct's fields must not be
        // taken from an array by position.
        if first_byte(&bytes) != Some(b'{') {
            return Err(ApiError::bad_request("invalid_body", "the body must be a JSON object"));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = policy::parse(&mut deserializer, T::KEY).and_then(|value| {
            deserializer.end().map_err(|source| ParseError::Format { path: String::new(), source })?;
            Ok(value)
        });
        value.map(Self).map_err(Into::into)
    }
}

/// The bytes of a JSON body of at most `limit` bytes: refused when it is
/// not sent as JSON (`415`), larger (`413`) or empty.
pub async fn json_bytes(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    if !json_content_type(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with `Content-Type: application/json`",
        ));
    }
    let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|err| {
        let err = err.into_inner();
        if err.is::<http_body_util::LengthLimitError>() {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {limit} bytes"),
            )
        } else {
            ApiError::bad_request("invalid_body", format!("the body could not be read: {err}"))
        }
    })?;
    if first_byte(&bytes).is_none() {
        return Err(ApiError::bad_request("malformed_json", "the body is empty; a JSON object is expected"));
    }
    Ok(bytes)
}

/// The first byte of a body that is not white space.
pub fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// `application/json`, or a `+json` type, as axum's `Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query parameters, refused in the API's error shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A path parameter, refused in the API's error shape.
#[derive(Debug, Clone)]
pub struct PathParam(pub String);

impl<S> FromRequestParts<S> for PathParam
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
