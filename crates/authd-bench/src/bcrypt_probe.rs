//! The in-process bcrypt probe: how long one verify takes at a given cost on this machine, the
//! yardstick for login throughput (a Login costs the server one bcrypt verify).

use std::time::{Duration, Instant};

/// Verifies timed; the median is reported.
pub const SAMPLES: usize = 5;

/// Median time of [`SAMPLES`] bcrypt verifies at `cost`, on a blocking thread.
pub async fn verify_time(cost: u32) -> Result<Duration, String> {
    tokio::task::spawn_blocking(move || measure(cost, SAMPLES))
        .await
        .map_err(|e| format!("bcrypt probe task failed: {e}"))?
}

fn measure(cost: u32, samples: usize) -> Result<Duration, String> {
    const PASSWORD: &str = "authd-bench bcrypt probe passphrase";
    let hash =
        bcrypt::hash(PASSWORD, cost).map_err(|e| format!("bcrypt hash at cost {cost}: {e}"))?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let t = Instant::now();
        let ok = bcrypt::verify(PASSWORD, &hash).map_err(|e| format!("bcrypt verify: {e}"))?;
        times.push(t.elapsed());
        if !ok {
            return Err("bcrypt verify of the probe password failed".into());
        }
    }
    Ok(median(&mut times))
}

/// The median (the upper one for an even count); zero for none.
pub fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_durations() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(median(&mut [ms(4), ms(1)]), ms(4));
        assert_eq!(median(&mut []), Duration::ZERO);
    }

    #[test]
    fn measures_at_the_lowest_cost() {
        let t = measure(4, 3).unwrap();
        assert!(t > Duration::ZERO && t < Duration::from_secs(1));
    }
}
