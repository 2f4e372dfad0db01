//! How one subject becomes a running credential: its grant (a refresh-token grant on the
//! shared endpoint, or an on-behalf-of exchange with the request's token), its store, the
//! durable rotation, and its refresher task on the control runtime. The registry decides
//! *when* a subject starts; this decides *what* starts.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use tracing::Instrument;

use super::SubjectKey;
use crate::config::CredentialConfig;
use crate::grant::{Grant, TokenExchange, TokenExchangeConfig};
use crate::metrics::Metrics;
use crate::oauth::TokenEndpoint;
use crate::store::{MemoryStore, TokenStore};
use crate::token::credential::Credential;
use crate::token::rotation::{carry_rotations, RotationHelper};
use crate::token::CredentialSlot;

pub(super) struct SubjectStarter {
    pub credential: Arc<str>,
    pub credential_config: CredentialConfig,
    /// The client and discovery every subject shares.
    pub endpoint: Arc<TokenEndpoint>,
    /// On behalf of: the exchange each subject's grant runs with its user's token.
    pub exchange: Option<TokenExchangeConfig>,
    pub store: Arc<dyn TokenStore>,
    pub metrics: Arc<Metrics>,
    pub rotation_helper: Option<Arc<RotationHelper>>,
    /// The control runtime, where subjects' refreshers run (set when it starts).
    pub runtime: OnceLock<tokio::runtime::Handle>,
    /// Where subjects' slots send their events.
    pub events: OnceLock<Arc<crate::events::EventBus>>,
}

impl SubjectStarter {
    /// A subject's credential and its refresher task, in `span`; the sender stops the
    /// task (`stopped`: it starts stopped, at shutdown).
    pub fn start(
        &self,
        subject: &SubjectKey,
        subject_token: Option<&secrecy::SecretString>,
        stopped: bool,
        span: tracing::Span,
        floor: u64,
    ) -> (Arc<Credential>, watch::Sender<bool>) {
        let store_key = subject.store_key(&self.credential);
        let (mut grant, store) = match (&self.exchange, subject_token) {
            // An exchanged token is kept in memory only: it is worth nothing without the
            // user's token, which bearerd never stores.
            (Some(exchange), Some(token)) => (
                Grant::of(TokenExchange::on_behalf_of(
                    Arc::clone(&self.endpoint),
                    exchange,
                    token.clone(),
                )),
                Arc::new(MemoryStore::new()) as Arc<dyn TokenStore>,
            ),
            _ => (
                Grant::for_subject(Arc::clone(&self.endpoint)),
                Arc::clone(&self.store),
            ),
        };
        carry_rotations(
            &mut grant,
            &*store,
            self.rotation_helper.as_ref(),
            &store_key,
        );
        let slot = CredentialSlot::new(&self.credential_config, Arc::clone(&self.metrics));
        // A user's consent to more scopes is recorded where the next connect reads it (a
        // machine step-up is never a per-subject credential's: config refuses it).
        let step_up = self.endpoint.step_up();
        if !step_up.is_machine() {
            slot.attach_step_up(step_up);
        }
        let credential = Credential::with_store_key(slot, grant, store, Arc::from(store_key));
        credential.refuse_older_than(floor);
        let (stop, stop_seen) = watch::channel(stopped);
        let task =
            crate::token::refresher::run(Arc::clone(&credential), stop_seen).instrument(span);
        match self
            .runtime
            .get()
            .cloned()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        {
            Some(rt) => {
                rt.spawn(task);
            }
            None => tracing::error!(
                credential = &*self.credential,
                "no runtime for a subject's refresher; it is served without refreshes"
            ),
        }
        (credential, stop)
    }
}
