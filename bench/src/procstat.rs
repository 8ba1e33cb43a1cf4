//! Resource figures from the kernel's own accounting: CPU time from /proc/<pid>/stat
//! (utime + stime, all threads) and memory from /proc/<pid>/status (VmRSS now, VmHWM peak).
//! A process "tree" is the process plus its direct children (nginx's master and workers).

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcError {
    #[error("reading /proc/{pid}: {source}")]
    Read { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/{file} has no field {field}")]
    Field {
        pid: u32,
        file: &'static str,
        field: &'static str,
    },
}

/// One reading of a process (or a process tree, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU, seconds.
    pub cpu_seconds: f64,
    /// Resident set now, kB.
    pub rss_kb: u64,
    /// Peak resident set since start, kB.
    pub peak_rss_kb: u64,
}

impl ProcSample {
    fn add(&mut self, other: ProcSample) {
        self.cpu_seconds += other.cpu_seconds;
        self.rss_kb += other.rss_kb;
        self.peak_rss_kb += other.peak_rss_kb;
    }
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        // USER_HZ is 100 on every Linux architecture the suite runs on.
        _ => 100.0,
    }
}

/// utime + stime in clock ticks from the text of /proc/<pid>/stat.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The parent pid (field 4) from the text of /proc/<pid>/stat.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A `kB` field (`VmRSS:     1234 kB`) from the text of /proc/<pid>/status.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

fn read(pid: u32, file: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join(file))
        .map_err(|source| ProcError::Read { pid, source })
}

/// Reads one process.
pub fn sample(pid: u32) -> Result<ProcSample, ProcError> {
    let stat = read(pid, "stat")?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or(ProcError::Field {
        pid,
        file: "stat",
        field: "utime/stime",
    })?;
    let status = read(pid, "status")?;
    let rss_kb = parse_status_kb(&status, "VmRSS").ok_or(ProcError::Field {
        pid,
        file: "status",
        field: "VmRSS",
    })?;
    let peak_rss_kb = parse_status_kb(&status, "VmHWM").unwrap_or(rss_kb);
    Ok(ProcSample {
        cpu_seconds: ticks as f64 / clock_ticks_per_second(),
        rss_kb,
        peak_rss_kb,
    })
}

/// The direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| read(*child, "stat").ok().and_then(|s| parse_stat_ppid(&s)) == Some(pid))
        .collect()
}

/// Reads a process and its direct children, summed.
pub fn sample_tree(pid: u32) -> Result<ProcSample, ProcError> {
    let mut total = sample(pid)?;
    for child in children(pid) {
        // A child may exit between listing and reading; it then simply is not counted.
        if let Ok(s) = sample(child) {
            total.add(s);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (tandem worker) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        157 43 0 0 20 0 5 0 987654 123456789 2345 18446744073709551615";

    #[test]
    fn cpu_ticks_are_user_plus_system() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some(200));
    }

    #[test]
    fn the_parent_pid_survives_spaces_in_the_name() {
        assert_eq!(parse_stat_ppid(STAT), Some(1));
    }

    #[test]
    fn status_fields_are_read_in_kb() {
        let status = "Name:\ttandem\nVmHWM:\t    9100 kB\nVmRSS:\t    7340 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(7340));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(9100));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kb > 0);
        assert!(s.peak_rss_kb >= s.rss_kb);
    }
}
