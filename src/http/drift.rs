//! Keeping state accurate over the API: the health of states (`GET /v1/drift`), one state's
//! signals and drift (`GET /v1/drift/{env}/{name...}`), a pipeline's drift report (`POST` of
//! the refresh-only plan's JSON there) and acknowledgements (`POST ...?acknowledge` with a JSON
//! body). Every call is recorded; reports and acknowledgements with what they stored.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use serde::Deserialize;

use super::audited::{read_limited, Reply};
use super::raw::Raw;
use super::record::{Audit, Begin, Caller, Route};
use super::{ApiError, App};
use crate::audit::Record;
use crate::operations::drift::{self, Acknowledgement};
use crate::operations::{OpError, StateRequest};
use crate::policy::Action;

/// The most an acknowledgement's body may bring: a reason and a number.
const ACKNOWLEDGEMENT_LIMIT: u64 = 16 * 1024;

#[derive(Debug, Deserialize)]
struct StatusParams {
    env: Option<String>,
}

/// `GET /v1/drift[?env=E]`.
pub struct StatusAsk(Result<StatusParams, ApiError>);

impl Route for StatusAsk {
    fn action(_: &Raw) -> &'static str {
        "drift:status"
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let params = raw.query::<StatusParams>("GET /v1/drift takes ?env=ENVIRONMENT, optional");
        if let Ok(params) = &params {
            record.environment = params.env.clone();
        }
        Ok(StatusAsk(params))
    }
}

/// `GET /v1/drift[?env=E]`: the states with open signals or drift reports, of every
/// environment the caller may read (or of `E`), and when each environment was last reported.
pub async fn status(
    State(app): State<Arc<App>>,
    Begin(StatusAsk(params)): Begin<StatusAsk>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let client = raw.client()?;
    let params = params?;
    let status = drift::status(&app, &caller, client, &mut record, params.env.as_deref()).await?;
    Reply::json(StatusCode::OK, &status, false)
}

#[derive(Debug, Deserialize)]
struct StateParams {
    /// POST: an acknowledgement (a JSON body) rather than a report.
    acknowledge: Option<String>,
}

/// A request on one state's drift as it arrives.
pub struct StateAsk {
    env: String,
    name: String,
}

impl StateAsk {
    fn acknowledging(raw: &Raw) -> bool {
        raw.query::<StateParams>("")
            .is_ok_and(|p| p.acknowledge.is_some())
    }
}

impl Route for StateAsk {
    fn action(raw: &Raw) -> &'static str {
        match raw.method {
            Method::POST if StateAsk::acknowledging(raw) => Action::DriftAcknowledge.as_str(),
            Method::POST => Action::DriftReport.as_str(),
            _ => "drift:read",
        }
    }

    fn read(raw: &Raw, record: &mut Record) -> Result<Self, ApiError> {
        let (env, name) = (raw.param("env")?, raw.param("name")?);
        record.environment = Some(env.clone());
        record.state = Some(name.clone());
        Ok(StateAsk { env, name })
    }
}

/// `GET /v1/drift/{env}/{name}`: the state's signals, drift and newest report.
/// `POST /v1/drift/{env}/{name}` with the JSON of `terraform show -json` of a refresh-only
/// plan: a drift report. `POST ...?acknowledge` with `{"signal": N, "reason": "..."}` or
/// `{"drift": true, "reason": "..."}`: an acknowledgement.
pub async fn state(
    State(app): State<Arc<App>>,
    Begin(ask): Begin<StateAsk>,
    Caller(caller): Caller,
    audit: Audit,
    raw: Raw,
    body: Body,
) -> Result<Reply, ApiError> {
    let mut record = audit.record().await;
    let record = &mut *record;
    let client = raw.client()?;
    let req = StateRequest::new(&app, caller, &ask.env, &ask.name, client, None).await?;
    match raw.method {
        Method::GET => {
            let shown = drift::show(&req, record).await?;
            Reply::json(StatusCode::OK, &shown, false)
        }
        Method::POST if StateAsk::acknowledging(&raw) => {
            let bytes = read_limited(
                &raw.headers,
                body,
                ACKNOWLEDGEMENT_LIMIT,
                "acknowledgement size",
            )
            .await?;
            let ack: Acknowledgement = serde_json::from_slice(&bytes).map_err(|e| {
                OpError::BadRequest(format!(
                    "the acknowledgement is not understood ({e}): send {{\"signal\": N, \"reason\": \"...\"}} or {{\"drift\": true, \"reason\": \"...\"}}"
                ))
            })?;
            drift::acknowledge(&req, record, &ack).await?;
            Reply::json(StatusCode::OK, &ack, true)
        }
        Method::POST => {
            let reporting = drift::prepare(&req, record)?;
            let bytes =
                read_limited(&raw.headers, body, reporting.limit(), "max_plan_size").await?;
            let reported = reporting.report(record, &bytes).await?;
            Reply::json(StatusCode::CREATED, &reported, true)
        }
        _ => Err(OpError::BadRequest(
            "drift takes GET (show) and POST (a report, or ?acknowledge)".into(),
        )
        .into()),
    }
}
