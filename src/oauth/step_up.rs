//! Step-up on 403 `insufficient_scope` (RFC 6750 §3.1, the MCP authorization spec): the
//! scopes an upstream asked for beyond what a credential's token has.
//! - A machine grant may add those of its `step_up_scopes`: they are asked for (pending)
//!   by one refresh, and kept only once a token with them was issued; a set the server
//!   refused is not asked for again.
//! - A user grant's are the person's to consent to: they are recorded for the next login
//!   (or connect), never sent in a refresh.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::StepUpRule;

/// The scopes step-ups added to a credential's requests, and the sets that failed.
pub struct StepUp {
    rule: StepUpRule,
    /// Machine grants: scopes a token was issued with after a step-up.
    added: ArcSwap<Vec<String>>,
    /// Machine grants: scopes the step-up refresh under way asks for.
    pending: ArcSwap<Vec<String>>,
    /// User grants: what the next login asks for besides the configured scopes.
    needed: ArcSwap<Vec<String>>,
    /// Sets of added scopes the authorization server would not issue: not asked for again.
    refused: Mutex<BTreeSet<Vec<String>>>,
}

/// What to do about one challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum StepUpPlan {
    /// Refresh for these scopes too (a machine grant); they are pending until
    /// [`StepUp::commit`] or [`StepUp::abandon`].
    Refresh { wanted: Vec<String> },
    /// A person must consent to more: the next login asks for these (a user grant).
    Login { scopes: Vec<String> },
    /// Nothing bearerd may add (outside `step_up_scopes`).
    NotAllowed,
    /// The token has what was asked for already, or the server refused this set before: a
    /// new token (or login) would not help.
    AlreadyTried,
}

impl StepUp {
    pub fn new(rule: StepUpRule) -> StepUp {
        let empty = || ArcSwap::from_pointee(Vec::new());
        StepUp {
            rule,
            added: empty(),
            pending: empty(),
            needed: empty(),
            refused: Mutex::new(BTreeSet::new()),
        }
    }

    /// The scopes token requests carry besides the configured ones (machine grants).
    pub fn request_scopes(&self) -> Vec<String> {
        union(&self.added.load(), &self.pending.load())
    }

    /// What a login asks for besides the configured scopes (user grants), and what
    /// `/status` shows as `step_up_scopes` (machine grants: what was added).
    pub fn recorded(&self) -> Vec<String> {
        match self.rule {
            StepUpRule::User => self.needed.load().as_ref().clone(),
            StepUpRule::Machine { .. } => self.added.load().as_ref().clone(),
        }
    }

    /// Asks the next login for these scopes too (`bearerd login`, from the sidecar's record).
    pub fn require_at_login(&self, scopes: &[String]) {
        self.needed
            .store(Arc::new(union(&self.needed.load(), scopes)));
    }

    /// The plan for a challenge naming `challenged`, for a token that has `current`
    /// (empty: the server did not say).
    pub fn plan(&self, current: &[String], challenged: &[String]) -> StepUpPlan {
        let covered = |have: &[String]| challenged.iter().all(|s| have.contains(s));
        match &self.rule {
            StepUpRule::User => {
                if challenged.is_empty() || (!current.is_empty() && covered(current)) {
                    // The user consented to all of it: the 403 is for another reason.
                    return StepUpPlan::AlreadyTried;
                }
                self.require_at_login(challenged);
                StepUpPlan::Login {
                    scopes: union(current, &self.needed.load()),
                }
            }
            StepUpRule::Machine { allowed } => {
                if !challenged.iter().any(|s| allowed.contains(s)) {
                    return StepUpPlan::NotAllowed;
                }
                let have = union(current, &self.added.load());
                let wanted: Vec<String> = challenged
                    .iter()
                    .filter(|s| allowed.contains(s) && !have.contains(s))
                    .cloned()
                    .collect();
                let wanted = union(&wanted, &[]);
                let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                if wanted.is_empty() || refused.contains(&wanted) {
                    return StepUpPlan::AlreadyTried;
                }
                drop(refused);
                self.pending
                    .store(Arc::new(union(&self.pending.load(), &wanted)));
                StepUpPlan::Refresh { wanted }
            }
        }
    }

    /// A token with `wanted` was issued: they stay in every request from now on.
    pub fn commit(&self, wanted: &[String]) {
        self.added
            .store(Arc::new(union(&self.added.load(), wanted)));
        self.drop_pending(wanted);
    }

    /// No token with `wanted` came: they are not asked for again.
    pub fn abandon(&self, wanted: &[String]) {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(union(wanted, &[]));
        self.drop_pending(wanted);
    }

    fn drop_pending(&self, wanted: &[String]) {
        let left: Vec<String> = self
            .pending
            .load()
            .iter()
            .filter(|s| !wanted.contains(s))
            .cloned()
            .collect();
        self.pending.store(Arc::new(left));
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

    #[test]
    fn a_machine_grant_keeps_added_scopes_only_once_a_token_has_them() {
        let s = StepUp::new(StepUpRule::Machine {
            allowed: v(&["mcp:write"]),
        });
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
        assert_eq!(s.request_scopes(), wanted, "pending during the refresh");
        s.abandon(&wanted);
        assert!(
            s.request_scopes().is_empty(),
            "refused: not asked for again"
        );
        assert_eq!(
            s.plan(&v(&["mcp:read"]), &v(&["mcp:write"])),
            StepUpPlan::AlreadyTried
        );
    }

    #[test]
    fn a_committed_step_up_is_not_repeated_for_a_token_that_has_it() {
        let s = StepUp::new(StepUpRule::Machine {
            allowed: v(&["mcp:write"]),
        });
        let wanted = v(&["mcp:write"]);
        assert!(matches!(s.plan(&[], &wanted), StepUpPlan::Refresh { .. }));
        s.commit(&wanted);
        assert_eq!(s.request_scopes(), wanted);
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
        // Nothing named, or nothing the token lacks: a login would not help.
        assert_eq!(s.plan(&v(&["mcp:read"]), &[]), StepUpPlan::AlreadyTried);
        assert_eq!(
            s.plan(&v(&["mcp:read", "mcp:write"]), &v(&["mcp:write"])),
            StepUpPlan::AlreadyTried
        );
    }
}
