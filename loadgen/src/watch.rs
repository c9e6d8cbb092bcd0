//! `--watch-pid`: samples the target process's CPU time and RSS from /proc, so every run
//! reports what the load cost the target (peak RSS, RSS per connection, CPU-µs per request).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One reading of the watched process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU time, in microseconds.
    pub cpu_us: u64,
    pub rss_kb: u64,
}

pub struct Watch {
    pid: u32,
    tick_us: u64,
    start_kb: u64,
    peak_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts sampling `pid` every second; fails if the process cannot be read now.
    pub fn start(pid: u32) -> Result<Watch, String> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tick_us = if ticks > 0 {
            1_000_000 / ticks as u64
        } else {
            10_000
        };
        let first = sample(pid, tick_us).map_err(|e| format!("--watch-pid {pid}: {e}"))?;
        let peak_kb = Arc::new(AtomicU64::new(first.rss_kb));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak_kb.clone(), stop.clone());
        let join = std::thread::Builder::new()
            .name("loadgen-watch".into())
            .spawn(move || sample_loop(pid, tick_us, &p, &s))
            .map_err(|e| e.to_string())?;
        Ok(Watch {
            pid,
            tick_us,
            start_kb: first.rss_kb,
            peak_kb,
            stop,
            join: Some(join),
        })
    }

    /// Reads the process now (also folded into the peak). Zeroes if it has gone away.
    pub fn now(&self) -> Sample {
        let s = sample(self.pid, self.tick_us).unwrap_or_default();
        self.peak_kb.fetch_max(s.rss_kb, Ordering::Relaxed);
        s
    }

    /// Reads the process now (also folded into the peak); `Err` if it cannot be read.
    pub fn read(&self) -> std::io::Result<Sample> {
        let s = sample(self.pid, self.tick_us)?;
        self.peak_kb.fetch_max(s.rss_kb, Ordering::Relaxed);
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn start_rss_kb(&self) -> u64 {
        self.start_kb
    }

    pub fn peak_rss_kb(&self) -> u64 {
        self.peak_kb.load(Ordering::Relaxed)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn sample_loop(pid: u32, tick_us: u64, peak: &AtomicU64, stop: &AtomicBool) {
    // Sleep in short slices so the run's end is not held up by up to a second.
    let mut slices = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        slices += 1;
        if slices % 10 == 0 {
            if let Ok(s) = sample(pid, tick_us) {
                peak.fetch_max(s.rss_kb, Ordering::Relaxed);
            }
        }
    }
}

pub fn sample(pid: u32, tick_us: u64) -> std::io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    // A zombie (exited, not yet reaped) still has /proc entries but no VmRSS line.
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no CPU/RSS figures in /proc (has the process exited?)",
        )
    };
    Ok(Sample {
        cpu_us: cpu_ticks(&stat).ok_or_else(bad)? * tick_us,
        rss_kb: vm_rss_kb(&status).ok_or_else(bad)?,
    })
}

/// Open file descriptors of `pid`: the entries of /proc/PID/fd (sockets, files, eventfds,
/// rings). Needs the same user as the process, or root.
pub fn fd_count(pid: u32) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        e?;
        n += 1;
    }
    Ok(n)
}

/// utime + stime (fields 14 and 15) from /proc/PID/stat. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last ')'.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub fn vm_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_ticks_with_odd_command_names() {
        let stat = "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 500 0 0 0 170 30 0 0 20 0 3 0 100 1000 200";
        assert_eq!(cpu_ticks(stat), Some(200));
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tshardcat\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_kb(status), Some(4321));
        assert_eq!(vm_rss_kb("Name: x\n"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id(), 10_000).unwrap();
        assert!(s.rss_kb > 0);
    }

    #[test]
    fn counts_open_fds() {
        // Other tests open and close files on other threads, so only a floor holds.
        let files: Vec<_> = (0..50)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        assert!(fd_count(std::process::id()).unwrap() >= 50);
        drop(files);
    }
}
