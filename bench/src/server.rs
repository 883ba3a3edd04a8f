//! What `/proc` says of a server process on this machine.

use std::time::{Duration, Instant};

use anyhow::Context;

pub struct Server {
    pid: u32,
    ticks_per_second: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU time so far.
    pub cpu_s: f64,
    pub rss_kb: u64,
}

impl Server {
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let server = Self {
            pid,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
        };
        server.sample()?;
        Ok(server)
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("no process {} on this machine", self.pid))?;
        // Fields after the command name (which may hold spaces): utime and
        // stime are the 14th and 15th fields of the line.
        let after_name = stat.rsplit_once(") ").context("a malformed /proc stat")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let rss_kb = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc status")?;
        Ok(Sample {
            cpu_s: ticks as f64 / self.ticks_per_second,
            rss_kb,
        })
    }

    /// Waits until the server has used no CPU for a quarter of a second;
    /// returns when it last did (from `since`) and the sample then.
    pub async fn wait_until_quiet(
        &self,
        since: Instant,
        limit: Duration,
    ) -> anyhow::Result<(Duration, Sample)> {
        let started = Instant::now();
        let mut last = self.sample()?;
        let mut last_busy = started;
        while started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.sample()?;
            if now.cpu_s > last.cpu_s {
                last_busy = Instant::now();
                last = now;
            } else if last_busy.elapsed() >= Duration::from_millis(250) {
                return Ok((last_busy.saturating_duration_since(since), now));
            }
        }
        anyhow::bail!("the server was still busy after {limit:?}")
    }
}
