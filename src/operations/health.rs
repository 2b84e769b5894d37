//! The health of the server's databases, as `/healthz` and `/readyz` report it: names only,
//! never a file, URL or cause (those go to the server's log), since anyone may ask.

use super::Server;

/// What `/healthz` and `/readyz` report: each database that does not answer, and each
/// environment that could not be opened at start.
#[derive(serde::Serialize)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<Unhealthy>,
}

#[derive(serde::Serialize)]
pub struct Unhealthy {
    /// An environment's name, or `server` for the server's own database.
    pub database: String,
    pub reason: String,
}

impl Server {
    /// Every database that does not answer and every environment that is not served.
    pub async fn health(&self) -> Health {
        let mut unavailable: Vec<Unhealthy> = self
            .stores
            .unavailable_environments()
            .into_iter()
            // No file, URL or cause to a caller who has not authenticated: the log has them.
            .map(|(name, _)| Unhealthy {
                database: name.to_string(),
                reason: "its database cannot be opened; the server's log says why".into(),
            })
            .collect();
        for (name, db) in self.stores.chains() {
            if let Err(e) = db.ping().await {
                tracing::error!(database = %name, error = %e, "health check failed");
                unavailable.push(Unhealthy {
                    reason: format!("the database of {name} does not answer"),
                    database: name,
                });
            }
        }
        unavailable.sort_by(|a, b| a.database.cmp(&b.database));
        Health {
            status: if unavailable.is_empty() {
                "ok"
            } else {
                "degraded"
            },
            unavailable,
        }
    }
}
