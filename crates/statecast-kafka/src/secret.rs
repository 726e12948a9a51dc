//! [`Secret`]: a string that never shows itself in `Debug`, `Display` or error messages.

use std::fmt;

/// What [`Secret`] prints instead of its value.
pub const REDACTED: &str = "[redacted]";

/// A secret string (a SASL password, a pass-through property that holds a key or password).
///
/// `Debug` prints [`REDACTED`] and there is no `Display`, so a secret cannot reach a log line or
/// an error message by formatting; the value is only handed out by [`Secret::expose`], which
/// the one place that needs it (setting the librdkafka property) calls.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: only for handing it to librdkafka.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// For clap (`--kafka-sasl-password`, `KAFKA_SASL_PASSWORD`).
impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&secret)), "Some([redacted])");
        assert_eq!(format!("{secret:#?}"), REDACTED);
        assert_eq!(secret.expose(), "hunter2");
    }
}
