//! Step-up on 403 `insufficient_scope` (RFC 6750 §3.1, the MCP authorization spec): the
//! scopes an upstream asked for beyond what a credential's token has.
//! - A machine grant may add those of its `step_up_scopes`. A challenge leaves them
//!   pending; the next step-up attempt of the refresher asks for them ([`StepUp::arm`]) and
//!   reports how it went ([`StepUp::finish`]): issued, they stay in every request; refused
//!   (`invalid_scope`), that set is not asked for again. No other attempt carries them.
//! - A user grant's are the person's to consent to: they are recorded for the next login
//!   (or connect), never sent in a refresh.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::config::StepUpRule;

/// The step-up state of one credential, under one lock so no update is lost.
pub struct StepUp {
    rule: StepUpRule,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Machine grants: scopes a token was issued with after a step-up.
    added: Vec<String>,
    /// Machine grants: scopes challenges asked for, for the next step-up attempt.
    pending: Vec<String>,
    /// Machine grants: what the step-up attempt under way asks for.
    in_request: Vec<String>,
    /// User grants: what the next login asks for besides the configured scopes.
    needed: Vec<String>,
    /// Sets of scopes the authorization server refused (`invalid_scope`).
    refused: BTreeSet<Vec<String>>,
}

/// What to do about one challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum StepUpPlan {
    /// Refresh with a step-up attempt (a machine grant): the scopes wait for it.
    Refresh { wanted: Vec<String> },
    /// A person must consent to more: the next login asks for these (a user grant).
    Login { scopes: Vec<String> },
    /// Nothing bearerd may add (outside `step_up_scopes`).
    NotAllowed,
    /// The token has what was asked for already, or the server refused this set before: a
    /// new token (or login) would not help.
    AlreadyTried,
}

/// How a step-up attempt's token request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepUpResult {
    Issued,
    /// `invalid_scope`: the server will not give this client these scopes.
    Refused,
    /// Anything else (unreachable, 5xx): they stay pending for another try.
    Failed,
}

impl StepUp {
    pub fn new(rule: StepUpRule) -> StepUp {
        StepUp {
            rule,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether step-ups are a machine grant's (bearerd asks) rather than a person's.
    pub fn is_machine(&self) -> bool {
        matches!(self.rule, StepUpRule::Machine { .. })
    }

    /// The scopes token requests carry besides the configured ones: those a step-up got,
    /// and those the step-up attempt under way asks for.
    pub fn request_scopes(&self) -> Vec<String> {
        let s = self.state();
        union(&s.added, &s.in_request)
    }

    /// What a login asks for besides the configured scopes (user grants), and what
    /// `/status` shows as `step_up_scopes` (machine grants: what was added).
    pub fn recorded(&self) -> Vec<String> {
        let s = self.state();
        match self.rule {
            StepUpRule::User => s.needed.clone(),
            StepUpRule::Machine { .. } => s.added.clone(),
        }
    }

    /// Asks the next login for these scopes too (`bearerd login`, from the sidecar's record).
    pub fn require_at_login(&self, scopes: &[String]) {
        let mut s = self.state();
        s.needed = union(&s.needed, scopes);
    }

    /// The plan for a challenge naming `challenged`, for a token that has `current`
    /// (empty: the server did not say).
    pub fn plan(&self, current: &[String], challenged: &[String]) -> StepUpPlan {
        let covered = |have: &[String]| challenged.iter().all(|s| have.contains(s));
        let mut s = self.state();
        match &self.rule {
            StepUpRule::User => {
                if challenged.is_empty() || (!current.is_empty() && covered(current)) {
                    // The user consented to all of it: the 403 is for another reason.
                    return StepUpPlan::AlreadyTried;
                }
                s.needed = union(&s.needed, challenged);
                StepUpPlan::Login {
                    scopes: union(current, &s.needed),
                }
            }
            StepUpRule::Machine { allowed } => {
                let permitted: Vec<String> = challenged
                    .iter()
                    .filter(|c| allowed.contains(c))
                    .cloned()
                    .collect();
                if permitted.is_empty() {
                    return StepUpPlan::NotAllowed;
                }
                let have = union(current, &s.added);
                let wanted = union(
                    &permitted
                        .into_iter()
                        .filter(|c| !have.contains(c))
                        .collect::<Vec<_>>(),
                    &[],
                );
                if wanted.is_empty() || s.refused.contains(&wanted) {
                    return StepUpPlan::AlreadyTried;
                }
                // Already asked for (pending, or the attempt under way): join it.
                s.pending = union(&s.pending, &wanted);
                StepUpPlan::Refresh { wanted }
            }
        }
    }

    /// A step-up attempt begins: the pending scopes are what it asks for.
    pub fn arm(&self) -> Vec<String> {
        let mut s = self.state();
        s.in_request = std::mem::take(&mut s.pending);
        s.in_request.clone()
    }

    /// The step-up attempt that asked for `asked` ended.
    pub fn finish(&self, asked: &[String], result: StepUpResult) {
        let mut s = self.state();
        s.in_request.clear();
        match result {
            StepUpResult::Issued => s.added = union(&s.added, asked),
            StepUpResult::Refused => {
                s.refused.insert(union(asked, &[]));
            }
            StepUpResult::Failed => s.pending = union(&s.pending, asked),
        }
    }
}

/// `a` ∪ `b`, sorted, without duplicates.
fn union(a: &[String], b: &[String]) -> Vec<String> {
    a.iter()
        .chain(b)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn machine() -> StepUp {
        StepUp::new(StepUpRule::Machine {
            allowed: v(&["mcp:write"]),
        })
    }

    #[test]
    fn only_the_step_up_attempt_asks_for_the_scopes() {
        let s = machine();
        assert_eq!(
            s.plan(&v(&["mcp:read"]), &v(&["mcp:admin"])),
            StepUpPlan::NotAllowed
        );
        let wanted = v(&["mcp:write"]);
        assert_eq!(
            s.plan(&v(&["mcp:read"]), &v(&["mcp:read", "mcp:write"])),
            StepUpPlan::Refresh {
                wanted: wanted.clone()
            }
        );
        assert!(
            s.request_scopes().is_empty(),
            "pending: no request carries them yet"
        );
        let asked = s.arm();
        assert_eq!(asked, wanted);
        assert_eq!(s.request_scopes(), wanted, "the step-up attempt's request");
        s.finish(&asked, StepUpResult::Refused);
        assert!(s.request_scopes().is_empty());
        assert_eq!(
            s.plan(&v(&["mcp:read"]), &v(&["mcp:write"])),
            StepUpPlan::AlreadyTried,
            "a refused set is not asked for again"
        );
    }

    #[test]
    fn issued_scopes_stay_and_failed_ones_wait_for_another_try() {
        let s = machine();
        let wanted = v(&["mcp:write"]);
        assert!(matches!(s.plan(&[], &wanted), StepUpPlan::Refresh { .. }));
        let asked = s.arm();
        s.finish(&asked, StepUpResult::Failed);
        assert_eq!(s.arm(), wanted, "pending again after a transient failure");
        s.finish(&wanted, StepUpResult::Issued);
        assert_eq!(s.request_scopes(), wanted);
        assert_eq!(s.recorded(), wanted);
        assert_eq!(s.plan(&[], &wanted), StepUpPlan::AlreadyTried);
    }

    #[test]
    fn a_user_grant_asks_the_next_login_and_never_a_refresh() {
        let s = StepUp::new(StepUpRule::User);
        assert_eq!(
            s.plan(&v(&["mcp:read"]), &v(&["mcp:write"])),
            StepUpPlan::Login {
                scopes: v(&["mcp:read", "mcp:write"])
            }
        );
        assert_eq!(s.recorded(), v(&["mcp:write"]));
        assert!(s.request_scopes().is_empty());
        assert!(s.arm().is_empty());
        // Nothing named, or nothing the token lacks: a login would not help.
        assert_eq!(s.plan(&v(&["mcp:read"]), &[]), StepUpPlan::AlreadyTried);
        assert_eq!(
            s.plan(&v(&["mcp:read", "mcp:write"]), &v(&["mcp:write"])),
            StepUpPlan::AlreadyTried
        );
    }
}
