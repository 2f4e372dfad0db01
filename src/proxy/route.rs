//! Which upstream a request path belongs to, and the path to send it to.

/// Path-prefix routes, longest prefix first. Prefixes match whole segments only:
/// `/crm` matches `/crm` and `/crm/x`, never `/crmx`.
pub struct RouteTable {
    routes: Vec<(String, usize)>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<(String, usize)>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        RouteTable { routes }
    }

    /// The upstream index and the rest of the path after the prefix.
    pub fn lookup<'p>(&self, path: &'p str) -> Option<(usize, &'p str)> {
        self.routes.iter().find_map(|(prefix, idx)| {
            let rest = path.strip_prefix(prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((*idx, rest))
        })
    }
}

/// The upstream request target: base path + rest (+ query). An empty result becomes `/`.
pub fn upstream_target(base_path: &str, rest: &str, query: Option<&str>) -> String {
    // The exact length: the string then becomes the URI's bytes without a second allocation.
    let path_len = (base_path.len() + rest.len()).max(1);
    let mut target = String::with_capacity(path_len + query.map_or(0, |q| q.len() + 1));
    target.push_str(base_path);
    target.push_str(rest);
    if target.is_empty() {
        target.push('/');
    }
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let t = RouteTable::new(vec![
            ("/a".into(), 0),
            ("/a/b".into(), 1),
            ("/crm".into(), 2),
        ]);
        assert_eq!(t.lookup("/a/b/c"), Some((1, "/c")));
        assert_eq!(t.lookup("/a/bc"), Some((0, "/bc")));
        assert_eq!(t.lookup("/crm"), Some((2, "")));
        assert_eq!(t.lookup("/crmx"), None);
        assert_eq!(t.lookup("/"), None);
    }

    #[test]
    fn builds_targets() {
        assert_eq!(upstream_target("/api", "/x", Some("q=1")), "/api/x?q=1");
        assert_eq!(upstream_target("", "", None), "/");
        assert_eq!(upstream_target("/api", "", None), "/api");
    }
}
