//! A progress line for the commands that can take a while (`pin`, `audit`): nothing while the
//! work takes less than a second, then one line a second until it is done.

use std::future::Future;
use std::time::Duration;

/// Where progress lines go (`main` prints them on stderr).
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// Runs `work`; once it has taken a second, and every second after, `progress` hears `line()`.
pub async fn report_while<T>(
    work: impl Future<Output = T>,
    line: impl Fn() -> String,
    progress: Progress<'_>,
) -> T {
    tokio::pin!(work);
    let second = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => progress(&line()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    async fn lines_during(work: Duration) -> Vec<String> {
        let heard = Mutex::new(Vec::new());
        let progress = |l: &str| heard.lock().unwrap().push(l.to_string());
        let n = std::sync::atomic::AtomicUsize::new(0);
        let line = || {
            format!(
                "tick {}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
        };
        let out = report_while(tokio::time::sleep(work), line, &progress).await;
        let () = out;
        heard.into_inner().unwrap()
    }

    // The clock is paused: time moves only when every task waits, so these are exact.
    #[tokio::test(start_paused = true)]
    async fn silent_under_a_second_then_a_line_each_second() {
        assert!(lines_during(Duration::from_millis(999)).await.is_empty());
        assert_eq!(
            lines_during(Duration::from_millis(3_500)).await,
            ["tick 0", "tick 1", "tick 2"]
        );
    }
}
