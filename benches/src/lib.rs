//! Helpers of the benchmark binaries (`src/bin/`): CPU time of a process,
//! of the whole machine, and of the local broker. The stack, stage
//! processes and pipeline they drive come from the test harness
//! (`artifact-pipeline-tests`). Results and method: docs/BENCHMARKS.md.

/// CPU time process `pid` has used so far (user + system), in seconds, from
/// `/proc/<pid>/stat` (in USER_HZ = 100 ticks per second, as Linux reports
/// it to user space); `None` if there is no such process or off Linux.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 11 and 12 (from 0) after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Busy CPU time of the whole machine so far, all CPUs, in seconds, from
/// the first line of `/proc/stat`: everything but idle and I/O wait (every
/// process and kernel thread, such as the flusher threads writing files
/// back). `None` off Linux.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let idle = ticks.get(3)? + ticks.get(4)?;
    // In USER_HZ = 100 ticks per second, like `/proc/<pid>/stat`.
    Some((ticks.iter().sum::<u64>() - idle) as f64 / 100.0)
}

/// The local stack's Kafka broker process (a JVM running `kafka.Kafka`), if
/// one runs on this machine.
pub fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == b"kafka.Kafka")
            .then_some(pid)
    })
}
