//! When a token needs refreshing.
//!
//! A token is refreshed once its remaining lifetime falls below the provider's refresh
//! buffer; the buffer is capped at half the token's original lifetime, so a token that
//! lives 30 s is not refreshed on every call by a 60 s buffer.

pub const DEFAULT_REFRESH_BUFFER_SECS: u32 = 60;

/// The longest lifetime taken as given: a provider that says a token lives longer than ten
/// years means it does not expire (and a larger number could not be shown as a date).
pub const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

/// Absolute expiry from a relative `expires_in`; none when the token does not expire.
pub fn expires_at(now: u64, expires_in: Option<u64>) -> Option<u64> {
    expires_in.filter(|&secs| secs <= MAX_LIFETIME_SECS).map(|secs| now.saturating_add(secs))
}

fn effective_buffer(obtained_at: u64, expires_at: u64, buffer_secs: u32) -> u64 {
    let lifetime = expires_at.saturating_sub(obtained_at);
    u64::from(buffer_secs).min(lifetime / 2)
}

/// Whether the token is due for refresh with the given buffer.
pub fn refresh_due(now: u64, obtained_at: u64, expires_at: Option<u64>, buffer_secs: u32) -> bool {
    match expires_at {
        None => false,
        Some(exp) => now.saturating_add(effective_buffer(obtained_at, exp, buffer_secs)) >= exp,
    }
}

/// Whether the token could be due under any buffer. When false, the provider's buffer
/// need not be read at all: the common case of a `get` stays one record read.
pub fn could_be_due(now: u64, obtained_at: u64, expires_at: Option<u64>) -> bool {
    refresh_due(now, obtained_at, expires_at, u32::MAX)
}

pub fn is_expired(now: u64, expires_at: Option<u64>) -> bool {
    expires_at.is_some_and(|exp| now >= exp)
}

/// Whether a token expires within `horizon_secs` from `now` (never, when it does not expire).
pub fn expires_within(now: u64, expires_at: Option<u64>, horizon_secs: u32) -> bool {
    expires_at.is_some_and(|at| at <= now.saturating_add(u64::from(horizon_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_over_ten_years_means_the_token_does_not_expire() {
        let now = 1_700_000_000;
        assert_eq!(expires_at(now, Some(3600)), Some(now + 3600));
        assert_eq!(expires_at(now, Some(MAX_LIFETIME_SECS)), Some(now + MAX_LIFETIME_SECS));
        for absurd in [MAX_LIFETIME_SECS + 1, i64::MAX as u64, u64::MAX] {
            assert_eq!(expires_at(now, Some(absurd)), None, "{absurd}");
        }
    }

    #[test]
    fn non_expiring_tokens_are_never_due() {
        assert!(!refresh_due(u64::MAX, 0, None, 60));
        assert!(!could_be_due(u64::MAX, 0, None));
        assert!(!is_expired(u64::MAX, None));
    }

    #[test]
    fn hour_long_token_refreshes_in_its_last_minute() {
        let (obtained, exp) = (1_000, 1_000 + 3_600);
        assert!(!refresh_due(exp - 61, obtained, Some(exp), 60));
        assert!(refresh_due(exp - 60, obtained, Some(exp), 60));
        assert!(refresh_due(exp + 5, obtained, Some(exp), 60));
    }

    #[test]
    fn buffer_is_capped_at_half_the_lifetime() {
        // 30 s token, 60 s buffer: due after 15 s, not at once.
        let (obtained, exp) = (1_000, 1_030);
        assert!(!refresh_due(obtained, obtained, Some(exp), 60));
        assert!(!refresh_due(obtained + 14, obtained, Some(exp), 60));
        assert!(refresh_due(obtained + 15, obtained, Some(exp), 60));
    }

    #[test]
    fn could_be_due_is_never_false_when_due() {
        let (obtained, exp) = (1_000, 1_000 + 600);
        for now in obtained..exp + 10 {
            for buffer in [0, 1, 60, 299, 300, 301, u32::MAX] {
                if refresh_due(now, obtained, Some(exp), buffer) {
                    assert!(could_be_due(now, obtained, Some(exp)), "now={now} buffer={buffer}");
                }
            }
        }
    }

    #[test]
    fn expiry_maths_saturates() {
        assert_eq!(expires_at(10, Some(5)), Some(15));
        assert_eq!(expires_at(u64::MAX - 1, Some(5)), Some(u64::MAX));
        assert_eq!(expires_at(10, None), None);
        assert!(is_expired(15, Some(15)));
        assert!(!is_expired(14, Some(15)));
    }
}
