//! Processing the records a batch plans to process: concurrently, each
//! attempt bounded in time, with in-process retries, and started only while
//! the consumer may still go unpolled.

use super::StageRunner;
use super::breaker::Attempt;
use super::item::Item;
use super::plan::Plan;
use crate::otel;
use crate::retry;
use crate::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};
use crate::stage_metrics;
use artifact_kafka::trace::{TRACEPARENT, TraceHeaders};
use futures::{FutureExt, StreamExt};
use rdkafka::message::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How processing a record ended after its in-process retries.
#[derive(Debug)]
pub(crate) enum Done<R> {
    Ok(Processed<R>),
    Permanent(String),
    Retriable(String),
}

/// A processed record's result and the trace headers of its processing,
/// which its outcome carries on.
#[derive(Debug)]
pub(crate) struct Attempted<R> {
    pub done: Done<R>,
    pub trace: TraceHeaders,
}

impl<S: StageLogic> StageRunner<S> {
    /// Processes the records `plans` marks for processing, in order, at
    /// most `concurrency` at a time. The consumer is not polled meanwhile,
    /// so records are started (a first round of `concurrency` whatever the
    /// time) only until `start_until`. Returns each record's result (`None`
    /// for those not processed) and the number of leading records the
    /// batch covers: all of them, unless records were left unstarted; the
    /// rest is read again for the next batch.
    pub(crate) async fn process(
        &self,
        items: &[Item],
        plans: &[Plan<S::Input>],
        start_until: Instant,
    ) -> (Vec<Option<Attempted<S::Result>>>, usize) {
        let work: Vec<usize> = plans
            .iter()
            .enumerate()
            .filter_map(|(i, p)| matches!(p, Plan::Process(_)).then_some(i))
            .collect();
        let processing_time = &stage_metrics::processing_time(S::STAGE.name());
        let budget = &ByteBudget::new(self.cfg.max_inflight_bytes);
        let mut done: Vec<Option<Attempted<S::Result>>> = Vec::new();
        done.resize_with(items.len(), || None);
        let started = AtomicUsize::new(0);
        let concurrency = self.cfg.concurrency;
        let mut finished = futures::stream::iter(work.iter().copied())
            .take_while(|_| {
                let n = started.load(Ordering::Relaxed);
                // An open breaker starts nothing more (but a probe).
                futures::future::ready(
                    (n < concurrency || Instant::now() < start_until)
                        && (n == 0 || !self.breaker.is_open()),
                )
            })
            .map(|i| {
                started.fetch_add(1, Ordering::Relaxed);
                let Plan::Process(input) = &plans[i] else {
                    unreachable!("work holds processed items only")
                };
                self.process_one(input, &items[i], processing_time, budget)
                    .map(move |d| (i, d))
            })
            .buffer_unordered(concurrency);
        while let Some((i, d)) = finished.next().await {
            done[i] = Some(d);
        }
        drop(finished);
        let started = started.into_inner();
        let covered = work.get(started).copied().unwrap_or(items.len());
        if covered < items.len() {
            tracing::warn!(
                stage = S::STAGE.name(),
                started,
                left = items.len() - covered,
                budget_ms = self.start_budget.as_millis() as u64,
                "batch cut short: its records took longer than the consumer may go unpolled; the rest is read again"
            );
        }
        (done, covered)
    }

    /// One record, in a span of its own: a child of the record's trace
    /// context when traces are exported (`otel`).
    async fn process_one(
        &self,
        input: &S::Input,
        it: &Item,
        processing_time: &metrics::Histogram,
        budget: &ByteBudget,
    ) -> Attempted<S::Result> {
        let span = tracing::info_span!(
            "record",
            stage = S::STAGE.name(),
            artifact_id = %input.artifact_id(),
            generation = %input.generation(),
            topic = it.msg.topic(),
            partition = it.msg.partition(),
            offset = it.msg.offset(),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        otel::consume(&span, "process", &self.group, &it.msg);
        let trace = otel::outgoing(&span, &it.msg);
        let bytes = self.logic.input_bytes(input);
        let _held = match budget.hold(bytes).await {
            Ok(held) => held,
            Err(reason) => {
                let _entered = span.enter();
                tracing::info!(error = %reason, "permanent failure");
                return Attempted {
                    done: Done::Permanent(reason),
                    trace,
                };
            }
        };
        self.process_with_retries(input, it, trace, processing_time)
            .instrument(span)
            .await
    }

    /// Processes one record, trying again in process while it fails
    /// retriably, up to the policy's attempts; a panic is a permanent
    /// failure.
    async fn process_with_retries(
        &self,
        input: &S::Input,
        it: &Item,
        trace: TraceHeaders,
        processing_time: &metrics::Histogram,
    ) -> Attempted<S::Result> {
        let policy = self.cfg.retry_policy();
        let limit = Duration::from_millis(self.cfg.processing_timeout_ms);
        let mut last = String::new();
        let mut ctx = RecordContext {
            topic: it.msg.topic().to_owned(),
            partition: it.msg.partition(),
            offset: it.msg.offset(),
            attempt: 0,
            traceparent: trace
                .iter()
                .find(|(k, _)| *k == TRACEPARENT)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        };
        for attempt in 1..=policy.inline_attempts {
            ctx.attempt = it
                .delivery
                .saturating_sub(1)
                .saturating_mul(policy.inline_attempts)
                .saturating_add(attempt);
            let started = Instant::now();
            let fut = std::panic::AssertUnwindSafe(self.logic.process(input, &ctx)).catch_unwind();
            let res = tokio::time::timeout(limit, fut).await;
            processing_time.record(started.elapsed().as_secs_f64());
            match res {
                Ok(Ok(Ok(p))) => {
                    self.breaker.record(Attempt::Answered);
                    return Attempted {
                        done: Done::Ok(p),
                        trace,
                    };
                }
                Ok(Ok(Err(StageError::Permanent(r)))) => {
                    tracing::info!(error = %r, "permanent failure");
                    self.breaker.record(Attempt::Answered);
                    return Attempted {
                        done: Done::Permanent(r),
                        trace,
                    };
                }
                Ok(Ok(Err(StageError::Retriable(r)))) => last = r,
                Ok(Err(panic)) => {
                    let what = panic_message(&*panic);
                    tracing::error!(panic = %what, "stage panicked");
                    let done = Done::Permanent(format!("stage panicked: {what}"));
                    return Attempted { done, trace };
                }
                Err(_) => last = format!("processing took longer than {limit:?}"),
            }
            tracing::info!(attempt, error = %last, "retriable failure");
            self.breaker.record(Attempt::Failed {
                record: input.artifact_id().to_string(),
                error: last.clone(),
            });
            if self.breaker.is_open() {
                // Read again once it closes; this attempt is no delivery.
                break;
            }
            if attempt < policy.inline_attempts {
                stage_metrics::retried(S::STAGE.name(), "inline", 1);
                tokio::time::sleep(retry::jittered(
                    policy.inline_backoff,
                    policy.inline_backoff_max,
                    attempt,
                ))
                .await;
            }
        }
        Attempted {
            done: Done::Retriable(last),
            trace,
        }
    }
}

/// `STAGE_MAX_INFLIGHT_BYTES` over a batch's records, counted in KiB (a
/// semaphore's permits are `u32`); first come, first served, so a large
/// record waits for room instead of being overtaken for ever.
struct ByteBudget {
    limit: u64,
    permits: Option<tokio::sync::Semaphore>,
}

impl ByteBudget {
    fn new(limit: u64) -> Self {
        let permits = (limit > 0).then(|| {
            tokio::sync::Semaphore::new(
                kib(limit).min(tokio::sync::Semaphore::MAX_PERMITS as u64) as usize
            )
        });
        ByteBudget { limit, permits }
    }

    /// Waits until `bytes` fit; refuses, with the reason, bytes that never can.
    async fn hold(&self, bytes: u64) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, String> {
        let Some(permits) = &self.permits else {
            return Ok(None);
        };
        if bytes > self.limit {
            return Err(format!(
                "the input needs {bytes} bytes in memory, over the stage's limit of {} \
                 (STAGE_MAX_INFLIGHT_BYTES)",
                self.limit
            ));
        }
        let need = u32::try_from(kib(bytes)).unwrap_or(u32::MAX);
        Ok(permits.acquire_many(need).await.ok())
    }
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::ByteBudget;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_record_waits_for_room_and_one_too_large_alone_is_refused() {
        let budget = ByteBudget::new(10 << 20);
        let refused = budget.hold((10 << 20) + 1).await.unwrap_err();
        assert!(refused.contains("STAGE_MAX_INFLIGHT_BYTES"), "{refused}");
        let first = budget.hold(6 << 20).await.unwrap();
        let mut second = Box::pin(budget.hold(6 << 20));
        assert!((&mut second).now_or_never().is_none(), "12 MiB held of 10");
        drop(first);
        assert!(second.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn no_limit_holds_nothing() {
        let budget = ByteBudget::new(0);
        assert!(budget.hold(u64::MAX).await.unwrap().is_none());
    }
}
