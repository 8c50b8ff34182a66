//! What the machine does while a run trains: the worker process's CPU time
//! and resident memory (from `/proc`), and on CUDA the GPU's utilisation
//! and memory (from `nvidia-smi`). Elsewhere, or when a reading fails, the
//! sample has what could be read, or there is none.

use std::time::Instant;

use candle_core::{Device, DeviceLocation};
use sslab_shared::api::SystemSample;

/// Clock ticks per second of `/proc/self/stat`: USER_HZ, 100 on every
/// Linux architecture's user-space ABI.
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Sampler {
    gpu: Option<usize>,
    /// When the last CPU reading was taken, and the CPU seconds then.
    last: Option<(Instant, f64)>,
}

impl Sampler {
    pub fn new(device: &Device) -> Sampler {
        let gpu = match device.location() {
            DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
            _ => None,
        };
        let mut sampler = Sampler { gpu, last: None };
        sampler.last = cpu_seconds().map(|s| (Instant::now(), s));
        sampler
    }

    /// A sample at `step`, with the CPU use since the last one; none when
    /// the process's CPU time cannot be read, or too little time has passed
    /// to tell.
    pub async fn sample(&mut self, step: i64) -> Option<SystemSample> {
        let now = Instant::now();
        let cpu = cpu_seconds()?;
        let (then, cpu_then) = self.last.replace((now, cpu))?;
        let wall = now.duration_since(then).as_secs_f64();
        if wall < 0.05 {
            self.last = Some((then, cpu_then));
            return None;
        }
        let (gpu_util, gpu_memory_bytes) = match self.gpu {
            Some(index) => tokio::task::spawn_blocking(move || gpu_reading(index))
                .await
                .ok()
                .flatten()
                .map_or((None, None), |(u, m)| (Some(u), Some(m))),
            None => (None, None),
        };
        Some(SystemSample {
            at: crate::store::now_ms(),
            step,
            cpu_percent: 100.0 * (cpu - cpu_then).max(0.0) / wall,
            rss_bytes: rss_bytes().unwrap_or(0),
            gpu_util,
            gpu_memory_bytes,
        })
    }
}

/// User plus system CPU seconds of this process.
fn cpu_seconds() -> Option<f64> {
    parse_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Fields 14 and 15 of `/proc/<pid>/stat` (utime, stime), counted after
/// the command name, which may itself hold spaces and parentheses.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

fn rss_bytes() -> Option<i64> {
    parse_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `VmRSS:   123456 kB` of `/proc/<pid>/status`.
fn parse_rss(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Utilisation (percent) and memory in use (bytes) of GPU `index`.
fn gpu_reading(index: usize) -> Option<(f64, i64)> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ])
        .arg(format!("--id={index}"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_gpu(&String::from_utf8_lossy(&out.stdout))
}

/// `87, 12345` (percent, MiB).
fn parse_gpu(line: &str) -> Option<(f64, i64)> {
    let (util, mib) = line.trim().split_once(',')?;
    Some((
        util.trim().parse().ok()?,
        mib.trim().parse::<i64>().ok()? * 1024 * 1024,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_and_nvidia_smi_lines_parse() {
        let stat = "4242 (sslab (worker) 1) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(
            parse_rss("Name:\tsslab\nVmRSS:\t  20480 kB\nThreads: 9\n"),
            Some(20 * 1024 * 1024)
        );
        assert_eq!(parse_gpu("87, 1024\n"), Some((87.0, 1 << 30)));
        assert_eq!(parse_gpu("[N/A], 10"), None);
    }

    /// On Linux the sampler reads this process: busy for a while, it sees
    /// CPU time and memory.
    #[tokio::test]
    async fn a_busy_process_shows_cpu_and_memory() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let mut sampler = Sampler::new(&Device::Cpu);
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 400 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let s = sampler.sample(3).await.expect("a sample");
        assert_eq!(s.step, 3);
        assert!(s.cpu_percent > 20.0, "{s:?}");
        assert!(s.rss_bytes > 1 << 20, "{s:?}");
        assert_eq!((s.gpu_util, s.gpu_memory_bytes), (None, None));
    }
}
