//! CI files of the repository that run terraform with `-lock=false`: an apply that takes no
//! lock is refused only when it writes the state, after it has changed the infrastructure,
//! so the refusal that should have come first comes last.

use std::path::Path;

use super::{Finding, Severity};

/// The CI files looked in, relative to the repository root: single files, and directories
/// whose YAML files are all CI files.
const FILES: &[&str] = &[
    ".gitlab-ci.yml",
    ".circleci/config.yml",
    "azure-pipelines.yml",
    "bitbucket-pipelines.yml",
    "buildspec.yml",
    "Jenkinsfile",
    ".buildkite/pipeline.yml",
];
const DIRS: &[&str] = &[".github/workflows"];

/// The largest CI file read; anything larger is no CI file a person wrote.
const MAX_SIZE: u64 = 1024 * 1024;

pub fn check(repo: &Path, out: &mut Vec<Finding>) {
    let mut files: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
    for dir in DIRS {
        let Ok(entries) = std::fs::read_dir(repo.join(dir)) else {
            continue;
        };
        let mut found: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".yml") || name.ends_with(".yaml"))
            .map(|name| format!("{dir}/{name}"))
            .collect();
        found.sort();
        files.extend(found);
    }
    for file in files {
        let path = repo.join(&file);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_SIZE) {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.push(Finding {
                    id: "repo-unreadable",
                    severity: Severity::Warning,
                    file,
                    line: None,
                    message: format!("cannot read this CI file: {e}"),
                    fix: "make it readable, or check it by hand for -lock=false".into(),
                });
                continue;
            }
        };
        for (i, line) in text.lines().enumerate() {
            if line.contains("-lock=false") && !line.trim_start().starts_with('#') {
                out.push(Finding {
                    id: "ci-lock-false",
                    severity: Severity::Error,
                    file: file.clone(),
                    line: Some(i + 1),
                    message: "terraform runs with -lock=false: the backend refuses such an apply only when it writes the state, after the infrastructure has changed, and leaves the state in errored.tfstate".into(),
                    fix: "remove -lock=false; a lock that is refused should stop the run before it changes anything".into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_false_in_a_workflow_is_found_with_its_line_and_a_comment_is_not() {
        let repo = tempfile::tempdir().unwrap();
        let workflows = repo.path().join(".github/workflows");
        std::fs::create_dir_all(&workflows).unwrap();
        std::fs::write(
            workflows.join("deploy.yml"),
            "jobs:\n  apply:\n    steps:\n      # never -lock=false here\n      - run: terraform apply -auto-approve -lock=false\n",
        )
        .unwrap();
        std::fs::write(workflows.join("notes.txt"), "-lock=false\n").unwrap();
        std::fs::write(
            repo.path().join(".gitlab-ci.yml"),
            "apply:\n  script: terraform apply\n",
        )
        .unwrap();
        let mut found = Vec::new();
        check(repo.path(), &mut found);
        let at: Vec<(&str, &str, Option<usize>)> = found
            .iter()
            .map(|f| (f.id, f.file.as_str(), f.line))
            .collect();
        assert_eq!(
            at,
            [("ci-lock-false", ".github/workflows/deploy.yml", Some(5))]
        );
    }
}
