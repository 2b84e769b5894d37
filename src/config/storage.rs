//! Where the server's databases are: the kind of database a `storage` URL names, the URL
//! checked without connecting and shown without its password, and the location of the
//! server-wide database and of each environment's.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::any::AnyConnectOptions;

use super::{Config, Environment};

/// Which kind of database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    pub fn of(url: &str) -> Option<Kind> {
        if url.starts_with("sqlite:") {
            Some(Kind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Kind::Postgres)
        } else {
            None
        }
    }
}

/// Checks a `storage` URL from the config without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    match Kind::of(url) {
        Some(_) => AnyConnectOptions::from_str(url)
            .map(|_| ())
            .map_err(|e| format!("`{}` cannot be read: {e}", redact(url))),
        None => Err(format!(
            "`{}` is not a database URL: use sqlite:PATH or postgres://USER@HOST/DATABASE, or leave storage unset for a file under the data directory",
            redact(url)
        )),
    }
}

/// A database URL as it may be shown: without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Where one database is.
pub enum Location {
    /// A SQLite file under the data directory.
    File(PathBuf),
    /// A URL from the config; for PostgreSQL, with the schema that holds this database's tables.
    Url { url: String, schema: String },
}

impl Location {
    pub fn kind(&self) -> Kind {
        match self {
            Location::File(_) => Kind::Sqlite,
            Location::Url { url, .. } => Kind::of(url).unwrap_or(Kind::Sqlite),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Location::File(path) => path.display().to_string(),
            Location::Url { url, schema } => match self.kind() {
                Kind::Sqlite => url.clone(),
                Kind::Postgres => format!("{} (schema {schema})", redact(url)),
            },
        }
    }
}

impl Config {
    /// Where the server-wide database is.
    pub fn system_location(&self) -> Location {
        match &self.server.storage {
            Some(url) => Location::Url {
                url: url.clone(),
                schema: "bulkhead".into(),
            },
            None => Location::File(self.server.data_dir.join("bulkhead.db")),
        }
    }

    /// The database URL an environment's data lives in: its own `storage`, or else the server's
    /// PostgreSQL; `None` for a SQLite file of its own under the data directory.
    pub fn environment_url<'a>(&'a self, env: &'a Environment) -> Option<&'a str> {
        env.storage.as_deref().or(self
            .server
            .storage
            .as_deref()
            .filter(|url| Kind::of(url) == Some(Kind::Postgres)))
    }

    /// Where an environment's database is.
    pub fn environment_location(&self, env: &Environment) -> Location {
        match self.environment_url(env) {
            Some(url) => Location::Url {
                url: url.to_string(),
                schema: format!("{ENVIRONMENT_SCHEMA}{}", env.name),
            },
            None => Location::File(environment_file(&self.server.data_dir, &env.name)),
        }
    }
}

/// What an environment's PostgreSQL schema is named: this, then the environment's name.
pub const ENVIRONMENT_SCHEMA: &str = "bulkhead_env_";

/// Where an environment without a `storage` URL keeps its database.
pub fn environment_file(data_dir: &Path, env: &str) -> PathBuf {
    data_dir.join("environments").join(format!("{env}.db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_hidden() {
        assert!(check_url("sqlite:prod.db").is_ok());
        assert!(check_url("postgres://bulkhead@db/bulkhead").is_ok());
        assert!(check_url("mysql://db/x").is_err());
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert!(!check_url("nonsense://u:secret@db")
            .unwrap_err()
            .contains("secret"));
    }
}
