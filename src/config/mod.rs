//! The configuration: `bulkhead.hcl` read into validated types, in two stages.
//!
//! - [`hcl`] reads the text into raw blocks and literal attributes that remember their lines;
//!   it refuses what is not a literal and knows nothing of bulkhead's blocks.
//! - `validate` turns those blocks into the model, collecting every problem with its line.
//! - `model` holds the validated types ([`Config`], [`Environment`], [`Server`], ...), their
//!   defaults and the questions asked of them; `names` and `units` the rules for names,
//!   durations and sizes; `error` the [`ConfigError`] a config that cannot be used is reported
//!   with.
//!
//! Everything past [`Config::load`] can rely on the invariants checked here: every principal
//! named in a list exists, names are unique and well formed, every environment has an owner.
//! This module reads files; it never opens a database or a socket.

mod error;
pub mod hcl;
mod model;
mod names;
pub mod storage;
mod units;
mod validate;

use std::path::Path;

pub use self::error::ConfigError;
pub use self::hcl::Diagnostic;
pub use self::model::personal_name;
pub use self::model::{
    Approval, AuditSync, Binding, Breakglass, ClientAuth, Config, Connections, Environment, Jwks,
    Notify, NotifyEvent, NotifyFormat, Oidc, Personal, Pipeline, Retry, SecretSource, Server,
    Service, Subject, Template, Tls, APPLY_WINDOW, CHECKPOINT_EVERY, DEFAULT_MAX_PLAN_SIZE,
    DEFAULT_MAX_STATE_SIZE, IDENTITY_CLAIMS, IDLE_CLOSE, TOKEN_CACHE, UI_SESSION,
};
pub use self::names::environment_name_ok;
pub use self::units::parse_duration;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single(path, format!("cannot read the config file: {e}")))?;
        Config::parse(path, &text)
    }

    /// Validates config text; `path` names the file in messages and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let root = hcl::parse(text).map_err(|diagnostics| ConfigError {
            file: path.to_path_buf(),
            diagnostics,
        })?;
        validate::config(path, &root)
    }
}
