//! Configuration errors: what to fix before a layer can be built.

use std::borrow::Cow;

/// A layer, key or quota could not be built from the configuration it was given.
///
/// The message names the setting and says what to change; it never contains key
/// material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    setting: &'static str,
    reason: Cow<'static, str>,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The setting that is wrong, e.g. `"key"` or `"cookie"`.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why it is wrong and what to do about it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
