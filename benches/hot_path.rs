//! Micro-benchmarks of the data path (route lookup, token-slot load, request rewrite) and of
//! one refresh on the control path (a token request to a local token server, published to
//! the slot). Also counts heap allocations per request on the hot path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bearerd::config::Config;
use bearerd::config::{KeySource, SecretRef, SigningConfig};
use bearerd::material::signing::{AssertionClaims, AssertionSigner};
use bearerd::metrics::Metrics;
use bearerd::proxy::route::{has_dot_segment, RouteTable};
use bearerd::proxy::target::upstream_target;
use bearerd::proxy::{new_request_id, rewrite_request, Upstream};
use bearerd::token::credential::Credential;
use bearerd::token::grant::Grant;
use bearerd::token::subject::{SubjectKey, SubjectRegistry, SubjectTagger};
use bearerd::token::CredentialSlot;
use criterion::{black_box, criterion_group, Criterion};
use testkit::TokenServer;
// The tests' key generator: one way to write a PEM key in the project's tests and benches.
#[allow(dead_code)]
#[path = "../tests/support/keys.rs"]
mod keys;
use keys::{KeyKind, TestKey};
use pingora::http::RequestHeader;

/// Counts allocations, to show what one request costs on the heap.
struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

struct Fixture {
    rt: tokio::runtime::Runtime,
    _tokens: TokenServer,
    cred: Arc<Credential>,
    upstream: Upstream,
    routes: RouteTable,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tokens = rt
        .block_on(TokenServer::start(Duration::from_secs(3600)))
        .unwrap();
    let text = format!(
        "[credentials.api]\ngrant = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n[upstreams.api]\nurl = \"http://127.0.0.1:1/base\"\npath_prefix = \"/api\"\ncredential = \"api\"\n",
        tokens.token_url(),
        testkit::token_server::CLIENT_ID,
        testkit::token_server::CLIENT_SECRET
    );
    let config = Config::parse(Path::new("bench.toml"), &text).unwrap();
    let metrics = Arc::new(Metrics::new(["api"], ["api"]));
    let slot = CredentialSlot::new(&config.credentials[0], Arc::clone(&metrics));
    let grant = Grant::new(&config.credentials[0].grant).unwrap();
    let store = bearerd::store::open(&bearerd::config::StoreConfig::Memory, &[]).unwrap();
    let cred = Credential::new(Arc::clone(&slot), grant, store);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    rt.spawn(bearerd::token::refresher::run(Arc::clone(&cred), rx));
    std::mem::forget(_tx);
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot.current().is_none() {
        assert!(Instant::now() < deadline, "no token");
        std::thread::sleep(Duration::from_millis(5));
    }
    let upstream = Upstream::new(config.upstreams[0].clone(), slot, None, &metrics).unwrap();
    let mut prefixes: Vec<(String, usize)> = (0..9).map(|i| (format!("/svc{i}"), i + 1)).collect();
    prefixes.push(("/api".into(), 0));
    Fixture {
        rt,
        _tokens: tokens,
        cred,
        upstream,
        routes: RouteTable::new(prefixes),
    }
}

const PATH: &str = "/api/v1/items";

/// bearerd's own per-request work before the upstream request is written: path check, route,
/// token, target, request id. `dedicated`: the upstream's own listener with no base path,
/// so the target is the incoming one.
fn own_work(
    f: &Fixture,
    dedicated: bool,
) -> (
    Arc<bearerd::token::TokenSnapshot>,
    Option<http::Uri>,
    http::HeaderValue,
) {
    assert!(!has_dot_segment(black_box(PATH)));
    let (base, rest) = if dedicated {
        ("", PATH)
    } else {
        let (_, rest) = f.routes.lookup(PATH).unwrap();
        (f.upstream.config.base_path.as_str(), rest)
    };
    let token = f
        .cred
        .slot
        .current()
        .filter(|t| t.is_usable(Instant::now()))
        .unwrap();
    let target = upstream_target(base, PATH, rest, Some("limit=5")).map(|t| t.unwrap());
    (token, target, new_request_id())
}

/// A per-subject credential with `n` subjects in memory, each holding a token of its own
/// (handed over to the registry and refreshed once at the local token server).
fn subjects_fixture(f: &Fixture, n: usize) -> (Arc<SubjectRegistry>, Vec<http::HeaderValue>) {
    let text = format!(
        "[credentials.users]\ngrant = \"refresh_token\"\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nsubject_header = \"x-bearerd-subject\"\n[upstreams.users]\nurl = \"http://127.0.0.1:1/base\"\npath_prefix = \"/users\"\ncredential = \"users\"\n",
        f._tokens.token_url(),
        testkit::token_server::CLIENT_ID,
        testkit::token_server::CLIENT_SECRET
    );
    let config = Config::parse(Path::new("bench.toml"), &text).unwrap();
    let cred = &config.credentials[0];
    let registry = SubjectRegistry::new(
        cred,
        &Grant::new(&cred.grant).unwrap(),
        bearerd::store::open(&bearerd::config::StoreConfig::Memory, &[]).unwrap(),
        Arc::new(Metrics::new(["users"], ["users"])),
        None,
        SubjectTagger::new(None),
    )
    .unwrap()
    .unwrap();
    registry.attach(f.rt.handle().clone());
    let headers: Vec<http::HeaderValue> = (0..n)
        .map(|i| http::HeaderValue::from_str(&format!("user-{i}@example.com")).unwrap())
        .collect();
    f.rt.block_on(async {
        for h in &headers {
            let subject = SubjectKey::parse(h.as_bytes()).unwrap();
            let rt = f._tokens.state.seed_refresh_token_for(subject.as_str());
            registry
                .hand_over(&subject, secrecy::SecretString::from(rt))
                .await
                .unwrap();
        }
    });
    assert_eq!(registry.in_memory(), n);
    (registry, headers)
}

/// A request through a per-subject credential: the subject header checked, the subject's
/// slot found in memory, then the same work as [`one_request`] with that slot's token.
fn one_subject_request(
    f: &Fixture,
    registry: &SubjectRegistry,
    subject: &http::HeaderValue,
    req: &mut RequestHeader,
) {
    assert!(bearerd::proxy::request_head_bytes(black_box(req)) < 65536);
    let text = SubjectKey::check(black_box(subject.as_bytes())).unwrap();
    let (_key, slot) = registry.live_slot(text).unwrap();
    let (_, rest) = f.routes.lookup(PATH).unwrap();
    let token = slot
        .current()
        .filter(|t| t.is_usable(Instant::now()))
        .unwrap();
    let target = upstream_target(
        f.upstream.config.base_path.as_str(),
        PATH,
        rest,
        Some("limit=5"),
    )
    .map(|t| t.unwrap());
    let id = new_request_id();
    rewrite_request(req, &f.upstream, &token, target.as_ref(), Some(&id)).unwrap();
}

/// One request's worth of bearerd's hot-path work, the upstream request's headers included.
fn one_request(f: &Fixture, req: &mut RequestHeader, dedicated: bool) {
    // The head size check (max_request_header_bytes) runs on every request too.
    assert!(bearerd::proxy::request_head_bytes(black_box(req)) < 65536);
    let (token, target, id) = own_work(f, dedicated);
    rewrite_request(req, &f.upstream, &token, target.as_ref(), Some(&id)).unwrap();
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    c.bench_function("route_lookup", |b| {
        b.iter(|| black_box(f.routes.lookup(black_box("/api/v1/items"))))
    });
    c.bench_function("token_slot_load", |b| {
        b.iter(|| {
            black_box(
                f.cred
                    .slot
                    .current()
                    .filter(|t| t.is_usable(Instant::now()))
                    .is_some(),
            )
        })
    });
    let token = f.cred.slot.current().unwrap();
    let target: http::Uri = "/base/v1/items?limit=5".parse().unwrap();
    let id = http::HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    c.bench_function("header_injection", |b| {
        let mut req = RequestHeader::build("GET", b"/api/v1/items?limit=5", Some(8)).unwrap();
        b.iter(|| rewrite_request(&mut req, &f.upstream, &token, Some(&target), Some(&id)).unwrap())
    });
    // DPoP (RFC 9449): the same rewrite with a DPoP-bound token, which adds a proof signed
    // per request (ES256), and the signature alone.
    let dpop_token = dpop_bound(&token);
    c.bench_function("header_injection_dpop", |b| {
        let mut req = RequestHeader::build("GET", b"/api/v1/items?limit=5", Some(8)).unwrap();
        b.iter(|| {
            rewrite_request(&mut req, &f.upstream, &dpop_token, Some(&target), Some(&id)).unwrap()
        })
    });
    let key = dpop_token.dpop.as_ref().unwrap();
    c.bench_function("dpop_proof", |b| {
        b.iter(|| {
            black_box(
                key.key
                    .proof(
                        "GET",
                        "http://127.0.0.1/base/v1/items",
                        Some(&key.ath),
                        None,
                    )
                    .unwrap(),
            )
        })
    });
    c.bench_function("request_head_size", |b| {
        let mut req = RequestHeader::build("GET", b"/api/v1/items?limit=5", Some(8)).unwrap();
        one_request(&f, &mut req, false);
        b.iter(|| bearerd::proxy::request_head_bytes(black_box(&req)))
    });
    c.bench_function("hot_path_total", |b| {
        let mut req = RequestHeader::build("GET", b"/api/v1/items?limit=5", Some(8)).unwrap();
        b.iter(|| one_request(&f, &mut req, false))
    });
    // Per-subject credentials: the same request, its token taken from the subject's slot,
    // with one subject in memory and with 10,000 (a DashMap lookup by the header's text).
    for n in [1usize, 10_000] {
        let (registry, headers) = subjects_fixture(&f, n);
        let mut next = 0usize;
        c.bench_function(&format!("hot_path_total_per_subject_{n}"), |b| {
            let mut req = RequestHeader::build("GET", b"/api/v1/items?limit=5", Some(8)).unwrap();
            b.iter(|| {
                // A different subject each time, spread over all of them.
                next = (next + 7919) % headers.len();
                one_subject_request(&f, &registry, &headers[next], &mut req)
            })
        });
        registry.stop_all();
    }
    c.bench_function("hot_path_total_dedicated", |b| {
        let mut req = RequestHeader::build("GET", b"/api/v1/items?limit=5", Some(8)).unwrap();
        b.iter(|| one_request(&f, &mut req, true))
    });
    // Off the hot path (once per token request), but it is what a secretless credential
    // adds to each refresh: reading the key (cached while the file is unchanged) and
    // signing a fresh assertion.
    for (name, pem) in signing_keys() {
        let file = std::env::temp_dir().join(format!("bearerd-bench-{name}.pem"));
        std::fs::write(&file, pem).unwrap();
        let signer = AssertionSigner::new(SigningConfig {
            key: KeySource::Pem(SecretRef::File(file)),
            key_id: None,
            alg: None,
            audience: None,
        });
        c.bench_function(&format!("client_assertion_{name}"), |b| {
            b.iter(|| {
                let key = signer.current_key().unwrap();
                let claims = AssertionClaims {
                    issuer: "client",
                    subject: "client",
                    audience: "https://idp.example.com/token",
                    scope: None,
                };
                black_box(signer.sign(&key, &claims).unwrap())
            })
        });
    }
    c.bench_function("refresh_control_path", |b| {
        b.iter(|| {
            f.rt.block_on(async {
                let target = f.cred.slot.demand_manual();
                assert!(
                    f.cred
                        .slot
                        .wait_attempts(target, Duration::from_secs(10))
                        .await
                );
            })
        })
    });
}

/// `token` as if it were DPoP-bound to a new key.
fn dpop_bound(token: &bearerd::token::TokenSnapshot) -> bearerd::token::TokenSnapshot {
    let access = secrecy::SecretString::from("tok_0123456789abcdef0123456789abcdef".to_string());
    let key = Arc::new(bearerd::material::dpop::DpopKey::generate().unwrap());
    bearerd::token::TokenSnapshot {
        header: bearerd::token::authorization_header(&access, true).unwrap(),
        dpop: Some(bearerd::token::DpopBinding::new(key, &access)),
        generation: token.generation,
        issued_at: token.issued_at,
        issued_wall: token.issued_wall,
        lifetime: token.lifetime,
        usable_until: token.usable_until,
        scopes: token.scopes.clone(),
    }
}

/// One PEM private key of each kind bearerd signs with.
fn signing_keys() -> Vec<(&'static str, String)> {
    [
        ("rs256", KeyKind::Rsa),
        ("es256", KeyKind::EcP256),
        ("eddsa", KeyKind::Ed25519),
    ]
    .into_iter()
    .map(|(name, kind)| (name, TestKey::generate(kind).private_pem))
    .collect()
}

/// Heap allocations per request: bearerd's own work, and what it asks of Pingora's header
/// map. Many requests each, so that the arena's block turnover is in the average.
fn count_allocations() {
    let f = fixture();
    let req = RequestHeader::build("GET", b"/api/v1/items?limit=5", Some(8)).unwrap();
    let req = std::cell::RefCell::new(req);
    one_request(&f, &mut req.borrow_mut(), false); // warm: header map capacity
    let measure = |name: &str, work: &dyn Fn()| {
        let n = 100_000;
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..n {
            work();
        }
        let per = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64;
        println!("allocations per request, {name}: {per:.3}");
    };
    measure("bearerd's own work, path-prefix route", &|| {
        black_box(own_work(&f, false));
    });
    measure("bearerd's own work, dedicated listener", &|| {
        black_box(own_work(&f, true));
    });
    measure("+ target, Host, Authorization into the request", &|| {
        let (token, target, _) = own_work(&f, false);
        let mut req = req.borrow_mut();
        rewrite_request(&mut req, &f.upstream, &token, target.as_ref(), None).unwrap();
    });
    let resp = std::cell::RefCell::new(pingora::http::ResponseHeader::build(200, Some(8)).unwrap());
    measure(
        "+ a generated x-request-id upstream and back (Pingora's maps)",
        &|| {
            let (token, target, id) = own_work(&f, false);
            let mut req = req.borrow_mut();
            rewrite_request(&mut req, &f.upstream, &token, target.as_ref(), Some(&id)).unwrap();
            resp.borrow_mut().insert_header("x-request-id", id).unwrap();
        },
    );
}

criterion_group!(group, benches);

fn main() {
    count_allocations();
    group();
    Criterion::default().configure_from_args().final_summary();
}
