//! Reading a Terraform repository: every `*.tf` file, parsed with positions.

use std::collections::BTreeMap;
use std::path::Path;

use super::CheckError;
use crate::config::hcl::{self, Block, Literal};

pub struct TfFile {
    /// Relative to the repository root, with `/`.
    pub path: String,
    pub root: Block,
}

pub struct Scanned {
    pub files: Vec<TfFile>,
    /// Directory (relative, `.` for the root) → indexes into `files`.
    pub dirs: BTreeMap<String, Vec<usize>>,
    /// Files that could not be read or parsed, with why.
    pub unreadable: Vec<(String, Option<usize>, String)>,
}

impl TfFile {
    pub fn dir(&self) -> &str {
        self.path.rsplit_once('/').map_or(".", |(d, _)| d)
    }
}

pub fn scan(repo: &Path) -> Result<Scanned, CheckError> {
    if !repo.is_dir() {
        return Err(CheckError::Usage(format!(
            "--repo {}: not a directory",
            repo.display()
        )));
    }
    let mut scanned = Scanned {
        files: Vec::new(),
        dirs: BTreeMap::new(),
        unreadable: Vec::new(),
    };
    walk(repo, repo, &mut scanned)?;
    Ok(scanned)
}

fn walk(root: &Path, dir: &Path, out: &mut Scanned) -> Result<(), CheckError> {
    let read = |e| CheckError::Read {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read)?
        .collect::<Result<_, _>>()
        .map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // .git, .terraform
        }
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if name.ends_with(".tf") {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    out.unreadable.push((rel, None, e.to_string()));
                    continue;
                }
            };
            match hcl::parse_terraform(&text) {
                Ok(root) => {
                    let file = TfFile { path: rel, root };
                    out.dirs
                        .entry(file.dir().to_string())
                        .or_default()
                        .push(out.files.len());
                    out.files.push(file);
                }
                Err(diags) => {
                    let d = diags.into_iter().next();
                    out.unreadable.push((
                        rel,
                        d.as_ref().and_then(|d| d.line),
                        d.map(|d| d.message).unwrap_or_default(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The string value of an attribute, if it is a literal string.
pub fn string<'a>(block: &'a Block, name: &str) -> Option<&'a str> {
    match block
        .attrs
        .iter()
        .find(|a| a.name == name)
        .map(|a| &a.value)
    {
        Some(Literal::String(s)) => Some(s),
        _ => None,
    }
}

/// Blocks of `kind` (with their labels) anywhere directly under `block`.
pub fn blocks<'a>(block: &'a Block, kind: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    block.blocks.iter().filter(move |b| b.kind == kind)
}
