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

/// The local stack's processes (brokers, registry, S3Proxy): every process
/// whose command line carries `-Dlocalstack.home=<home>`, so another stack
/// on the same machine is not counted. `home` is `$STACK_HOME`, else the
/// stack's default `.local-stack` under the current directory.
pub fn stack_pids() -> Vec<(String, u32)> {
    let home = std::env::var("STACK_HOME").unwrap_or_else(|_| ".local-stack".to_owned());
    let home = std::fs::canonicalize(&home).unwrap_or_else(|_| home.into());
    let home_arg = format!("-Dlocalstack.home={}", home.display());
    let service_arg = "-Dlocalstack.service=";
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&home_arg.as_bytes()).then_some(())?;
            let service = args.iter().find_map(|a| {
                let a = std::str::from_utf8(a).ok()?;
                a.strip_prefix(service_arg).map(str::to_owned)
            })?;
            Some((service, pid))
        })
        .collect()
}

/// The local stack's (first) Kafka broker process.
pub fn broker_pid() -> Option<u32> {
    stack_pids()
        .into_iter()
        .filter(|(service, _)| service.starts_with("kafka"))
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, pid)| pid)
}

/// CPU seconds used so far by `pids` together; a process that has exited
/// counts as nothing, so sample the same set before and after.
pub fn processes_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| process_cpu_seconds(*p)).sum()
}

/// Sets what the services a benchmark starts inherit: `log` as their
/// `RUST_LOG` (through `STAGE_LOG`), and API limits above the offered load,
/// since the load generator uploads with one token (by default 100 uploads
/// a second per token, 16 at once). A value already set is kept.
///
/// # Safety
/// As [`std::env::set_var`]: no other thread may run.
pub unsafe fn service_env(log: &str) {
    // SAFETY: the caller guarantees no other thread runs.
    unsafe {
        std::env::set_var("STAGE_LOG", log);
        for (k, v) in [
            ("API_RATE_LIMIT_PER_SECOND", "100000"),
            ("API_RATE_LIMIT_BURST", "100000"),
            ("API_MAX_CONCURRENT_UPLOADS", "256"),
        ] {
            if std::env::var_os(k).is_none() {
                std::env::set_var(k, v);
            }
        }
    }
}
