//! Every metric bearerd exports, defined once. Each sidecar owns its registry (so several
//! can run in one test process), and every series for a configured credential or upstream is
//! created at startup so dashboards and alerts see zeros before the first event.

use crate::api::CredentialState;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// An enum of a label's values, in the order they are declared: it lists its own (`ALL`)
/// and names each (`as_str`), so a value is written once.
macro_rules! labels {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $label:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}

labels! {
    /// Which listener refused a request: `listener` of `bearerd_requests_refused_total`.
    pub enum Listener {
        Proxy = "proxy",
        Admin = "admin",
    }
}

labels! {
    /// Why the trust boundary refused a request: `reason` of
    /// `bearerd_requests_refused_total`.
    pub enum RefusalReason {
        Host = "host",
        Origin = "origin",
        SecFetchSite = "sec_fetch_site",
    }
}

labels! {
    /// What became of a span: `result` of `bearerd_spans_total`.
    pub enum SpanResult {
        Exported = "exported",
        /// The collector refused it or did not answer (after a retry).
        Failed = "failed",
        /// The queue was full: the data path never waits for the exporter.
        Dropped = "dropped",
    }
}

labels! {
    /// How a config reload ended: `result` of `bearerd_config_reloads_total`.
    pub enum ReloadResult {
        Applied = "applied",
        Refused = "refused",
        RestartRequired = "restart_required",
    }
}

labels! {
    /// What started a refresh: `trigger` of `bearerd_token_refresh_total`.
    pub enum Trigger {
        Startup = "startup",
        Scheduled = "scheduled",
        OnDemand = "on_demand",
        On401 = "on_401",
        Manual = "manual",
        /// An upstream's 403 `insufficient_scope`, for a token with more scopes.
        StepUp = "step_up",
    }
}

labels! {
    /// What bearerd did about an upstream's 403 `insufficient_scope`: `outcome` of
    /// `bearerd_step_up_total`.
    pub enum StepUpOutcome {
        /// A token with the union of scopes was got and the request replayed.
        SteppedUp = "stepped_up",
        /// No challenged scope is in the credential's `step_up_scopes`: the 403 passes.
        NotAllowed = "not_allowed",
        /// This scope set was asked for already: the 403 passes.
        AlreadyTried = "already_tried",
        /// The token request for the union failed, or the body cannot be sent again.
        Failed = "failed",
        /// A user grant: the app is told to log in again for the union.
        RequiresReauth = "requires_reauth",
    }
}

labels! {
    /// How a refresh ended: `result` of `bearerd_token_refresh_total`.
    pub enum RefreshResult {
        Success = "success",
        TransientError = "transient_error",
        PermanentError = "permanent_error",
    }
}

labels! {
    /// What bearerd did about an upstream's 401: `outcome` of `bearerd_upstream_401_total`.
    pub enum Outcome401 {
        ReplayedOk = "replayed_ok",
        Replayed401 = "replayed_401",
        NotReplayable = "not_replayable",
        RateLimited = "rate_limited",
    }
}

labels! {
    /// A store operation: `op` of `bearerd_store_operations_total`.
    pub enum StoreOp {
        Load = "load",
        Save = "save",
        Refill = "refill",
        Remove = "remove",
        Lease = "lease",
        Renew = "renew",
        Release = "release",
    }
}

labels! {
    /// How a store operation ended: done, refused by the store's rules (a compare-and-set
    /// that lost, a lease someone else holds), or the store failed.
    pub enum StoreResult {
        Ok = "ok",
        Conflict = "conflict",
        Error = "error",
    }
}

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
    pub step_up_total: IntCounterVec,
    pub token_wait_seconds: HistogramVec,
    pub token_adopted_total: IntCounterVec,
    pub store_up: prometheus::IntGauge,
    pub store_operations_total: IntCounterVec,
    pub subjects: IntGaugeVec,
    pub requests_refused_total: IntCounterVec,
    pub events_dropped_total: IntCounterVec,
    pub webhook_deliveries_total: IntCounterVec,
    pub drill_active: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub spans_total: IntCounterVec,
}

/// Buckets of the latency histograms, in seconds.
const LATENCY: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A registry that each metric joins as it is defined (names are fixed: a failure is a bug).
struct Registering(Registry);

impl Registering {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metrics are registered once");
        c
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(opts(name, help), labels).expect("metric definition"))
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.register(GaugeVec::new(opts(name, help), labels).expect("metric definition"))
    }

    fn int_gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(opts(name, help), labels).expect("metric definition"))
    }

    fn single_gauge(&self, name: &str, help: &str) -> prometheus::IntGauge {
        self.register(prometheus::IntGauge::with_opts(opts(name, help)).expect("metric definition"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        let opts = hopts(name, help, buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("metric definition"))
    }
}

/// Events' sinks, drills, reloads and spans, in `Metrics`' order.
struct OperatorMetrics(
    IntCounterVec,
    IntCounterVec,
    IntGaugeVec,
    IntCounterVec,
    IntCounterVec,
);

impl Registering {
    /// What operators are told through: events' sinks and drills.
    fn operator_metrics(&self) -> OperatorMetrics {
        OperatorMetrics(
            self.counter(
                "events_dropped_total",
                "Events (and audit records) a sink could not take because its queue was full, by sink (webhook, audit, stream); nothing waited for them.",
                &["sink"],
            ),
            self.counter(
                "webhook_deliveries_total",
                "Webhook delivery attempts, by result (delivered, retried, abandoned).",
                &["result"],
            ),
            self.int_gauge(
                "drill_active",
                "1 while a failure drill runs on the credential: its failures are rehearsed, not real.",
                &["credential"],
            ),
            self.counter(
                "config_reloads_total",
                "Config reloads, by result (applied, refused: invalid or could not be built, restart_required: it changes what only a restart can).",
                &["result"],
            ),
            self.counter(
                "spans_total",
                "OpenTelemetry spans ([telemetry] otlp_endpoint), by result (exported, failed, dropped).",
                &["result"],
            ),
        )
    }
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
        let r = Registering(Registry::new());
        let op = r.operator_metrics();
        let m = Metrics {
            token_refresh_total: r.counter(
                "token_refresh_total",
                "Token refresh attempts by trigger and result.",
                &["credential", "trigger", "result"],
            ),
            token_refresh_duration_seconds: r.histogram(
                "token_refresh_duration_seconds",
                "Duration of token requests.",
                &LATENCY,
                &["credential"],
            ),
            token_expires_in_seconds: r.gauge(
                "token_expires_in_seconds",
                "Seconds until the current token expires (0 when there is none).",
                &["credential"],
            ),
            token_lifetime_seconds: r.gauge(
                "token_lifetime_seconds",
                "The whole lifetime of the current token (0 when there is none): alerts compare what is left with it.",
                &["credential"],
            ),
            refresh_failing_since: r.gauge(
                "refresh_failing_since_timestamp_seconds",
                "Unix time of the first failed refresh since the last success (0 while refreshes succeed): how long a credential has been failing, however slowly the backoff retries.",
                &["credential"],
            ),
            credential_state: r.int_gauge(
                "credential_state",
                "1 for the state each credential is in, 0 for the others.",
                &["credential", "state"],
            ),
            requests_total: r.counter(
                "requests_total",
                "Requests answered, by upstream and status.",
                &["upstream", "status"],
            ),
            request_duration_seconds: r.histogram(
                "request_duration_seconds",
                "Time from request to the response header.",
                &LATENCY,
                &["upstream"],
            ),
            upstream_401_total: r.counter(
                "upstream_401_total",
                "401 answers from upstreams, by what bearerd did about them.",
                &["upstream", "outcome"],
            ),
            step_up_total: r.counter(
                "step_up_total",
                "403 insufficient_scope answers from upstreams, by credential and what bearerd did about them.",
                &["credential", "outcome"],
            ),
            token_wait_seconds: r.histogram(
                "token_wait_seconds",
                "Time requests waited for a token.",
                &LATENCY,
                &["credential"],
            ),
            store_operations_total: r.counter(
                "store_operations_total",
                "Token store operations, by operation and result (ok, conflict: a compare-and-set that lost or a lease held elsewhere, error).",
                &["op", "result"],
            ),
            subjects: r.int_gauge(
                "subjects",
                "Subjects of per-subject credentials held in memory, by state (never which subjects).",
                &["credential", "state"],
            ),
            requests_refused_total: r.counter(
                "requests_refused_total",
                "Requests the trust boundary refused (a Host, Origin or Sec-Fetch-Site of a web page), by listener and reason; none was forwarded.",
                &["listener", "reason"],
            ),
            events_dropped_total: op.0,
            webhook_deliveries_total: op.1,
            drill_active: op.2,
            config_reloads_total: op.3,
            spans_total: op.4,
            token_adopted_total: r.counter(
                "token_adopted_total",
                "Token sets taken from the store (written by another replica) instead of a token request.",
                &["credential"],
            ),
            store_up: r.single_gauge(
                "store_up",
                "1 while the token store answers (always for the memory and file stores).",
            ),
            registry: r.0,
        };
        m.create_series(credentials, upstreams);
        m
    }

    /// Every series of the configured credentials and upstreams, at zero, so dashboards
    /// and alerts see them before the first event.
    fn create_series<'a>(
        &self,
        credentials: impl IntoIterator<Item = &'a str>,
        upstreams: impl IntoIterator<Item = &'a str>,
    ) {
        let m = self;
        m.store_up.set(1);
        for r in ReloadResult::ALL {
            m.config_reloads_total.with_label_values(&[r.as_str()]);
        }
        for listener in Listener::ALL {
            for reason in RefusalReason::ALL {
                m.requests_refused_total
                    .with_label_values(&[listener.as_str(), reason.as_str()]);
            }
        }
        for op in StoreOp::ALL {
            for result in StoreResult::ALL {
                m.store_operations_total
                    .with_label_values(&[op.as_str(), result.as_str()]);
            }
        }
        for cred in credentials {
            m.add_credential(cred);
        }
        for up in upstreams {
            m.add_upstream(up);
        }
    }

    /// Every series of one credential, at zero (at startup, and when a reload adds it).
    pub fn add_credential(&self, cred: &str) {
        let m = self;
        for t in Trigger::ALL {
            for r in RefreshResult::ALL {
                m.token_refresh_total
                    .with_label_values(&[cred, t.as_str(), r.as_str()]);
            }
        }
        m.token_refresh_duration_seconds.with_label_values(&[cred]);
        m.token_expires_in_seconds.with_label_values(&[cred]);
        m.token_lifetime_seconds.with_label_values(&[cred]);
        m.refresh_failing_since.with_label_values(&[cred]);
        m.token_wait_seconds.with_label_values(&[cred]);
        m.token_adopted_total.with_label_values(&[cred]);
        m.drill_active.with_label_values(&[cred]);
        for o in StepUpOutcome::ALL {
            m.step_up_total.with_label_values(&[cred, o.as_str()]);
        }
        for s in CredentialState::ALL {
            m.credential_state.with_label_values(&[cred, s.as_str()]);
        }
    }

    /// Drops a credential's series (a reload removed it): its last state must not hold
    /// an alert forever.
    pub fn remove_credential(&self, cred: &str) {
        let m = self;
        for t in Trigger::ALL {
            for r in RefreshResult::ALL {
                let _ = m
                    .token_refresh_total
                    .remove_label_values(&[cred, t.as_str(), r.as_str()]);
            }
        }
        let _ = m
            .token_refresh_duration_seconds
            .remove_label_values(&[cred]);
        let _ = m.token_expires_in_seconds.remove_label_values(&[cred]);
        let _ = m.token_lifetime_seconds.remove_label_values(&[cred]);
        let _ = m.refresh_failing_since.remove_label_values(&[cred]);
        let _ = m.token_wait_seconds.remove_label_values(&[cred]);
        let _ = m.token_adopted_total.remove_label_values(&[cred]);
        let _ = m.drill_active.remove_label_values(&[cred]);
        for o in StepUpOutcome::ALL {
            let _ = m.step_up_total.remove_label_values(&[cred, o.as_str()]);
        }
        for s in CredentialState::ALL {
            let _ = m.credential_state.remove_label_values(&[cred, s.as_str()]);
            let _ = m.subjects.remove_label_values(&[cred, s.as_str()]);
        }
    }

    /// Drops an upstream's series (a reload removed it); statuses seen since start go too.
    pub fn remove_upstream(&self, up: &str) {
        let m = self;
        for family in m.registry.gather() {
            if family.name() != "bearerd_requests_total" {
                continue;
            }
            for metric in family.get_metric() {
                let labels: Vec<(&str, &str)> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels.contains(&("upstream", up)) {
                    if let Some((_, status)) = labels.iter().find(|(k, _)| *k == "status") {
                        let _ = m.requests_total.remove_label_values(&[up, status]);
                    }
                }
            }
        }
        let _ = m.request_duration_seconds.remove_label_values(&[up]);
        for o in Outcome401::ALL {
            let _ = m.upstream_401_total.remove_label_values(&[up, o.as_str()]);
        }
    }

    /// Every series of one upstream, at zero.
    pub fn add_upstream(&self, up: &str) {
        let m = self;
        for s in INITIAL_STATUSES {
            m.requests_total.with_label_values(&[up, s]);
        }
        m.request_duration_seconds.with_label_values(&[up]);
        for o in Outcome401::ALL {
            m.upstream_401_total.with_label_values(&[up, o.as_str()]);
        }
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
