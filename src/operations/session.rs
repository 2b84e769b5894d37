//! Signing in to the dashboard, resuming a session on each of its requests, and signing out
//! (see [`crate::identity::session`] for what a session is and when it ends).

use super::{OpError, Server};
use crate::audit::Record;
use crate::identity::session::{self, Session, SignedIn};

impl Server {
    /// Opens a session for whoever `token` proves; `record` (the sign-in) is committed with
    /// it.
    pub async fn sign_in(&self, token: &str, record: &mut Record) -> Result<SignedIn, OpError> {
        Ok(session::sign_in(
            &self.config,
            &self.stores.system,
            &self.clock,
            token,
            record,
        )
        .await?)
    }

    /// The session whose secret a browser sent, refused when it is over.
    pub async fn resume(&self, secret: &str) -> Result<Session, OpError> {
        Ok(session::resume(&self.config, &self.stores.system, &self.clock, secret).await?)
    }

    /// Ends the session whose secret a browser sent.
    pub async fn sign_out(&self, secret: &str) -> Result<bool, OpError> {
        Ok(session::sign_out(&self.stores.system, secret).await?)
    }
}
