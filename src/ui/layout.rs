//! The frame every page shares: the head, the navigation with who is signed in, the banner
//! while a break-glass grant is open, and the style sheet (served from `/ui/style.css`, since
//! the pages allow no inline style or script).

use maud::{html, Markup, DOCTYPE};

use crate::changes::BreakglassGrant;

/// Who is looking, and what every page shows around its content.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The signed-in principal, as the audit log names it (`user:alice`).
    pub who: String,
    /// The session's CSRF token, carried by every form.
    pub csrf: String,
    /// The open break-glass grants of the environments the principal may read.
    pub breakglass: Vec<BreakglassGrant>,
}

impl Frame {
    /// A page of the signed-in dashboard: `title`, with `body` inside the frame.
    pub fn page(&self, title: &str, body: Markup) -> Markup {
        shell(
            title,
            html! {
                header {
                    nav {
                        a.brand href="/ui" { "bulkhead" }
                        a href="/ui" { "Environments" }
                        a href="/ui/changes" { "Changes" }
                        a href="/ui/audit" { "Audit log" }
                        span.who { "signed in as " strong { (self.who) } }
                        form.inline method="post" action="/ui/logout" {
                            (self.csrf_field())
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                @for grant in &self.breakglass {
                    div.banner role="alert" {
                        strong { "BREAK-GLASS OPEN in " (grant.environment) }
                        " — " (grant.principal) " may write without a change until "
                        (super::time(&grant.expires_at)) ". Reason: " em { (grant.reason) }
                        " (" code { (grant.id) } ")"
                    }
                }
                main { (body) }
            },
        )
    }

    /// The hidden field that proves a form came from a page of this session.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

/// The document around `body`.
pub(super) fn shell(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · bulkhead" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body { (body) }
        }
    }
}

/// A refusal or fault as a page: the sentence the API would answer, with a way back.
pub fn refusal(frame: Option<&Frame>, status: u16, sentence: &str) -> Markup {
    let body = html! {
        h1 { "Refused" }
        p.refusal role="alert" { (sentence) }
        p.muted { "HTTP " (status) }
        p { a href="/ui" { "Back to the environments" } }
    };
    match frame {
        Some(frame) => frame.page("Refused", body),
        None => shell("Refused", html! { main { (body) } }),
    }
}

/// The style sheet: readable type, tables that fit, plain colours for allow and deny, and
/// production marked.
pub const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5f6b7a; --line:#d9dee5; --bg:#f7f8fa; --card:#fff;
  --allow:#116329; --allow-bg:#dafbe1; --deny:#a40e26; --deny-bg:#ffebe9;
  --warn:#7d4e00; --warn-bg:#fff8c5; --accent:#0b5cad; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif;
  color:var(--fg); background:var(--bg); }
header { background:#16202e; color:#fff; }
nav { display:flex; gap:1.25rem; align-items:center; max-width:1200px; margin:0 auto; padding:.6rem 1rem; }
nav a { color:#cfd8e3; text-decoration:none; }
nav a:hover { color:#fff; }
nav .brand { font-weight:700; color:#fff; letter-spacing:.02em; }
nav .who { margin-left:auto; color:#cfd8e3; }
nav .who strong { color:#fff; }
main { max-width:1200px; margin:0 auto; padding:1rem; }
h1 { font-size:1.5rem; margin:.5rem 0 1rem; }
h2 { font-size:1.15rem; margin:1.5rem 0 .5rem; }
a { color:var(--accent); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:.9em; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line);
  table-layout:auto; }
th, td { text-align:left; padding:.45rem .6rem; border-bottom:1px solid var(--line); vertical-align:top;
  overflow-wrap:anywhere; }
th { background:#eef1f5; font-weight:600; font-size:.85rem; color:var(--muted); white-space:nowrap; }
tr:nth-child(even) td { background:#fbfcfd; }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:0 .45rem; border-radius:999px; font-size:.8rem; font-weight:600;
  border:1px solid transparent; white-space:nowrap; }
.badge.prod { background:var(--deny-bg); color:var(--deny); border-color:#f5b5bd; }
.badge.open { background:#ddf4ff; color:#0550ae; }
.badge.allow, .badge.approved, .badge.applied { background:var(--allow-bg); color:var(--allow); }
.badge.deny, .badge.rejected, .badge.expired, .badge.diverged { background:var(--deny-bg); color:var(--deny); }
.badge.error, .badge.pending, .badge.cancelled { background:var(--warn-bg); color:var(--warn); }
.banner { background:var(--deny); color:#fff; padding:.6rem 1rem; text-align:center; }
.banner em, .banner code { color:#fff; }
.refusal { background:var(--deny-bg); color:var(--deny); border:1px solid #f5b5bd; padding:.75rem 1rem;
  border-radius:6px; font-weight:500; }
.notice { background:var(--allow-bg); color:var(--allow); border:1px solid #aceebb; padding:.75rem 1rem;
  border-radius:6px; }
.loud { color:var(--deny); font-weight:700; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:1rem; margin:1rem 0; }
.grid { display:grid; grid-template-columns: max-content 1fr; gap:.3rem 1rem; }
.grid dt { color:var(--muted); }
.grid dd { margin:0; }
form.inline { display:inline; margin:0; }
form.filters { display:flex; flex-wrap:wrap; gap:.5rem; align-items:end; margin-bottom:1rem; }
form.filters label { display:flex; flex-direction:column; font-size:.8rem; color:var(--muted); }
input, select, textarea { font:inherit; padding:.3rem .45rem; border:1px solid var(--line); border-radius:4px; }
button { font:inherit; padding:.35rem .9rem; border-radius:4px; border:1px solid var(--line);
  background:#fff; cursor:pointer; }
button.approve { background:#1f883d; color:#fff; border-color:#1a7f37; }
button.reject { background:#cf222e; color:#fff; border-color:#a40e26; }
button.link { background:none; border:none; color:#cfd8e3; padding:0; }
button.link:hover { color:#fff; }
.decide { display:flex; gap:.75rem; align-items:center; flex-wrap:wrap; }
.decide input[name=reason] { min-width:20rem; }
.plus { color:var(--allow); } .minus { color:var(--deny); } .tilde { color:var(--warn); }
.signin { max-width:28rem; margin:4rem auto; }
.signin input[name=token] { width:100%; margin:.5rem 0 1rem; }
"#;
