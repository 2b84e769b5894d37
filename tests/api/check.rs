//! `bulkhead check` on fixture repositories: the good setup has no findings, and each finding
//! is produced by one change to it (each test copies `tests/fixtures/check/good` and makes
//! exactly that change).

use std::path::Path;
use std::process::Command;

const GOOD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/check/good");

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the good fixture with `edits` applied: (file, text to replace, replacement).
fn fixture(edits: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new(GOOD), dir.path());
    for (file, from, to) in edits {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            from.is_empty() || text.contains(from),
            "{file} lacks {from:?}"
        );
        let text = if from.is_empty() {
            to.to_string()
        } else {
            text.replace(from, to)
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn check(dir: &Path, format: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "check",
            "--config",
            "bulkhead.hcl",
            "--repo",
            "repo",
            "--format",
            format,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The ids of the findings, with the exit code.
fn findings(edits: &[(&str, &str, &str)]) -> (Option<i32>, Vec<String>) {
    let dir = fixture(edits);
    let (code, out) = check(dir.path(), "json");
    let found: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (
        code,
        found
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect(),
    )
}

fn only(edits: &[(&str, &str, &str)], id: &str) {
    let (code, ids) = findings(edits);
    assert!(
        !ids.is_empty() && ids.iter().all(|i| i == id),
        "expected only {id}, got {ids:?}"
    );
    assert_eq!(code, Some(1));
}

const CONFIG: &str = "bulkhead.hcl";
const DEV: &str = "repo/envs/dev/main.tf";
const STAGING: &str = "repo/envs/staging/main.tf";
const IAM: &str = "repo/iam/developers.tf";

#[test]
fn the_good_setup_has_no_findings() {
    assert_eq!(findings(&[]), (Some(0), vec![]));
    let dir = fixture(&[]);
    let (code, human) = check(dir.path(), "human");
    assert_eq!(
        (code, human.as_str()),
        (Some(0), "No findings: every check passed.\n")
    );
}

#[test]
fn an_environment_without_owner() {
    only(&[(CONFIG, "  owner = \"team:app\"\n", "")], "owner-missing");
}

#[test]
fn production_sharing_its_store() {
    only(
        &[
            (
                CONFIG,
                "  paths = [\"envs/prod/\"]",
                "  paths = [\"envs/prod/\"]\n  storage = \"sqlite:shared.db\"",
            ),
            (
                CONFIG,
                "  paths = [\"envs/staging/\"]",
                "  paths = [\"envs/staging/\"]\n  storage = \"sqlite:shared.db\"",
            ),
        ],
        "production-store-shared",
    );
}

#[test]
fn production_in_the_servers_shared_postgresql() {
    only(
        &[(
            CONFIG,
            "service \"ci-prod\" {}",
            "server {\n  storage = \"postgres://bulkhead:secret@db/bulkhead\"\n}\nservice \"ci-prod\" {}",
        )],
        "production-store-shared",
    );
    // Its own database on the same server: separate credentials, separate store.
    let (code, ids) = findings(&[
        (
            CONFIG,
            "service \"ci-prod\" {}",
            "server {\n  storage = \"postgres://bulkhead:secret@db/bulkhead\"\n}\nservice \"ci-prod\" {}",
        ),
        (
            CONFIG,
            "  paths = [\"envs/prod/\"]",
            "  paths = [\"envs/prod/\"]\n  storage = \"postgres://prod@db-prod/prod\"",
        ),
    ]);
    assert_eq!((code, ids), (Some(0), vec![]));
}

#[test]
fn a_person_who_can_write_production() {
    let (code, ids) = findings(&[(
        CONFIG,
        "write = [\"service:ci-prod\"]",
        "write = [\"service:ci-prod\", \"user:alice\"]",
    )]);
    assert_eq!(
        (code, ids),
        (Some(1), vec!["human-writes-production".to_string()])
    );
    // Through a custom Cedar policy too: the policy engine decides, not the config text.
    let (code, ids) = findings(&[
        (CONFIG, "team \"platform\"", "policies = [\"extra.cedar\"]\nteam \"platform\""),
        ("extra.cedar", "", "permit(principal == Bulkhead::User::\"bob\", action == Bulkhead::Action::\"state:lock\", resource == Bulkhead::Environment::\"prod\");"),
    ]);
    assert_eq!(
        (code, ids),
        (Some(1), vec!["human-writes-production".to_string()])
    );
}

#[test]
fn production_written_from_anywhere_and_proxies_trusted_from_anywhere() {
    let anywhere = [(CONFIG, "  write_from = [\"10.20.0.0/16\"]\n", "")];
    let (code, ids) = findings(&anywhere);
    assert_eq!(
        (code, ids),
        (Some(0), vec!["write-from-anywhere".to_string()])
    );
    let dir = fixture(&anywhere);
    let (_, human) = check(dir.path(), "human");
    assert!(
        human.contains("production environment prod can be written from any network")
            && human.contains("service:ci-prod has none"),
        "{human}"
    );
    // 0.0.0.0/0 is anywhere too.
    let (_, ids) = findings(&[(CONFIG, "\"10.20.0.0/16\"", "\"0.0.0.0/0\"")]);
    assert_eq!(ids, ["write-from-anywhere"]);
    only(
        &[(
            CONFIG,
            "service \"ci-prod\" {}",
            "server {\n  trusted_proxies = [\"0.0.0.0/0\"]\n}\nservice \"ci-prod\" {}",
        )],
        "trusted-proxies-anywhere",
    );
}

#[test]
fn production_without_approval() {
    only(
        &[(CONFIG, "  approval {\n    required = 1\n  }\n", "")],
        "production-unapproved",
    );
}

#[test]
fn approvers_without_the_owner_or_too_few() {
    only(
        &[(
            CONFIG,
            "    required = 1\n",
            "    required = 1\n    approvers = [\"user:alice\", \"user:bob\"]\n",
        )],
        "approvers-without-owner",
    );
    only(
        &[(
            CONFIG,
            "members = [\"pat\", \"quinn\"]",
            "members = [\"pat\"]",
        )],
        "approvers-too-few",
    );
}

#[test]
fn unmapped_and_doubly_mapped_directories() {
    only(
        &[(
            "repo/envs/qa/main.tf",
            "",
            "resource \"terraform_data\" \"x\" {}\n",
        )],
        "unmapped-directory",
    );
    only(
        &[(
            CONFIG,
            "paths = [\"envs/dev/\", \"iam/\"]",
            "paths = [\"envs/dev/\", \"iam/\", \"envs/staging/\"]",
        )],
        "doubly-mapped-directory",
    );
}

#[test]
fn shared_unlocked_and_credentialed_backends() {
    only(
        &[(STAGING, "staging/network", "dev/network")],
        "backend-shared",
    );
    only(
        &[(DEV, "    use_lockfile = true\n", "")],
        "backend-without-locking",
    );
    only(
        &[(
            DEV,
            "    use_lockfile = true\n",
            "    use_lockfile = true\n    access_key   = \"AKIAEXAMPLE\"\n",
        )],
        "backend-credentials",
    );
}

#[test]
fn a_non_production_directory_pointing_at_production() {
    let prod = std::fs::read_to_string(Path::new(GOOD).join("repo/envs/prod/main.tf")).unwrap();
    only(
        &[(STAGING, "", &prod)],
        "nonprod-backend-points-at-production",
    );
}

#[test]
fn iam_write_on_production_state_needs_a_deny() {
    // The fixture allows s3 writes on the whole bucket and denies them on env:/prod/*: it passes
    // (the_good_setup_has_no_findings). Without the Deny it fails.
    let deny = "  statement {\n    effect    = \"Deny\"\n    actions   = [\"s3:PutObject\", \"s3:DeleteObject\"]\n    resources = [\"arn:aws:s3:::acme-tfstate/env:/prod/*\"]\n  }\n";
    only(&[(IAM, deny, "")], "iam-allows-production-state-write");
    // A JSON policy with a wildcard action on the whole bucket fails the same way.
    only(
        &[(IAM, "acme-tfstate/env:/dev/*", "acme-tfstate/*")],
        "iam-allows-production-state-write",
    );
}

#[test]
fn sarif_has_the_shape_code_scanning_loads() {
    let dir = fixture(&[(DEV, "    use_lockfile = true\n", "")]);
    let (code, out) = check(dir.path(), "sarif");
    assert_eq!(code, Some(1));
    let sarif: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert!(sarif["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "bulkhead");
    let rules: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let unique: std::collections::HashSet<&str> = rules.iter().copied().collect();
    assert_eq!(rules.len(), unique.len());
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    for r in results {
        let id = r["ruleId"].as_str().unwrap();
        assert_eq!(rules[r["ruleIndex"].as_u64().unwrap() as usize], id);
        assert!(["error", "warning", "note"].contains(&r["level"].as_str().unwrap()));
        assert!(!r["message"]["text"].as_str().unwrap().is_empty());
        let loc = &r["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uri"], "envs/dev/main.tf");
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn codeowners_maps_paths_to_owner_handles() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["codeowners", "--config", "bulkhead.hcl"])
        .current_dir(GOOD)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\nenvs/prod/ @acme/platform\n"), "{text}");
    assert!(text.contains("\nenvs/dev/ @acme/app\n"), "{text}");
}

/// A git repository whose base commit holds the good fixture (config at the root), and whose
/// head changes a prod and a dev file and tries to make alice prod's owner.
fn review_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(GOOD).join("repo"), dir.path());
    std::fs::copy(
        Path::new(GOOD).join("bulkhead.hcl"),
        dir.path().join("bulkhead.hcl"),
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "base"]);
    git(&["tag", "base"]);
    let edit = |file: &str, from: &str, to: &str| {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from));
        std::fs::write(path, text.replace(from, to)).unwrap();
    };
    edit("envs/prod/main.tf", "10.1.0.0/16", "10.2.0.0/16");
    edit("envs/dev/main.tf", "10.0.0.0/16", "10.3.0.0/16");
    edit(
        "bulkhead.hcl",
        "  owner = \"team:platform\"\n  paths = [\"envs/prod/\"]",
        "  owner = \"user:alice\"\n  paths = [\"envs/prod/\"]",
    );
    git(&["commit", "-qam", "head"]);
    dir
}

fn review(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["review", "--base", "base", "--head", "HEAD"])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn review_names_the_environments_touched_and_the_approvals_missing() {
    let dir = review_repo();
    let (code, out) = review(dir.path(), &["--author", "alice"]);
    assert_eq!(code, Some(1), "{out}");
    // Owners come from the base revision: the change cannot make alice prod's owner.
    assert!(
        out.contains("prod (owner team:platform): MISSING: team:platform has not approved"),
        "{out}"
    );
    assert!(out.contains("dev (owner team:app): MISSING"), "{out}");
    assert!(out.contains("no environment: bulkhead.hcl"), "{out}");

    let (code, out) = review(dir.path(), &["--author", "alice", "--approved-by", "alice"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("only the author approved; team:platform must approve"),
        "{out}"
    );

    let (code, out) = review(dir.path(), &["--author", "bob", "--approved-by", "alice"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("dev (owner team:app): approved by user:alice"),
        "{out}"
    );

    let (code, out) = review(
        dir.path(),
        &[
            "--author",
            "alice",
            "--approved-by",
            "pat,bob",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["approved"], true);
    assert_eq!(json["environments"][1]["environment"], "prod");
    assert_eq!(json["environments"][1]["files"][0], "envs/prod/main.tf");
}
