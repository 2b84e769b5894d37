//! The error a config that cannot be used is reported with: the file and every problem found
//! in it, each at its line when the line is known. It only renders; it finds nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use super::Diagnostic;

/// A config file that cannot be used, with every problem found in it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    pub(super) fn single(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            diagnostics: vec![Diagnostic {
                line: None,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match d.line {
                Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, d.message)?,
                None => write!(f, "{}: {}", self.file.display(), d.message)?,
            }
        }
        Ok(())
    }
}
