//! Every metric bearerd exports, defined once. Each sidecar owns its registry (so several
//! can run in one test process), and every series for a configured credential or upstream is
//! created at startup so dashboards and alerts see zeros before the first event.

use crate::api::CredentialState;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub const TRIGGERS: [&str; 5] = ["startup", "scheduled", "on_demand", "on_401", "manual"];
pub const RESULTS: [&str; 3] = ["success", "transient_error", "permanent_error"];
pub const OUTCOMES_401: [&str; 4] = [
    "replayed_ok",
    "replayed_401",
    "not_replayable",
    "rate_limited",
];
/// Statuses whose series exist from startup; others appear when first seen.
const INITIAL_STATUSES: [&str; 5] = ["200", "401", "502", "503", "504"];

pub struct Metrics {
    registry: Registry,
    pub token_refresh_total: IntCounterVec,
    pub token_refresh_duration_seconds: HistogramVec,
    pub token_expires_in_seconds: GaugeVec,
    pub token_lifetime_seconds: GaugeVec,
    pub refresh_failing_since: GaugeVec,
    pub credential_state: IntGaugeVec,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub upstream_401_total: IntCounterVec,
    pub token_wait_seconds: HistogramVec,
    pub token_adopted_total: IntCounterVec,
    pub store_up: prometheus::IntGauge,
    pub store_operations_total: IntCounterVec,
    pub subjects: IntGaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("bearerd")
}

fn hopts(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace("bearerd")
        .buckets(buckets)
}

impl Metrics {
    pub fn new<'a>(
        credentials: impl IntoIterator<Item = &'a str> + Clone,
        upstreams: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Metrics {
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let m = Metrics {
            registry: Registry::new(),
            token_refresh_total: IntCounterVec::new(
                opts(
                    "token_refresh_total",
                    "Token refresh attempts by trigger and result.",
                ),
                &["credential", "trigger", "result"],
            )
            .expect("metric definition"),
            token_refresh_duration_seconds: HistogramVec::new(
                hopts(
                    "token_refresh_duration_seconds",
                    "Duration of token requests.",
                    latency.clone(),
                ),
                &["credential"],
            )
            .expect("metric definition"),
            token_expires_in_seconds: GaugeVec::new(
                opts(
                    "token_expires_in_seconds",
                    "Seconds until the current token expires (0 when there is none).",
                ),
                &["credential"],
            )
            .expect("metric definition"),
            token_lifetime_seconds: GaugeVec::new(
                opts(
                    "token_lifetime_seconds",
                    "The whole lifetime of the current token (0 when there is none): alerts compare what is left with it.",
                ),
                &["credential"],
            )
            .expect("metric definition"),
            refresh_failing_since: GaugeVec::new(
                opts(
                    "refresh_failing_since_timestamp_seconds",
                    "Unix time of the first failed refresh since the last success (0 while refreshes succeed): how long a credential has been failing, however slowly the backoff retries.",
                ),
                &["credential"],
            )
            .expect("metric definition"),
            credential_state: IntGaugeVec::new(
                opts(
                    "credential_state",
                    "1 for the state each credential is in, 0 for the others.",
                ),
                &["credential", "state"],
            )
            .expect("metric definition"),
            requests_total: IntCounterVec::new(
                opts(
                    "requests_total",
                    "Requests answered, by upstream and status.",
                ),
                &["upstream", "status"],
            )
            .expect("metric definition"),
            request_duration_seconds: HistogramVec::new(
                hopts(
                    "request_duration_seconds",
                    "Time from request to the response header.",
                    latency.clone(),
                ),
                &["upstream"],
            )
            .expect("metric definition"),
            upstream_401_total: IntCounterVec::new(
                opts(
                    "upstream_401_total",
                    "401 answers from upstreams, by what bearerd did about them.",
                ),
                &["upstream", "outcome"],
            )
            .expect("metric definition"),
            token_wait_seconds: HistogramVec::new(
                hopts(
                    "token_wait_seconds",
                    "Time requests waited for a token.",
                    latency,
                ),
                &["credential"],
            )
            .expect("metric definition"),
            store_up: prometheus::IntGauge::with_opts(opts(
                "store_up",
                "1 while the token store answers (always for the memory and file stores).",
            ))
            .expect("metric definition"),
            store_operations_total: IntCounterVec::new(
                opts(
                    "store_operations_total",
                    "Token store operations, by operation and result (ok, conflict: a compare-and-set that lost or a lease held elsewhere, error).",
                ),
                &["op", "result"],
            )
            .expect("metric definition"),
            subjects: IntGaugeVec::new(
                opts(
                    "subjects",
                    "Subjects of per-subject credentials held in memory, by state (never which subjects).",
                ),
                &["credential", "state"],
            )
            .expect("metric definition"),
            token_adopted_total: IntCounterVec::new(
                opts(
                    "token_adopted_total",
                    "Token sets taken from the store (written by another replica) instead of a token request.",
                ),
                &["credential"],
            )
            .expect("metric definition"),
        };
        for c in [
            Box::new(m.token_refresh_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.token_refresh_duration_seconds.clone()),
            Box::new(m.token_expires_in_seconds.clone()),
            Box::new(m.token_lifetime_seconds.clone()),
            Box::new(m.refresh_failing_since.clone()),
            Box::new(m.credential_state.clone()),
            Box::new(m.requests_total.clone()),
            Box::new(m.request_duration_seconds.clone()),
            Box::new(m.upstream_401_total.clone()),
            Box::new(m.token_wait_seconds.clone()),
            Box::new(m.token_adopted_total.clone()),
            Box::new(m.store_up.clone()),
            Box::new(m.store_operations_total.clone()),
            Box::new(m.subjects.clone()),
        ] {
            m.registry.register(c).expect("metrics are registered once");
        }
        m.store_up.set(1);
        for op in crate::store::metered::StoreOp::ALL {
            for result in crate::store::metered::RESULTS {
                m.store_operations_total
                    .with_label_values(&[op.as_str(), result]);
            }
        }
        for cred in credentials {
            for t in TRIGGERS {
                for r in RESULTS {
                    m.token_refresh_total.with_label_values(&[cred, t, r]);
                }
            }
            m.token_refresh_duration_seconds.with_label_values(&[cred]);
            m.token_expires_in_seconds.with_label_values(&[cred]);
            m.token_lifetime_seconds.with_label_values(&[cred]);
            m.refresh_failing_since.with_label_values(&[cred]);
            m.token_wait_seconds.with_label_values(&[cred]);
            m.token_adopted_total.with_label_values(&[cred]);
            for s in CredentialState::ALL {
                m.credential_state.with_label_values(&[cred, s.as_str()]);
            }
        }
        for up in upstreams {
            for s in INITIAL_STATUSES {
                m.requests_total.with_label_values(&[up, s]);
            }
            m.request_duration_seconds.with_label_values(&[up]);
            for o in OUTCOMES_401 {
                m.upstream_401_total.with_label_values(&[up, o]);
            }
        }
        m
    }

    /// Creates the `subjects` series of a per-subject credential (at zero).
    pub fn add_subject_credential(&self, credential: &str) {
        for s in CredentialState::ALL {
            self.subjects.with_label_values(&[credential, s.as_str()]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
