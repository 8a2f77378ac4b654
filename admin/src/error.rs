//! The error every admin call answers with when it refuses: a status, a code, a message, and
//! the problems of a refused configuration with their paths.

use ringway_policy::{ConfigError, ConfigErrors};

/// An answer the API turns into an HTTP error.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<ConfigError>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), problems: Vec::new() }
    }

    pub fn invalid(errors: ConfigErrors) -> Self {
        ApiError {
            status: 400,
            code: "invalid_config",
            message: format!("{} problem(s) in the configuration", errors.0.len()),
            problems: errors.0,
        }
    }
}
