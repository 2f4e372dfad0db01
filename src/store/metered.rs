//! Counts every store operation by its result (`bearerd_store_operations_total{op,result}`)
//! around whichever backend is configured.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus::IntCounterVec;
use tokio::sync::watch;

use super::{
    FlowStore, HelperJournal, Lease, LeaseAnswer, LocalCoordination, SaveOutcome, StoreBackend,
    StoreError, StoreHealth, StoredSet, StoredToken, TokenStore,
};

pub use crate::metrics::{StoreOp, StoreResult};

pub struct MeteredStore {
    inner: Arc<dyn TokenStore>,
    operations: IntCounterVec,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn TokenStore>, operations: IntCounterVec) -> MeteredStore {
        MeteredStore { inner, operations }
    }

    fn count<T>(&self, op: StoreOp, r: &Result<T, StoreError>, done: impl Fn(&T) -> bool) {
        let result = match r {
            Ok(v) if done(v) => StoreResult::Ok,
            Ok(_) => StoreResult::Conflict,
            Err(_) => StoreResult::Error,
        };
        self.operations
            .with_label_values(&[op.as_str(), result.as_str()])
            .inc();
    }
}

#[async_trait]
impl TokenStore for MeteredStore {
    fn backend(&self) -> StoreBackend {
        self.inner.backend()
    }

    async fn load(&self, credential: &str) -> Result<Option<StoredSet>, StoreError> {
        let r = self.inner.load(credential).await;
        self.count(StoreOp::Load, &r, |_| true);
        r
    }

    async fn save(
        &self,
        credential: &str,
        token: &StoredToken,
        expected: Option<u64>,
    ) -> Result<SaveOutcome, StoreError> {
        let r = self.inner.save(credential, token, expected).await;
        self.count(StoreOp::Save, &r, |o| {
            matches!(o, SaveOutcome::Saved { .. })
        });
        r
    }

    async fn refill(&self, credential: &str, set: &StoredSet) -> Result<bool, StoreError> {
        let r = self.inner.refill(credential, set).await;
        self.count(StoreOp::Refill, &r, |written| *written);
        r
    }

    async fn remove(&self, credential: &str) -> Result<(), StoreError> {
        let r = self.inner.remove(credential).await;
        self.count(StoreOp::Remove, &r, |_| true);
        r
    }

    async fn lease(
        &self,
        credential: &str,
        hold_for: Duration,
        settle_first: bool,
    ) -> Result<LeaseAnswer, StoreError> {
        let r = self.inner.lease(credential, hold_for, settle_first).await;
        self.count(StoreOp::Lease, &r, |a| matches!(a, LeaseAnswer::Taken(_)));
        r
    }

    async fn renew(&self, lease: &Lease, hold_for: Duration) -> Result<bool, StoreError> {
        let r = self.inner.renew(lease, hold_for).await;
        self.count(StoreOp::Renew, &r, |renewed| *renewed);
        r
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let r = self.inner.release(lease).await;
        self.count(StoreOp::Release, &r, |_| true);
        r
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix, after, limit).await
    }

    fn flow_store(self: Arc<Self>) -> Option<Arc<dyn FlowStore>> {
        Arc::clone(&self.inner).flow_store()
    }

    fn list_order(&self, key: &str) -> String {
        self.inner.list_order(key)
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<StoredSet>>, StoreError> {
        let r = self.inner.load_many(keys).await;
        self.count(StoreOp::Load, &r, |_| true);
        r
    }

    fn coordination(&self) -> &LocalCoordination {
        self.inner.coordination()
    }

    fn watch(&self, credential: &str) -> watch::Receiver<u64> {
        self.inner.watch(credential)
    }

    fn helper_journal(&self, record: &str) -> Option<HelperJournal> {
        self.inner.helper_journal(record)
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }
}
