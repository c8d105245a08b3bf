//! The wall clock the component reads (`wasi:clocks/wall-clock`): the system's, plus an
//! offset the embedder can move forward, to see expiries happen without waiting (tests,
//! simulations). Only the component's view moves; the host's own timers do not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicU64>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Clock::default()
    }

    /// Move this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Time since the Unix epoch, as the component sees it.
    pub fn now(&self) -> Duration {
        let system = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        system + Duration::from_millis(self.ahead_ms.load(Ordering::SeqCst))
    }
}

impl wasmtime_wasi::HostWallClock for Clock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Clock::now(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_advance() {
        let clock = Clock::system();
        let view = clock.clone();
        let before = view.now();
        clock.advance(Duration::from_secs(3600));
        let moved = view.now() - before;
        assert!(moved >= Duration::from_secs(3600) && moved < Duration::from_secs(3660), "{moved:?}");
    }
}
