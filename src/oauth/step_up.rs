//! Step-up on 403 `insufficient_scope` (RFC 6750 §3.1, the MCP authorization spec): the
//! scopes an upstream asked for beyond what a credential's requests carry. A machine grant
//! adds those of its `step_up_scopes` and gets a token for the union, once per scope set;
//! a user grant records them, and the next login asks for the union.

use std::collections::BTreeSet;
use std::sync::Mutex;

use arc_swap::ArcSwap;

use crate::config::StepUpRule;

/// The scopes added to a credential's token requests, and the sets tried so far.
pub struct StepUp {
    rule: StepUpRule,
    added: ArcSwap<Vec<String>>,
    tried: Mutex<BTreeSet<Vec<String>>>,
}

/// What to do about one challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum StepUpPlan {
    /// Refresh: the next token request asks for these scopes too (a machine grant).
    Refresh,
    /// A person must consent to more: the next login asks for these (a user grant).
    Login { scopes: Vec<String> },
    /// Nothing bearerd may add (outside `step_up_scopes`, or none at all).
    NotAllowed,
    /// This scope set was asked for already, and the upstream still refuses.
    AlreadyTried,
}

impl StepUp {
    pub fn new(rule: StepUpRule) -> StepUp {
        StepUp {
            rule,
            added: ArcSwap::from_pointee(Vec::new()),
            tried: Mutex::new(BTreeSet::new()),
        }
    }

    /// The scopes added so far (sent with token requests, and asked for at a login).
    pub fn added(&self) -> Vec<String> {
        self.added.load().as_ref().clone()
    }

    /// Asks for these scopes too from now on (`bearerd login`, from the sidecar's record).
    pub fn require(&self, scopes: &[String]) {
        self.added
            .store(std::sync::Arc::new(union(&self.added(), scopes)));
    }

    /// The plan for a challenge naming `challenged`, while the token held has `current`.
    pub fn plan(&self, current: &[String], challenged: &[String]) -> StepUpPlan {
        let have = union(current, &self.added());
        match &self.rule {
            StepUpRule::User => {
                // Consent is the person's: whatever the upstream asks is asked at the login.
                let scopes = union(&have, challenged);
                self.require(challenged);
                StepUpPlan::Login { scopes }
            }
            StepUpRule::Machine { allowed } => {
                let wanted: Vec<String> = challenged
                    .iter()
                    .filter(|s| allowed.contains(s))
                    .cloned()
                    .collect();
                if wanted.is_empty() {
                    return StepUpPlan::NotAllowed;
                }
                let set = union(&have, &wanted);
                let mut tried = self.tried.lock().unwrap_or_else(|p| p.into_inner());
                if !tried.insert(set) {
                    return StepUpPlan::AlreadyTried;
                }
                self.require(&wanted);
                StepUpPlan::Refresh
            }
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

    #[test]
    fn a_machine_grant_adds_only_allowed_scopes_once_per_set() {
        let s = StepUp::new(StepUpRule::Machine {
            allowed: v(&["mcp:write"]),
        });
        assert_eq!(
            s.plan(&v(&["mcp:read"]), &v(&["mcp:admin"])),
            StepUpPlan::NotAllowed
        );
        assert_eq!(
            s.plan(&v(&["mcp:read"]), &v(&["mcp:read", "mcp:write"])),
            StepUpPlan::Refresh
        );
        assert_eq!(s.added(), v(&["mcp:write"]));
        // The broader token is refused too: the same set is not asked for again.
        assert_eq!(
            s.plan(&v(&["mcp:read", "mcp:write"]), &v(&["mcp:write"])),
            StepUpPlan::AlreadyTried
        );
    }

    #[test]
    fn a_user_grant_asks_the_next_login_for_the_union() {
        let s = StepUp::new(StepUpRule::User);
        assert_eq!(
            s.plan(&v(&["mcp:read"]), &v(&["mcp:write"])),
            StepUpPlan::Login {
                scopes: v(&["mcp:read", "mcp:write"])
            }
        );
        assert_eq!(s.added(), v(&["mcp:write"]));
    }
}
