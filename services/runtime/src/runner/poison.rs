//! Records that kill the stage's process. A panic is caught, but an
//! out-of-memory kill, an abort or a stack overflow ends the process before
//! its batch commits; the batch would be read again at every restart, by
//! every replica in turn, and no record of the partitions in it would move.
//!
//! Before a batch runs any stage code, the runner writes the range of
//! offsets it covers in each source topic and partition to the stage's
//! compacted `inflight` topic, and waits for the write. One record per
//! batch, keyed by the instance and holding its newest range of every
//! source partition it owns, all in partition 0: a batch costs one produce
//! request however many partitions it spans. A range whose batch committed
//! is out of date: the committed offset is past its start. The next owner
//! of a partition (after a restart, or another replica) reads these records
//! as it restores the partition: each instance's newest record, and of
//! those the one written last for the partition. A range that still starts
//! at the committed offset was being processed when the process ended, one
//! more time than the record says. That range is then processed on its own
//! (a *suspect*), whole after one death and halved after each further one;
//! a single record whose range ended the process `POISON_MAX_CRASHES` times
//! fails permanently without being processed again, and the partition goes
//! on. A batch that fails while its process lives clears its ranges, so
//! only a process that ended counts.
//!
//! The cost is one acknowledged write per batch that runs stage code; with
//! `POISON_MAX_CRASHES=0` nothing is written or read.

use super::batch::BatchError;
use super::item::Item;
use artifact_kafka::client::{QuietEof, consumer_config, header, producer_config};
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::headers;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// A source topic and partition.
pub(crate) type Source = (String, i32);

/// The offsets of a source partition a batch covers, and the deaths seen
/// while processing them before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Range {
    pub source: Source,
    pub first: i64,
    pub last: i64,
    pub deaths: u32,
}

/// The ranges of a batch's records, per source partition.
pub(crate) fn ranges(items: &[Item], deaths: u32) -> Vec<Range> {
    let mut by: BTreeMap<Source, (i64, i64)> = BTreeMap::new();
    for it in items {
        let o = it.msg.offset();
        by.entry((it.msg.topic().to_owned(), it.partition()))
            .and_modify(|(f, l)| {
                *f = (*f).min(o);
                *l = (*l).max(o);
            })
            .or_insert((o, o));
    }
    by.into_iter()
        .map(|(source, (first, last))| Range {
            source,
            first,
            last,
            deaths,
        })
        .collect()
}

/// A range that was being processed when a process ended: processed on its
/// own until it has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suspect {
    /// The first offset not yet committed.
    pub from: i64,
    /// One past the range's last offset.
    pub to: i64,
    /// Times a process ended while processing (part of) it.
    pub deaths: u32,
    /// The record failed as poison, once isolated: when it commits, the
    /// culprit is found and the rest of the range is read as usual.
    pub poison_at: Option<i64>,
}

impl Suspect {
    /// The suspect a range in flight makes, given the source partition's
    /// committed offset: one more death, if the range still starts there.
    pub fn of(range: &Range, committed: i64) -> Option<Suspect> {
        (range.first >= 0 && range.first == committed && range.last >= range.first).then(|| {
            Suspect {
                from: range.first,
                to: range.last + 1,
                deaths: range.deaths.saturating_add(1),
                poison_at: None,
            }
        })
    }

    /// How many offsets from `from` the next batch takes: all of them after
    /// one death, half after each further one.
    fn span(&self) -> i64 {
        let len = self.to - self.from;
        if self.deaths <= 1 { len } else { (len + 1) / 2 }
    }
}

/// The batch a suspect allows now.
#[derive(Debug)]
pub(crate) struct Isolated {
    /// Its records in this batch.
    pub items: Vec<Item>,
    /// The deaths of their range so far.
    pub deaths: u32,
    /// Whether the batch is one record that ended the process often enough
    /// to fail without being processed.
    pub poison: bool,
}

/// The suspects of the partitions this instance owns.
#[derive(Debug, Default)]
pub(crate) struct Suspects {
    by_source: HashMap<Source, Suspect>,
    max_deaths: u32,
}

impl Suspects {
    /// Suspects whose single records fail after `max_deaths` deaths.
    pub fn new(max_deaths: u32) -> Self {
        Suspects {
            by_source: HashMap::new(),
            max_deaths,
        }
    }

    pub fn insert(&mut self, source: Source, suspect: Suspect) {
        tracing::warn!(topic = %source.0, partition = source.1, from = suspect.from, to = suspect.to, deaths = suspect.deaths, "a batch was being processed when a stage process ended: processing its records on their own");
        self.by_source.insert(source, suspect);
    }

    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    /// Forgets the suspects of a partition no longer owned.
    pub fn revoked(&mut self, partition: i32) {
        self.by_source.retain(|(_, p), _| *p != partition);
    }

    /// Splits a collected batch: if any record lies in a suspect's range,
    /// the batch is that range's next slice alone, and everything else is
    /// returned to be read again; otherwise the batch is unchanged.
    pub fn isolate(&mut self, items: Vec<Item>) -> (Option<Isolated>, Vec<Item>, Vec<Item>) {
        if self.by_source.is_empty() {
            return (None, items, Vec::new());
        }
        // A suspect whose records all lie past its range has been passed
        // (its records were removed, by compaction or a purge).
        let mut first_seen: HashMap<Source, i64> = HashMap::new();
        for it in &items {
            let key = (it.msg.topic().to_owned(), it.partition());
            let o = it.msg.offset();
            first_seen
                .entry(key)
                .and_modify(|f| *f = (*f).min(o))
                .or_insert(o);
        }
        self.by_source
            .retain(|k, s| first_seen.get(k).is_none_or(|&f| f < s.to));
        let Some((source, suspect)) = self
            .by_source
            .iter()
            .filter(|(k, _)| first_seen.contains_key(*k))
            .min_by_key(|(k, _)| (*k).clone())
            .map(|(k, s)| (k.clone(), s.clone()))
        else {
            return (None, items, Vec::new());
        };
        let end = suspect.from + suspect.span();
        let (slice, rest): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|it| {
            it.msg.topic() == source.0
                && it.partition() == source.1
                && (suspect.from..end).contains(&it.msg.offset())
        });
        if slice.is_empty() {
            return (None, Vec::new(), rest);
        }
        // Refused only once the range is down to this one record: a slice
        // of one taken from a wider range is processed, as the deaths may
        // be its neighbour's.
        let poison = suspect.to - suspect.from == 1
            && slice.len() == 1
            && self.max_deaths > 0
            && suspect.deaths >= self.max_deaths;
        if poison && let Some(s) = self.by_source.get_mut(&source) {
            s.poison_at = Some(slice[0].msg.offset());
        }
        let isolated = Isolated {
            items: slice,
            deaths: suspect.deaths,
            poison,
        };
        (Some(isolated), Vec::new(), rest)
    }

    /// A batch committed these records: its suspects move past them.
    pub fn committed(&mut self, items: &[Item]) {
        if self.by_source.is_empty() {
            return;
        }
        for it in items {
            let key = (it.msg.topic().to_owned(), it.partition());
            if let Some(s) = self.by_source.get_mut(&key) {
                s.from = s.from.max(it.msg.offset() + 1);
                if s.from >= s.to || s.poison_at == Some(it.msg.offset()) {
                    self.by_source.remove(&key);
                }
            }
        }
    }
}

/// Why a record fails without being processed.
pub(crate) fn poison_reason(deaths: u32, max: u32) -> String {
    format!(
        "the stage's process ended {deaths} times while processing this record (killed, out \
         of memory or crashed); it is not processed again (POISON_MAX_CRASHES={max})"
    )
}

/// The partition of the in-flight topic that holds every instance's record.
const MARKER_PARTITION: i32 = 0;

/// Writes the ranges of batches in flight.
pub(crate) struct Markers {
    producer: FutureProducer,
    topic: String,
    instance: String,
    /// This instance's newest range of each source partition it owns: every
    /// record carries them all, so its newest record is all there is to know
    /// of it, and compaction keeps just that one.
    ranges: Mutex<BTreeMap<Source, Range>>,
}

impl Markers {
    pub fn new(conn: &ConnectionConfig, topic: String, instance: String) -> Result<Self, String> {
        let producer = producer_config(conn, &format!("{instance}-inflight"))
            .set("linger.ms", "0")
            .create()
            .map_err(|e| e.to_string())?;
        Ok(Markers {
            producer,
            topic,
            instance,
            ranges: Mutex::new(BTreeMap::new()),
        })
    }

    /// Writes the ranges and waits until the broker has them.
    pub async fn mark(&self, ranges: &[Range]) -> Result<(), BatchError> {
        self.write(|held| {
            for r in ranges {
                held.insert(r.source.clone(), r.clone());
            }
        })
        .await
    }

    /// Records that these ranges are no longer being processed (their batch
    /// failed and will be read again), so no owner counts a death for them.
    /// A source's newer range (a later batch's) stays.
    pub async fn clear(&self, ranges: &[Range]) {
        let cleared = self.write(|held| clear_held(held, ranges));
        if let Err(e) = cleared.await {
            tracing::warn!(error = ?e, "clearing the record of a failed batch failed");
        }
    }

    /// Holds again a range a restore found in flight at a death, as it was
    /// recorded, so that this instance's next records keep it until the
    /// range is processed: a death before then finds it again.
    pub fn hold(&self, source: &Source, suspect: &Suspect) {
        let range = Range {
            source: source.clone(),
            first: suspect.from,
            last: suspect.to - 1,
            deaths: suspect.deaths.saturating_sub(1),
        };
        self.ranges
            .lock()
            .expect("markers lock")
            .insert(source.clone(), range);
    }

    /// Forgets the ranges of a partition no longer owned: its next owner's
    /// records, not this instance's, say what is in flight there.
    pub fn revoked(&self, partition: i32) {
        self.ranges
            .lock()
            .expect("markers lock")
            .retain(|(_, p), _| *p != partition);
    }

    /// Changes the held ranges and writes them all. The change and the send
    /// happen under one lock, so the partition's order is the changes'
    /// order and the instance's last record holds its last state.
    async fn write(
        &self,
        change: impl FnOnce(&mut BTreeMap<Source, Range>),
    ) -> Result<(), BatchError> {
        let failed =
            |why: String| BatchError::Transient(format!("recording the batch in flight: {why}"));
        let delivery = {
            let mut held = self.ranges.lock().expect("markers lock");
            change(&mut held);
            let payload = encode(held.values());
            let record = FutureRecord::to(&self.topic)
                .partition(MARKER_PARTITION)
                .key(self.instance.as_bytes())
                .payload(payload.as_bytes());
            self.producer
                .send_result(record)
                .map_err(|(e, _)| failed(e.to_string()))?
        };
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(failed(e.to_string())),
            Err(_) => Err(failed("the producer went away".into())),
        }
    }
}

/// Clears the held ranges equal to `ranges`; a source's newer range stays.
fn clear_held(held: &mut BTreeMap<Source, Range>, ranges: &[Range]) {
    for r in ranges {
        if let Some(h) = held.get_mut(&r.source)
            && (h.first, h.last) == (r.first, r.last)
        {
            (h.first, h.last) = (-1, -1);
        }
    }
}

/// A record's ranges, a line each: topic, partition, first and last offset,
/// deaths (topic names hold no spaces).
fn encode<'a>(ranges: impl Iterator<Item = &'a Range>) -> String {
    ranges
        .map(|r| {
            format!(
                "{} {} {} {} {}\n",
                r.source.0, r.source.1, r.first, r.last, r.deaths
            )
        })
        .collect()
}

fn decode(payload: &str) -> Vec<Range> {
    payload
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let topic = f.next()?.to_owned();
            let partition = f.next()?.parse().ok()?;
            let first = f.next()?.parse().ok()?;
            let last = f.next()?.parse().ok()?;
            let deaths = f.next()?.parse().ok()?;
            Some(Range {
                source: (topic, partition),
                first,
                last,
                deaths,
            })
        })
        .collect()
}

/// The newest range of each source, from the in-flight topic's records in
/// log order, each a key and its ranges: a key's newest record replaces its
/// earlier ones (as compaction does, so the answer is the same before and
/// after), and of those the record written last for a source says.
fn newest(records: impl IntoIterator<Item = (String, Vec<Range>)>) -> Vec<Range> {
    let mut by_key: HashMap<String, (usize, Vec<Range>)> = HashMap::new();
    for (at, (key, ranges)) in records.into_iter().enumerate() {
        by_key.insert(key, (at, ranges));
    }
    let mut latest: Vec<(usize, Vec<Range>)> = by_key.into_values().collect();
    latest.sort_by_key(|(at, _)| *at);
    let mut by_source: BTreeMap<Source, Range> = BTreeMap::new();
    for r in latest.into_iter().flat_map(|(_, ranges)| ranges) {
        by_source.insert(r.source.clone(), r);
    }
    by_source.into_values().collect()
}

/// The newest range of each source partition in flight, read once for the
/// partitions whose restores start together (one rebalance): every
/// instance's record is in one partition, which each would read whole.
pub(crate) type InFlightRead = std::sync::Arc<tokio::sync::OnceCell<Vec<Range>>>;

/// The newest range of each source partition, from the in-flight topic.
/// Blocking: runs on a blocking thread.
pub(crate) fn read_in_flight(conn: &ConnectionConfig, topic: &str) -> Result<Vec<Range>, String> {
    Ok(newest(read_markers(conn, topic)?))
}

/// The suspects of `partition`: its newest ranges in flight (`in_flight`),
/// each against the committed offset of `group` on its source. Blocking:
/// runs on a blocking thread.
pub(crate) fn read_suspects(
    conn: &ConnectionConfig,
    group: &str,
    in_flight: &[Range],
    partition: i32,
) -> Result<Vec<(Source, Suspect)>, String> {
    let ranges: Vec<&Range> = in_flight
        .iter()
        .filter(|r| r.source.1 == partition)
        .collect();
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let consumer: BaseConsumer<QuietEof> = consumer_config(conn, "inflight-reader", group)
        .create_with_context(QuietEof)
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for r in &ranges {
        let _ = tpl.add_partition(&r.source.0, r.source.1);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(ranges
        .into_iter()
        .filter_map(|r| {
            let c = committed
                .find_partition(&r.source.0, r.source.1)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(0)
                .max(0);
            Suspect::of(r, c).map(|s| (r.source.clone(), s))
        })
        .collect())
}

/// The in-flight topic's records in log order, each its key and ranges. A
/// record written before markers were one per batch has its source topic
/// as key, no payload, and its range in headers.
fn read_markers(conn: &ConnectionConfig, topic: &str) -> Result<Vec<(String, Vec<Range>)>, String> {
    let partition = MARKER_PARTITION;
    let consumer: BaseConsumer<QuietEof> =
        consumer_config(conn, "inflight-reader", "inflight-reader-unused")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "10")
            .create_with_context(QuietEof)
            .map_err(|e| e.to_string())?;
    let (_, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    if high <= 0 {
        return Ok(records);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None if std::time::Instant::now() > deadline => {
                return Err(format!("{topic} partition {partition} not read to its end"));
            }
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(m)) => {
                let m = m.detach();
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let ranges = match m.payload() {
                    Some(p) if !p.is_empty() => decode(&String::from_utf8_lossy(p)),
                    _ => legacy_range(&m, key).into_iter().collect(),
                };
                records.push((key.to_owned(), ranges));
            }
        }
    }
    Ok(records)
}

/// The range of a record written one per source partition, keyed by its
/// source topic, in headers.
fn legacy_range(m: &OwnedMessage, source: &str) -> Option<Range> {
    let num = |name| header(m, name).and_then(|v| v.parse::<i64>().ok());
    Some(Range {
        source: (source.to_owned(), m.partition()),
        first: num(headers::FIRST_OFFSET)?,
        last: num(headers::LAST_OFFSET)?,
        deaths: num(headers::DEATHS).unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::testing::item;
    use rdkafka::message::{Header, OwnedHeaders};

    fn range(first: i64, last: i64, deaths: u32) -> Range {
        Range {
            source: ("t.created".into(), 0),
            first,
            last,
            deaths,
        }
    }

    fn on(partition: i32, first: i64, last: i64, deaths: u32) -> Range {
        Range {
            source: ("t.created".into(), partition),
            first,
            last,
            deaths,
        }
    }

    #[test]
    fn a_marker_record_round_trips_its_ranges() {
        let ranges = [on(0, 10, 14, 0), on(23, -1, -1, 2)];
        let text = encode(ranges.iter());
        assert_eq!(text, "t.created 0 10 14 0\nt.created 23 -1 -1 2\n");
        assert_eq!(decode(&text), ranges);
        assert!(
            decode("t.created 0 x 14 0\n").is_empty(),
            "a broken line is skipped"
        );
    }

    #[test]
    fn each_instance_says_with_its_newest_record_and_the_last_writer_of_a_source_wins() {
        let log = vec![
            ("a".to_owned(), vec![on(0, 10, 20, 0)]),
            ("b".to_owned(), vec![on(1, 5, 6, 0)]),
            ("a".to_owned(), vec![on(0, 21, 30, 0)]),
            // b took partition 0 over from a, which forgot it.
            ("b".to_owned(), vec![on(0, 31, 40, 1), on(1, 7, 8, 0)]),
            ("a".to_owned(), vec![on(2, 1, 2, 0)]),
        ];
        let want = vec![on(0, 31, 40, 1), on(1, 7, 8, 0), on(2, 1, 2, 0)];
        assert_eq!(newest(log.clone()), want);
        // Compacted (each key's newest record only): the same answer.
        let compacted: Vec<_> = log.into_iter().skip(3).collect();
        assert_eq!(newest(compacted), want);
        // An instance's older record does not count once a newer one of
        // it no longer holds that partition.
        let only_a = vec![
            ("a".to_owned(), vec![on(0, 10, 20, 0)]),
            ("a".to_owned(), vec![on(2, 1, 2, 0)]),
        ];
        assert_eq!(newest(only_a), vec![on(2, 1, 2, 0)]);
    }

    #[test]
    fn clearing_a_failed_batch_keeps_a_later_batchs_range() {
        let mut held: BTreeMap<Source, Range> = [on(0, 21, 30, 0), on(1, 5, 9, 0)]
            .into_iter()
            .map(|r| (r.source.clone(), r))
            .collect();
        // The failed batch covered 10..=20 of partition 0 (the next batch
        // already marked 21..=30) and 5..=9 of partition 1.
        clear_held(&mut held, &[on(0, 10, 20, 0), on(1, 5, 9, 0)]);
        let left: Vec<_> = held.into_values().collect();
        assert_eq!(left, vec![on(0, 21, 30, 0), on(1, -1, -1, 0)]);
    }

    #[test]
    fn a_record_from_before_one_per_batch_reads_as_its_partitions_range() {
        let headers = [
            (headers::FIRST_OFFSET, "10"),
            (headers::LAST_OFFSET, "14"),
            (headers::DEATHS, "2"),
        ]
        .iter()
        .fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        });
        let m = OwnedMessage::new(
            None,
            Some(b"t.created".to_vec()),
            "t.inflight".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            3,
            Some(headers),
        );
        assert_eq!(legacy_range(&m, "t.created"), Some(on(0, 10, 14, 2)));
    }

    #[test]
    fn a_range_found_at_a_restore_is_held_as_recorded_until_revoked() {
        let conn = ConnectionConfig::local("t");
        let markers = Markers::new(&conn, "t.inflight".into(), "i".into()).unwrap();
        let found = Suspect::of(&on(3, 10, 14, 1), 10).unwrap();
        let source: Source = ("t.created".into(), 3);
        markers.hold(&source, &found);
        let held: Vec<Range> = markers.ranges.lock().unwrap().values().cloned().collect();
        assert_eq!(held, vec![on(3, 10, 14, 1)]);
        // Read again after another death elsewhere: the same suspect.
        assert_eq!(Suspect::of(&held[0], 10), Some(found));
        markers.revoked(3);
        assert!(markers.ranges.lock().unwrap().is_empty());
    }

    #[test]
    fn a_range_still_at_the_committed_offset_was_in_flight_at_a_death() {
        assert_eq!(
            Suspect::of(&range(10, 14, 0), 10),
            Some(Suspect {
                from: 10,
                to: 15,
                deaths: 1,
                poison_at: None
            })
        );
        assert_eq!(Suspect::of(&range(10, 14, 2), 10).unwrap().deaths, 3);
        // Committed past its start: the batch committed.
        assert_eq!(Suspect::of(&range(10, 14, 0), 12), None);
        assert_eq!(Suspect::of(&range(10, 14, 0), 15), None);
        // Cleared by a batch that failed while its process lived.
        assert_eq!(Suspect::of(&range(-1, -1, 0), 0), None);
    }

    fn items(offsets: std::ops::Range<i64>) -> Vec<Item> {
        offsets.map(|o| item(0, o)).collect()
    }

    fn offsets(items: &[Item]) -> Vec<i64> {
        items.iter().map(|i| i.msg.offset()).collect()
    }

    #[test]
    fn a_suspect_is_retried_whole_then_halved_down_to_a_poison_record() {
        let source: Source = ("t.created".into(), 0);
        let mut s = Suspects::new(3);
        s.insert(
            source.clone(),
            Suspect {
                from: 10,
                to: 14,
                deaths: 1,
                poison_at: None,
            },
        );
        // One death: the whole range, alone; the rest is read again.
        let mut batch = items(8..20);
        batch.push(item(1, 3));
        let (iso, kept, rest) = s.isolate(batch);
        let iso = iso.unwrap();
        assert_eq!(offsets(&iso.items), [10, 11, 12, 13]);
        assert!(kept.is_empty() && !iso.poison);
        assert_eq!(rest.len(), 9, "other offsets and partitions");
        // It died again: two deaths, the first half.
        s.insert(
            source.clone(),
            Suspect {
                from: 10,
                to: 14,
                deaths: 2,
                poison_at: None,
            },
        );
        let (iso, _, _) = s.isolate(items(10..20));
        assert_eq!(offsets(&iso.unwrap().items), [10, 11]);
        // That half committed: the second half next.
        s.committed(&items(10..12));
        let (iso, _, _) = s.isolate(items(12..20));
        assert_eq!(offsets(&iso.unwrap().items), [12]);
        // Offset 12 died twice more: a poison record at three deaths.
        s.insert(
            source.clone(),
            Suspect {
                from: 12,
                to: 13,
                deaths: 3,
                poison_at: None,
            },
        );
        let (iso, _, _) = s.isolate(items(12..20));
        let iso = iso.unwrap();
        assert!(iso.poison && iso.deaths == 3);
        // It committed (as a failure): the suspect is done.
        s.committed(&iso.items);
        assert!(s.is_empty());
        let (iso, kept, rest) = s.isolate(items(13..20));
        assert!(iso.is_none() && rest.is_empty());
        assert_eq!(kept.len(), 7);
    }

    #[test]
    fn a_record_beside_a_poison_record_in_a_halved_range_is_not_blamed() {
        // [0, 3) died in a batch and alone, then its first half [0, 2):
        // three deaths, the poison at offset 1.
        let mut s = Suspects::new(3);
        s.insert(
            ("t.created".into(), 0),
            Suspect {
                from: 0,
                to: 2,
                deaths: 3,
                poison_at: None,
            },
        );
        let (iso, _, _) = s.isolate(items(0..5));
        let iso = iso.unwrap();
        assert!(
            !iso.poison && offsets(&iso.items) == [0],
            "0 is processed alone"
        );
        s.committed(&iso.items);
        let (iso, _, _) = s.isolate(items(1..5));
        let iso = iso.unwrap();
        assert!(iso.poison && offsets(&iso.items) == [1], "1 is left alone");
    }

    #[test]
    fn the_records_after_a_poison_record_are_not_blamed_for_its_deaths() {
        let mut s = Suspects::new(3);
        s.insert(
            ("t.created".into(), 0),
            Suspect {
                from: 12,
                to: 13,
                deaths: 5,
                poison_at: None,
            },
        );
        let (iso, _, _) = s.isolate(items(12..20));
        let iso = iso.unwrap();
        assert!(iso.poison && offsets(&iso.items) == [12]);
        s.committed(&iso.items);
        let (iso, kept, _) = s.isolate(items(13..20));
        assert!(iso.is_none(), "13 is read as usual");
        assert_eq!(kept.len(), 7);
    }

    #[test]
    fn a_suspect_whose_records_are_gone_is_dropped() {
        let mut s = Suspects::new(3);
        s.insert(
            ("t.created".into(), 0),
            Suspect {
                from: 10,
                to: 14,
                deaths: 2,
                poison_at: None,
            },
        );
        let (iso, kept, _) = s.isolate(items(20..25));
        assert!(iso.is_none());
        assert_eq!(kept.len(), 5);
        assert!(s.is_empty());
    }

    #[test]
    fn ranges_cover_each_source_partition_of_a_batch() {
        let mut batch = items(5..9);
        batch.push(item(2, 40));
        let r = ranges(&batch, 0);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].first, r[0].last), (5, 8));
        assert_eq!((r[1].source.1, r[1].first, r[1].last), (2, 40, 40));
    }
}
