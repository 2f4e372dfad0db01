//! The upstream request target (path and query), rewritten when a path-prefix route strips
//! its prefix or the upstream has a base path. Cut from the per-thread arena, so building
//! it and cloning it into the upstream request (again on a replay) allocate nothing.

use http::uri::InvalidUri;
use http::Uri;

use super::arena;

/// The target for a request whose path routed with `rest` left after the prefix, or
/// `None` when the incoming target goes upstream unchanged (nothing stripped, no base
/// path): then there is nothing to build at all.
pub fn upstream_target(
    base_path: &str,
    path: &str,
    rest: &str,
    query: Option<&str>,
) -> Option<Result<Uri, InvalidUri>> {
    if base_path.is_empty() && rest.len() == path.len() {
        return None;
    }
    let path_len = base_path.len() + rest.len();
    let len = path_len.max(1) + query.map_or(0, |q| q.len() + 1);
    let bytes = arena::cut(len, |block| {
        block.extend_from_slice(base_path.as_bytes());
        block.extend_from_slice(rest.as_bytes());
        if path_len == 0 {
            block.extend_from_slice(b"/");
        }
        if let Some(q) = query {
            block.extend_from_slice(b"?");
            block.extend_from_slice(q.as_bytes());
        }
    });
    Some(Uri::from_maybe_shared(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(base: &str, path: &str, rest: &str, q: Option<&str>) -> Option<String> {
        upstream_target(base, path, rest, q).map(|u| u.unwrap().to_string())
    }

    #[test]
    fn builds_targets() {
        assert_eq!(
            target("/api", "/p/x", "/x", Some("q=1")).as_deref(),
            Some("/api/x?q=1")
        );
        assert_eq!(target("", "/p", "", None).as_deref(), Some("/"));
        assert_eq!(target("", "/p", "", Some("a")).as_deref(), Some("/?a"));
        assert_eq!(target("/api", "/p", "", None).as_deref(), Some("/api"));
        assert_eq!(target("", "/p/x", "/x", None).as_deref(), Some("/x"));
    }

    #[test]
    fn an_unchanged_target_is_not_rebuilt() {
        assert_eq!(target("", "/x/y", "/x/y", Some("q")), None);
    }

    #[test]
    fn targets_stay_intact_across_many_blocks() {
        // Held targets pin their blocks; the arena moves on to new ones.
        let held: Vec<(String, Uri)> = (0..2_000)
            .map(|i| {
                let rest = format!("/item/{i}");
                let uri = upstream_target("/base", "/p", &rest, Some("k=v")).unwrap();
                (format!("/base{rest}?k=v"), uri.unwrap())
            })
            .collect();
        for (want, uri) in &held {
            assert_eq!(&uri.to_string(), want);
        }
    }

    #[test]
    fn a_target_longer_than_a_block() {
        let rest = format!("/{}", "a".repeat(3 * arena::BLOCK));
        let uri = upstream_target("/b", "/p", &rest, None).unwrap().unwrap();
        assert_eq!(uri.path().len(), 2 + rest.len());
    }

    #[test]
    fn an_invalid_target_is_an_error() {
        assert!(upstream_target("", "/p", "/a b", None).unwrap().is_err());
    }
}
