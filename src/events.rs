//! The run event log: append-only JSON lines, one object per event, flushed per line. Training
//! writes it; the CLI progress bar, `scmz jobs` and the TUI read it, also while it grows and from
//! other processes. Schema: every line has `t` (RFC 3339, UTC) and `event`.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Loss terms per cell: reconstruction (negative log-likelihood), KL divergence, and the total
/// that was optimised (`recon + kl_weight * kl`); `elbo` is `recon + kl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossTerms {
    pub recon: f64,
    pub kl: f64,
    pub total: f64,
    pub elbo: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        name: String,
        config: serde_json::Value,
        device: String,
        data: Vec<String>,
        n_train: usize,
        n_val: usize,
        first_epoch: usize,
        max_epochs: usize,
        /// The run these records belong to (one per run folder, kept by `--resume`) and the job
        /// that started this part of it; logs of older scmz have neither.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
    },
    Step {
        step: u64,
        epoch: usize,
        loss: f64,
        recon: f64,
        kl: f64,
        cells_per_s: f64,
    },
    Epoch {
        epoch: usize,
        train: LossTerms,
        val: LossTerms,
        kl_weight: f64,
        kl_per_dim: Vec<f64>,
        cells_per_s: f64,
        elapsed_s: f64,
        eta_s: f64,
    },
    /// The latent space of a fixed sample of validation cells: their means projected on the first
    /// two principal components, with the category (label, else batch) of each, for the TUI's
    /// scatter.
    Latent {
        epoch: usize,
        /// The obs column the codes come from, if any.
        key: Option<String>,
        categories: Vec<String>,
        /// Index into `categories` per point (-1: none).
        codes: Vec<i32>,
        points: Vec<[f32; 2]>,
        /// Share of the latent variance on each of the two components.
        explained: [f32; 2],
    },
    /// The epoch's checkpoint is on disk (a resume starts after it); written once its files are,
    /// so it may follow the next epoch's first steps.
    Checkpoint {
        epoch: usize,
    },
    End {
        status: String,
        best_epoch: Option<usize>,
        best_val_elbo: Option<f64>,
        model: Option<String>,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub t: String,
    #[serde(flatten)]
    pub event: Event,
}

/// Current time as RFC 3339 in UTC, e.g. `2026-11-25T16:40:00Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// A time as RFC 3339 in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Seconds from an RFC 3339 time (as `rfc3339` writes, or with an offset) until now; None when
/// `time` is not one.
pub fn seconds_since(time: &str) -> Option<f64> {
    let t: jiff::Timestamp = time.parse().ok()?;
    Some(jiff::Timestamp::now().duration_since(t).as_secs_f64())
}

/// Whether RFC 3339 time `t` is not after `end` (compared as text where one does not parse).
pub fn not_after(t: &str, end: &str) -> bool {
    match (t.parse::<jiff::Timestamp>(), end.parse::<jiff::Timestamp>()) {
        (Ok(t), Ok(end)) => t <= end,
        _ => t <= end,
    }
}

/// The records of job `job`'s run, from a log that runs with one model name may share (one
/// restarted with `--restart`, or saved over with `--overwrite`): from each start of that run
/// (the job's own and those of jobs that resumed it) to the next start of another. Without a job
/// (a run started in a terminal), the last run's. A log of older scmz (no run ids) is given whole;
/// one whose runs name jobs but not this one gives nothing (a later run replaced this job's).
pub fn of_job(records: &[Record], job: Option<&str>) -> Vec<Record> {
    let start = |r: &Record| match &r.event {
        Event::Start { run, job, .. } => Some((run.clone(), job.clone())),
        _ => None,
    };
    let mut starts = records.iter().filter_map(start);
    let mine = match job {
        Some(id) => starts.find(|(_, j)| j.as_deref() == Some(id)).and_then(|(run, _)| run),
        None => starts.filter_map(|(run, _)| run).next_back(),
    };
    let Some(mine) = mine else {
        let named = records
            .iter()
            .filter_map(start)
            .any(|(run, j)| run.is_some() && j.is_some());
        return if named { Vec::new() } else { records.to_vec() };
    };
    let mut current = None;
    records
        .iter()
        .filter(|r| {
            if let Some((run, _)) = start(r) {
                current = run;
            }
            current.as_deref() == Some(mine.as_str())
        })
        .cloned()
        .collect()
}

/// Appends events to a log file, one flushed line each.
pub struct EventLog {
    file: std::fs::File,
    path: std::path::PathBuf,
}

/// An I/O error that names the log and says what failed in the OS's words.
fn log_error(path: &Path, what: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!("{}: cannot {what}: {}", path.display(), crate::files::describe(&e)),
    )
}

impl EventLog {
    pub fn append_to(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| log_error(dir, "create the folder", e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| log_error(path, "open the event log", e))?;
        Ok(EventLog {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, event: Event) -> std::io::Result<()> {
        let mut line = serde_json::to_string(&Record {
            t: now_rfc3339(),
            event,
        })
        .map_err(std::io::Error::other)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| log_error(&self.path, "write", e))
    }
}

/// Reads every complete line of a log; a partly written last line is skipped.
pub fn read_log(path: &Path) -> std::io::Result<Vec<Record>> {
    // Only a regular file: a job record edited to name a FIFO or `/dev/zero` would hang or fill
    // memory.
    let f = crate::files::open_regular(path).map_err(|e| {
        if path.exists() {
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
        } else {
            std::io::Error::from(std::io::ErrorKind::NotFound)
        }
    })?;
    Ok(std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect())
}

/// Follows a log that another process appends to: each `poll` parses only the complete lines
/// written since the last one. Starts over if the file was replaced by a shorter one.
#[derive(Debug, Default)]
pub struct LogTail {
    pub path: std::path::PathBuf,
    offset: u64,
    pub records: Vec<Record>,
}

impl LogTail {
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        LogTail {
            path: path.into(),
            ..Default::default()
        }
    }

    /// Reads what was appended; returns whether anything new arrived.
    pub fn poll(&mut self) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = crate::files::open_regular(&self.path) else {
            return false;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0;
            self.records.clear();
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        if f.take(len - self.offset).read_to_end(&mut buf).is_err() {
            return false;
        }
        // Only complete lines; a line being written is read next time.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return false;
        };
        let before = self.records.len();
        for line in buf[..=end].split(|&b| b == b'\n') {
            if let Ok(r) = serde_json::from_slice(line) {
                self.records.push(r);
            }
        }
        self.offset += end as u64 + 1;
        self.records.len() > before
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_time_is_rfc3339() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let mut log = EventLog::append_to(&p).unwrap();
        log.write(Event::Checkpoint { epoch: 3 }).unwrap();
        log.write(Event::Error { message: "x".into() }).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"t\":\"2026")
            .unwrap();
        let recs = read_log(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].event, Event::Checkpoint { epoch: 3 });
        let t = &recs[0].t;
        assert_eq!((t.len(), &t[4..5], &t[10..11], &t[19..]), (20, "-", "T", "Z"), "{t}");
        assert!(t.as_str() > "2025-01-01");
    }

    fn start(run: Option<&str>, job: Option<&str>) -> Record {
        Record {
            t: String::new(),
            event: Event::Start {
                name: "m".into(),
                config: serde_json::Value::Null,
                device: "cpu".into(),
                data: Vec::new(),
                n_train: 9,
                n_val: 1,
                first_epoch: 0,
                max_epochs: 5,
                run: run.map(String::from),
                job: job.map(String::from),
            },
        }
    }

    fn mark(epoch: usize) -> Record {
        Record {
            t: String::new(),
            event: Event::Checkpoint { epoch },
        }
    }

    fn epochs(records: &[Record]) -> Vec<usize> {
        let each = |r: &Record| match r.event {
            Event::Checkpoint { epoch } => Some(epoch),
            _ => None,
        };
        records.iter().filter_map(each).collect()
    }

    /// Runs with one name share a log: each job sees its own run (with the jobs that resumed it),
    /// never another's; older logs read as before.
    #[test]
    fn a_job_reads_only_its_own_run_of_a_shared_log() {
        let log = vec![
            start(Some("r1"), Some("a")),
            mark(0),
            mark(1),
            start(Some("r1"), Some("b")),
            mark(2),
            start(Some("r2"), Some("c")),
            mark(0),
        ];
        assert_eq!(epochs(&of_job(&log, Some("a"))), [0, 1, 2]);
        assert_eq!(epochs(&of_job(&log, Some("b"))), [0, 1, 2]);
        assert_eq!(epochs(&of_job(&log, Some("c"))), [0]);
        assert!(of_job(&log[5..], Some("a")).is_empty(), "a run that replaced job a's");
        let terminal = vec![start(Some("t1"), None), mark(0), start(Some("t2"), None), mark(3)];
        assert_eq!(epochs(&of_job(&terminal, None)), [3]);
        let old = vec![start(None, None), mark(0), start(None, None), mark(1)];
        assert_eq!(epochs(&of_job(&old, Some("a"))), [0, 1]);
    }

    #[test]
    fn times_are_written_and_read_as_rfc3339() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        let two_min_ago = rfc3339(SystemTime::now() - std::time::Duration::from_secs(120));
        let s = seconds_since(&two_min_ago).unwrap();
        assert!((119.0..125.0).contains(&s), "{s}");
        assert!(seconds_since("2026-12-06T10:00:00+02:00").is_some());
        assert_eq!(seconds_since("yesterday"), None);
    }

    #[test]
    fn a_tail_reads_only_complete_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let mut tail = LogTail::new(&p);
        assert!(!tail.poll());
        let mut log = EventLog::append_to(&p).unwrap();
        log.write(Event::Checkpoint { epoch: 0 }).unwrap();
        assert!(tail.poll());
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"t\":\"x\",\"event\":\"checkpoint\",").unwrap();
        assert!(!tail.poll());
        f.write_all(b"\"epoch\":1}\n").unwrap();
        assert!(tail.poll());
        assert_eq!(tail.records.len(), 2);
        assert_eq!(tail.records[1].event, Event::Checkpoint { epoch: 1 });
        std::fs::write(&p, "").unwrap();
        tail.poll();
        assert!(tail.records.is_empty());
    }
}
