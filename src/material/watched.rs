//! `Watched<T>`: a value built from files that are read again at every use (or every
//! second), rebuilt when their bytes change. One rule for every such file (client
//! certificates, signing keys, a Redis store's TLS files): a change that cannot be read or
//! built leaves the last good value in use, and is reported once per distinct failure;
//! with no good value yet, the failure is the answer.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// What a look at the files found.
pub enum Seen<T, E> {
    /// The first value built.
    First(Arc<T>),
    /// The bytes are the ones the value in use was built from.
    Same(Arc<T>),
    /// Changed bytes built a new value, now in use.
    Renewed(Arc<T>),
    /// The files could not be read (`unreadable`), or their new bytes not built: the last
    /// good value stays in use. `why` comes once per distinct failure (then `None`).
    Kept {
        value: Arc<T>,
        why: Option<E>,
        unreadable: bool,
    },
}

impl<T, E> Seen<T, E> {
    /// The value to use now.
    pub fn value(&self) -> &Arc<T> {
        match self {
            Seen::First(v) | Seen::Same(v) | Seen::Renewed(v) | Seen::Kept { value: v, .. } => v,
        }
    }
}

struct State<T> {
    /// The value in use and the fingerprint of the bytes it was built from.
    good: Option<([u8; 32], Arc<T>)>,
    /// The last failure reported: the fingerprint of bytes that did not build, or `None`
    /// for bytes that could not be read.
    reported: Option<Option<[u8; 32]>>,
}

pub struct Watched<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for Watched<T> {
    fn default() -> Self {
        Watched {
            state: Mutex::new(State {
                good: None,
                reported: None,
            }),
        }
    }
}

/// The fingerprint of a set of file contents, taken together.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        // Each part's length first: moving bytes between parts changes the fingerprint.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

impl<T> Watched<T> {
    /// Looks at `read` (the files' bytes just read, or why they could not be) and builds a
    /// new value from them when they changed.
    pub fn look<B, E>(
        &self,
        read: Result<B, E>,
        fingerprint_of: impl FnOnce(&B) -> [u8; 32],
        build: impl FnOnce(B) -> Result<T, E>,
    ) -> Result<Seen<T, E>, E> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(why) => return state.keep_or_fail(why, None),
        };
        let fp = fingerprint_of(&bytes);
        if let Some((good, value)) = &state.good {
            if *good == fp {
                let value = Arc::clone(value);
                // Back to the good bytes: the next failure is news again.
                state.reported = None;
                return Ok(Seen::Same(value));
            }
            // Bytes already refused are not built again (they are read every second).
            if state.reported == Some(Some(fp)) {
                return Ok(Seen::Kept {
                    value: Arc::clone(value),
                    why: None,
                    unreadable: false,
                });
            }
        }
        match build(bytes) {
            Ok(value) => {
                let value = Arc::new(value);
                let first = state.good.is_none();
                state.good = Some((fp, Arc::clone(&value)));
                state.reported = None;
                Ok(if first {
                    Seen::First(value)
                } else {
                    Seen::Renewed(value)
                })
            }
            Err(why) => state.keep_or_fail(why, Some(fp)),
        }
    }
}

impl<T> State<T> {
    fn keep_or_fail<E>(&mut self, why: E, failed: Option<[u8; 32]>) -> Result<Seen<T, E>, E> {
        let Some((_, value)) = &self.good else {
            return Err(why);
        };
        let first = self.reported != Some(failed);
        self.reported = Some(failed);
        Ok(Seen::Kept {
            value: Arc::clone(value),
            why: first.then_some(why),
            unreadable: failed.is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(
        w: &Watched<String>,
        read: Result<&str, &'static str>,
    ) -> Result<Seen<String, &'static str>, &'static str> {
        w.look(
            read,
            |b| fingerprint([b.as_bytes()]),
            |b| {
                if b.starts_with("bad") {
                    Err("does not build")
                } else {
                    Ok(b.to_string())
                }
            },
        )
    }

    #[test]
    fn the_last_good_value_stays_through_a_bad_change_reported_once() {
        let w = Watched::default();
        // Nothing good yet: a failure is the answer.
        assert!(look(&w, Err("missing")).is_err());
        assert!(look(&w, Ok("bad 1")).is_err());
        assert!(matches!(look(&w, Ok("v1")), Ok(Seen::First(v)) if *v == "v1"));
        assert!(matches!(look(&w, Ok("v1")), Ok(Seen::Same(_))));
        // A torn write, then a missing file: v1 stays, each failure said once.
        assert!(
            matches!(look(&w, Ok("bad 2")), Ok(Seen::Kept { value, why: Some(_), unreadable: false }) if *value == "v1")
        );
        assert!(matches!(
            look(&w, Ok("bad 2")),
            Ok(Seen::Kept { why: None, .. })
        ));
        assert!(matches!(
            look(&w, Err("gone")),
            Ok(Seen::Kept {
                why: Some(_),
                unreadable: true,
                ..
            })
        ));
        assert!(matches!(
            look(&w, Err("gone")),
            Ok(Seen::Kept { why: None, .. })
        ));
        // Back to the good file, then the same outage again: reported again.
        assert!(matches!(look(&w, Ok("v1")), Ok(Seen::Same(_))));
        assert!(matches!(
            look(&w, Err("gone")),
            Ok(Seen::Kept { why: Some(_), .. })
        ));
        // The completed change is put in use.
        assert!(matches!(look(&w, Ok("v2")), Ok(Seen::Renewed(v)) if *v == "v2"));
        assert!(matches!(
            look(&w, Ok("bad 2")),
            Ok(Seen::Kept { why: Some(_), .. })
        ));
    }

    #[test]
    fn moving_bytes_between_files_is_a_change() {
        assert_ne!(
            fingerprint([&b"ab"[..], b"c"]),
            fingerprint([&b"a"[..], b"bc"])
        );
    }
}
