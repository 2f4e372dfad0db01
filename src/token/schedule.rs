//! When to refresh a token, and how long to wait after a failure. Pure functions of the
//! policy and a random source, so they are tested here without clocks.

use std::time::Duration;

use rand::Rng;

use crate::config::RefreshPolicy;

/// A margin never takes more than this share of a token's lifetime, so a 2-second token
/// rotates as smoothly as a 1-hour one.
const MAX_MARGIN_SHARE: f64 = 0.25;
/// A token with less than this share of its lifetime left (capped at `MAX_FLOOR`) is no
/// longer handed out: it would expire on its way to the upstream.
const FLOOR_SHARE: f64 = 0.05;
const MAX_FLOOR: Duration = Duration::from_secs(2);
const JITTER: f64 = 0.10;

/// The delay after issue at which a token of `lifetime` is refreshed: the earlier of
/// `ratio × lifetime` and `lifetime − margin`, ±10 % jitter, and always before expiry.
pub fn refresh_delay(policy: &RefreshPolicy, lifetime: Duration, rng: &mut impl Rng) -> Duration {
    let l = lifetime.as_secs_f64();
    let margin = policy.margin.as_secs_f64().min(l * MAX_MARGIN_SHARE);
    let base = (l * policy.ratio).min(l - margin);
    let jittered = base * rng.gen_range((1.0 - JITTER)..=(1.0 + JITTER));
    let latest = l - expiry_floor(lifetime).as_secs_f64();
    Duration::from_secs_f64(jittered.min(latest).max(0.0))
}

/// The least time left on a token that is still handed out to requests.
pub fn expiry_floor(lifetime: Duration) -> Duration {
    lifetime.mul_f64(FLOOR_SHARE).min(MAX_FLOOR)
}

/// Exponential backoff with full jitter, honouring a server's `Retry-After`.
/// `failures` counts consecutive failures, starting at 1.
pub fn backoff_delay(
    policy: &RefreshPolicy,
    failures: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let exp = policy
        .backoff_base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(policy.backoff_cap);
    // Full jitter, with a small floor so a zero draw does not retry in a tight loop.
    let floor = policy.backoff_base / 10;
    let drawn = exp.mul_f64(rng.gen_range(0.0..=1.0)).max(floor);
    match retry_after {
        Some(ra) => drawn.max(ra.min(policy.backoff_cap)),
        None => drawn,
    }
}

/// The request-triggered rate limit: the configured interval, capped at half the lifetime
/// so short-lived tokens can still be replaced when an upstream rejects them.
pub fn min_interval(policy: &RefreshPolicy, lifetime: Option<Duration>) -> Duration {
    match lifetime {
        Some(l) => policy.min_interval.min(l / 2),
        None => policy.min_interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy() -> RefreshPolicy {
        RefreshPolicy::default()
    }

    #[test]
    fn hour_long_tokens_refresh_at_the_ratio() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let d = refresh_delay(&policy(), Duration::from_secs(3600), &mut rng).as_secs_f64();
            assert!((2880.0 * 0.9..=2880.0 * 1.1).contains(&d), "{d}");
        }
    }

    #[test]
    fn short_tokens_refresh_before_expiry_with_room_to_spare() {
        let mut rng = StdRng::seed_from_u64(2);
        for lifetime in [1.0, 2.0, 3.0, 10.0] {
            for _ in 0..100 {
                let d = refresh_delay(&policy(), Duration::from_secs_f64(lifetime), &mut rng)
                    .as_secs_f64();
                // The 60 s margin is capped to a quarter of the lifetime.
                assert!(d >= lifetime * 0.75 * 0.9 - 1e-9, "{lifetime}: {d}");
                assert!(d <= lifetime * 0.95 + 1e-9, "{lifetime}: {d}");
            }
        }
    }

    #[test]
    fn margin_wins_when_it_comes_first() {
        let p = RefreshPolicy {
            margin: Duration::from_secs(600),
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let d = refresh_delay(&p, Duration::from_secs(3600), &mut rng).as_secs_f64();
        assert!((2700.0 * 0.9..=2700.0 * 1.1).contains(&d), "{d}");
    }

    #[test]
    fn backoff_grows_to_the_cap_and_honours_retry_after() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(4);
        for failures in 1..30 {
            let d = backoff_delay(&p, failures, None, &mut rng);
            assert!(d <= p.backoff_cap && d >= p.backoff_base / 10);
        }
        let d = backoff_delay(&p, 1, Some(Duration::from_secs(30)), &mut rng);
        assert!(d >= Duration::from_secs(30));
        let d = backoff_delay(&p, 1, Some(Duration::from_secs(86400)), &mut rng);
        assert_eq!(d, p.backoff_cap);
    }

    #[test]
    fn min_interval_is_capped_by_half_the_lifetime() {
        assert_eq!(
            min_interval(&policy(), Some(Duration::from_secs(2))),
            Duration::from_secs(1)
        );
        assert_eq!(
            min_interval(&policy(), Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
    }
}
