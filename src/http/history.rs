//! Who changed what, and how to undo it: a state's versions, their content and differences,
//! rollback (`/v1/history/{env}/{name...}`), and the status of every environment
//! (`/v1/status`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::audited::{authenticate, finish, Reply};
use super::raw::Raw;
use super::{ApiError, App};
use crate::operations::read::{self, Answer, Past};
use crate::operations::{rollback, StateRequest};
use crate::policy::Action;

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    /// The content of this version.
    version: Option<i64>,
    /// A diff from this version...
    from: Option<i64>,
    /// ...to this one.
    to: Option<i64>,
    /// POST: write this version's content as a new version.
    rollback_to: Option<i64>,
    /// The change request a rollback in a protected environment is for.
    change: Option<String>,
}

/// `GET /v1/history/{env}/{name}[?version=N | ?from=A&to=B]`, `POST ...?rollback_to=N[&change=ID]`.
pub async fn history(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let params = raw.query::<HistoryParams>(
        "GET takes ?version=N or ?from=A&to=B, POST takes ?rollback_to=N and optionally &change=ID",
    );
    let method = raw.method.clone();
    let past = match &params {
        Ok(p) => match (p.version, p.from, p.to) {
            (Some(n), _, _) => Past::Version(n),
            (None, None, None) => Past::Versions,
            (None, from, to) => Past::Diff { from, to },
        },
        Err(_) => Past::Versions,
    };
    let action = match method {
        Method::POST => Action::StateRollback.as_str(),
        _ => past.action(),
    };
    let mut record = raw.record(action);
    let result = async {
        let (env, name) = (raw.param("env")?, raw.param("name")?);
        record.environment = Some(env.clone());
        record.state = Some(name.clone());
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let params = params?;
        let call = StateRequest::new(&app, caller, &env, &name, peer.ip(), params.change.clone())?;
        if method == Method::POST {
            let to = params
                .rollback_to
                .ok_or_else(|| ApiError::BadRequest("POST needs ?rollback_to=VERSION".into()))?;
            let done = rollback::rollback(&call, &mut record, to).await?;
            return Reply::json(
                StatusCode::OK,
                &serde_json::json!({ "version": done.version, "rolled_back_to": done.to, "serial": done.serial }),
                true,
            );
        }
        match read::past(&call, &mut record, past).await? {
            Answer::Content(content) => Ok(Reply {
                audited: false,
                ..Reply::ok(content)
            }),
            Answer::Diff(diff) => Reply::json(StatusCode::OK, &diff, false),
            Answer::Versions(entries) => Reply::json(StatusCode::OK, &entries, false),
        }
    }
    .await;
    finish(&app, record, result).await
}

/// `GET /v1/status`: every environment the caller may read.
pub async fn status(State(app): State<Arc<App>>, raw: Raw) -> Response {
    let mut record = raw.record("status:read");
    let result = async {
        let caller = authenticate(&app, &mut record, &raw.headers).await?;
        let peer = raw.peer()?;
        let out = read::status(&app, &caller, peer.ip()).await?;
        Reply::json(StatusCode::OK, &out, false)
    }
    .await;
    finish(&app, record, result).await
}
