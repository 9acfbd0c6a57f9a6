//! PDFs are parsed in worker processes, each under a memory limit.
//!
//! lopdf builds every object of a PDF when it loads it, so a 16 MB file of
//! one huge array, or an object stream that inflates to 64 MiB, costs
//! gigabytes before a page is read; nothing inside the process can stop
//! that. A worker is this same program started again with [`WORKER_ARG`]:
//! it limits its own address space (`RLIMIT_AS`) to
//! [`WorkerSettings::memory_limit`], then answers requests from its stdin
//! one at a time (the wire format is the `wire` module's). A document
//! that needs more memory makes the allocation fail and the worker abort;
//! a stack overflow or any other abort kills the worker too. The pool
//! turns each death into a permanent [`ParseError`] for that document
//! ([`ParseError::OutOfMemory`] naming the limit, or
//! [`ParseError::WorkerDied`]) and starts a new worker for the next.
//!
//! Workers are kept between documents (starting one costs more than
//! parsing a short PDF), at most [`WorkerSettings::workers`] of them; a
//! document waits for a free one. A worker still busy when its time is up
//! is killed, so the time limit also stops lopdf's loading step, which
//! cannot be interrupted from within.

use crate::{
    Extracted, Format, Limits, OcrSettings, PARSER_STACK, ParseError, extract, large_stack_thread,
    wire,
};
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The first argument that makes a program a parse worker.
pub const WORKER_ARG: &str = "--pdf-parse-worker";

/// How long past a document's time limit a worker that has not answered
/// is given before it is killed: it stops by itself at the deadline
/// unless it is inside lopdf's loading step.
const KILL_GRACE: Duration = Duration::from_millis(250);

/// Bytes kept of the end of a worker's stderr, to say why it died.
const STDERR_TAIL: usize = 4096;

/// How the worker processes are started and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The program started with [`WORKER_ARG`]: one whose `main` calls
    /// [`serve_if_worker`] first.
    pub program: PathBuf,
    /// Workers at most: documents parsed at once.
    pub workers: usize,
    /// Address space of each worker (`RLIMIT_AS`), in bytes: the document,
    /// lopdf's objects, the parser's stack ([`PARSER_STACK`]) and the
    /// program's own mappings all count: some 160 MiB before the first
    /// document.
    pub memory_limit: u64,
    /// OCR in the workers; its programs (Tesseract, pdftoppm) run as the
    /// workers' children, under the same memory limit and deadline.
    pub ocr: OcrSettings,
}

impl WorkerSettings {
    /// Settings that start this very program as the worker: on Linux its
    /// image through `/proc/self/exe`, so a binary replaced on disk while
    /// the stage runs still starts workers of the same build.
    pub fn this_program(workers: usize, memory_limit: u64, ocr: OcrSettings) -> io::Result<Self> {
        let exe = PathBuf::from("/proc/self/exe");
        let program = if exe.exists() {
            exe
        } else {
            std::env::current_exe()?
        };
        Ok(WorkerSettings {
            program,
            workers,
            memory_limit,
            ocr,
        })
    }
}

/// If this process was started as a parse worker (its first argument is
/// [`WORKER_ARG`], then the memory limit and the OCR settings), serves
/// requests until its stdin closes and exits; otherwise returns at once.
pub fn serve_if_worker() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(WORKER_ARG)) {
        return;
    }
    let mut next = || args.next().and_then(|a| a.to_str().map(str::to_owned));
    let limit = next().and_then(|a| a.parse::<u64>().ok());
    let languages = next().unwrap_or_default();
    let mut number = || next().and_then(|a| a.parse::<u64>().ok());
    let ocr = match (number(), number(), number(), number()) {
        (Some(min_page_chars), Some(max_pages), Some(dpi), Some(max_image_pixels)) => {
            Some(OcrSettings {
                languages,
                min_page_chars: min_page_chars as usize,
                max_pages: max_pages as usize,
                dpi: dpi as u32,
                max_image_pixels,
            })
        }
        _ => None,
    };
    let code = match serve(limit, ocr) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pdf parse worker: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn serve(memory_limit: Option<u64>, ocr: Option<OcrSettings>) -> io::Result<()> {
    let limit = memory_limit.ok_or_else(|| io::Error::other("no memory limit given"))?;
    let ocr = ocr.ok_or_else(|| io::Error::other("no OCR settings given"))?;
    set_limit(libc::RLIMIT_AS, limit)?;
    // An abort is reported by the pool; a core file of up to the whole
    // limit would only fill the disk.
    set_limit(libc::RLIMIT_CORE, 0)?;
    // Panics are caught and answered as malformed PDFs; printing each
    // would only fill the pipe the pool reads to learn why a worker died.
    std::panic::set_hook(Box::new(|_| {}));
    std::thread::Builder::new()
        .name("pdf-parse-worker".into())
        .stack_size(PARSER_STACK)
        .spawn(move || {
            large_stack_thread();
            answer_requests(&ocr)
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the worker thread panicked")))
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn answer_requests(ocr: &OcrSettings) -> io::Result<()> {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    while let Some(request) = wire::read_request(&mut input)? {
        let limits = Limits {
            deadline: request
                .time_left
                .and_then(|t| Instant::now().checked_add(t)),
            ..request.limits
        };
        let result = extract(request.format, &request.document, &limits, ocr);
        drop(request);
        output.write_all(&wire::encode_answer(&result))?;
        output.flush()?;
    }
    Ok(())
}

/// Why a document got no answer from the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The document cannot be parsed (the worker answered so, died on it,
    /// or ran out of time): permanent.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// No worker could be started (the program is missing, the machine
    /// is out of processes or memory): not the document's fault.
    #[error("could not start a PDF parse worker: {0}")]
    Start(String),
}

/// A pool of parse workers. Dropping it kills them.
pub struct ParserPool {
    settings: WorkerSettings,
    idle: Mutex<Vec<Worker>>,
    slots: Semaphore,
}

impl ParserPool {
    /// A pool starting workers as `settings` says, when first needed.
    pub fn new(settings: WorkerSettings) -> Self {
        let slots = Semaphore::new(settings.workers.max(1));
        ParserPool {
            settings,
            idle: Mutex::new(Vec::new()),
            slots,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    /// Extracts the text of a PDF in a worker, as [`crate::extract_pdf`]
    /// does within `limits` (their deadline is ignored), giving it `timeout`
    /// from when a worker takes it; then OCRs pages as the pool's
    /// [`WorkerSettings::ocr`] says.
    pub async fn extract_pdf(
        &self,
        bytes: &[u8],
        limits: &Limits,
        timeout: Duration,
    ) -> Result<Extracted, PoolError> {
        self.extract(Format::Pdf, bytes, limits, timeout).await
    }

    /// Extracts the text of a document of `format` in a worker, as
    /// [`crate::extract`] does, giving it `timeout` from when a worker
    /// takes it.
    pub async fn extract(
        &self,
        format: Format,
        bytes: &[u8],
        limits: &Limits,
        timeout: Duration,
    ) -> Result<Extracted, PoolError> {
        if bytes.is_empty() {
            return Err(ParseError::Empty.into());
        }
        if bytes.len() > limits.max_bytes {
            return Err(ParseError::TooLarge {
                size: bytes.len(),
                limit: limits.max_bytes,
            }
            .into());
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut worker = match self.take_idle() {
            Some(worker) => worker,
            None => Worker::start(&self.settings).map_err(|e| {
                PoolError::Start(format!("{}: {e}", self.settings.program.display()))
            })?,
        };
        let header = wire::request_header(format, limits, Some(timeout), bytes.len());
        let bound = wire::answer_bound(limits);
        let exchange = worker.exchange(&header, bytes, bound);
        match tokio::time::timeout(timeout + KILL_GRACE, exchange).await {
            Ok(Ok(answer)) => {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(worker);
                Ok(answer?)
            }
            Ok(Err(Failure::Died)) => Err(worker.death(self.settings.memory_limit).await.into()),
            Ok(Err(Failure::Unreadable(why))) => {
                worker.kill().await;
                Err(ParseError::WorkerDied(why).into())
            }
            Err(_) => {
                worker.kill().await;
                Err(ParseError::Timeout.into())
            }
        }
    }

    /// An idle worker still alive, if any.
    fn take_idle(&self) -> Option<Worker> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut worker) = idle.pop() {
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Some(worker);
            }
        }
        None
    }
}

/// How an exchange with a worker went wrong.
enum Failure {
    /// The pipes closed: the worker died.
    Died,
    /// The worker answered something that is not an answer.
    Unreadable(String),
}

/// A running worker and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// The end of its stderr, once it closed.
    stderr: JoinHandle<Vec<u8>>,
    /// Its `TMPDIR` (OCR's rendered pages and copies of the document):
    /// removed with the worker, so a worker killed mid-document leaves
    /// nothing behind.
    _tmp: tempfile::TempDir,
}

impl Worker {
    fn start(settings: &WorkerSettings) -> io::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("pdf-parser-worker-")
            .tempdir()?;
        let mut child = Command::new(&settings.program)
            .env("TMPDIR", tmp.path())
            .arg(WORKER_ARG)
            .arg(settings.memory_limit.to_string())
            .arg(&settings.ocr.languages)
            .arg(settings.ocr.min_page_chars.to_string())
            .arg(settings.ocr.max_pages.to_string())
            .arg(settings.ocr.dpi.to_string())
            .arg(settings.ocr.max_image_pixels.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The limit counts address space reserved, not only used: keep
            // the allocators' up-front reservations small (mimalloc's arena,
            // 1 GiB by default; glibc's 64 MiB per thread that mallocs).
            .env("MIMALLOC_ARENA_RESERVE", "16M")
            .env("MALLOC_ARENA_MAX", "1")
            // Why a worker died is read from the end of its stderr; a
            // backtrace there would push the reason out of the kept tail.
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io::Error::other("the worker's pipes are missing"));
        };
        Ok(Worker {
            child,
            stdin,
            stdout,
            stderr: tokio::spawn(tail(stderr)),
            _tmp: tmp,
        })
    }

    /// Sends one request and reads its answer, of at most `bound` bytes.
    async fn exchange(
        &mut self,
        header: &[u8],
        document: &[u8],
        bound: u64,
    ) -> Result<Result<Extracted, ParseError>, Failure> {
        let sent = async {
            self.stdin.write_all(header).await?;
            self.stdin.write_all(document).await?;
            self.stdin.flush().await
        };
        sent.await.map_err(|_| Failure::Died)?;
        let mut len = [0u8; 8];
        self.stdout
            .read_exact(&mut len)
            .await
            .map_err(|_| Failure::Died)?;
        let len = u64::from_le_bytes(len);
        if len > bound {
            return Err(Failure::Unreadable(format!(
                "it announced an answer of {len} bytes, over the {bound} the limits allow"
            )));
        }
        let mut body = vec![0; len as usize];
        self.stdout
            .read_exact(&mut body)
            .await
            .map_err(|_| Failure::Died)?;
        wire::decode_answer(&body).map_err(|e| Failure::Unreadable(e.to_string()))
    }

    /// Why the worker died, once it has (killing it if it only closed
    /// its pipes).
    async fn death(mut self, memory_limit: u64) -> ParseError {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                self.kill().await;
                None
            }
        };
        let stderr = tokio::time::timeout(Duration::from_secs(5), &mut self.stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        death_reason(status, &String::from_utf8_lossy(&stderr), memory_limit)
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The last [`STDERR_TAIL`] bytes `stream` writes before it closes.
async fn tail(mut stream: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
    kept
}

/// The error for a worker that died with `status`, having written
/// `stderr` last.
fn death_reason(status: Option<ExitStatus>, stderr: &str, memory_limit: u64) -> ParseError {
    // What Rust's runtime prints when an allocation fails (here: past
    // RLIMIT_AS) and when a thread runs past its stack's guard page.
    if stderr.contains("memory allocation of") {
        return ParseError::OutOfMemory {
            limit: memory_limit,
        };
    }
    if stderr.contains("has overflowed its stack") {
        return ParseError::WorkerDied(format!(
            "its stack of {} MiB overflowed (the PDF nests too deep)",
            PARSER_STACK >> 20
        ));
    }
    let how = match status {
        None => "it closed its pipes and did not exit".to_owned(),
        Some(s) => match (s.signal(), s.code()) {
            (Some(signal), _) => format!("killed by signal {signal}{}", signal_name(signal)),
            (None, Some(code)) => format!("it exited with status {code}"),
            (None, None) => format!("{s}"),
        },
    };
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    ParseError::WorkerDied(match last {
        Some(line) => format!("{how}: {}", line.trim()),
        None => how,
    })
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => " (SIGABRT, an abort)",
        libc::SIGKILL => {
            " (SIGKILL; the kernel's OOM killer sends it when the pod's memory limit is reached)"
        }
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_are_told_apart_by_what_the_worker_printed() {
        let abort = Some(ExitStatus::from_raw(libc::SIGABRT));
        assert_eq!(
            death_reason(abort, "memory allocation of 4096 bytes failed\n", 512),
            ParseError::OutOfMemory { limit: 512 }
        );
        let overflow = death_reason(
            abort,
            "\nthread 'pdf-parse-worker' has overflowed its stack\nfatal runtime error: stack overflow\n",
            512,
        );
        assert!(
            overflow.to_string().contains("stack of 64 MiB overflowed"),
            "{overflow}"
        );
        let killed = death_reason(Some(ExitStatus::from_raw(libc::SIGKILL)), "", 512);
        assert!(killed.to_string().contains("signal 9 (SIGKILL"), "{killed}");
        let exited = death_reason(Some(ExitStatus::from_raw(3 << 8)), "boom\n\n", 512);
        assert_eq!(
            exited,
            ParseError::WorkerDied("it exited with status 3: boom".into())
        );
        assert!(
            death_reason(None, "", 1)
                .to_string()
                .contains("did not exit")
        );
    }
}
