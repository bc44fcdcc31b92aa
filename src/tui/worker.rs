//! The TUI's only contact with the domain: requests go to a worker thread, which calls the
//! library (catalog, zoo, jobs, event logs, overlap) and sends results back. Nothing here
//! draws, and the UI thread never opens a dataset or waits on a process. Each request is also a
//! plain function, so tests build the same updates without threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use scmz::data::catalog::{self, Summary};
use scmz::data::dataset::ColumnKind;
use scmz::data::Dataset;
use scmz::events::{Event, LogTail, Record};
use scmz::genes::overlap::{compare_dataset_to_list, compare_lists, label};
use scmz::genes::{GeneList, OverlapReport};
use scmz::jobs::{Job, Registry, Submission};
use scmz::spec::{EngineRequest, ProjectSpec};
use scmz::zoo::manifest::Manifest;
use scmz::zoo::Zoo;

/// Where the TUI reads from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub data_dirs: Vec<PathBuf>,
    pub zoo: PathBuf,
    pub jobs: PathBuf,
    /// Catalog cache; `None` opens every file.
    pub cache: Option<PathBuf>,
    /// The `scmz` binary that opens files for the catalog in a child process (see
    /// `catalog::scan`); `None` opens them in this process.
    pub scan_worker: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub manifest: Manifest,
    /// Epoch events of the model's training history.
    pub history: Vec<Record>,
    /// `scmz compare` results kept with the model, newest first.
    pub comparisons: Vec<scmz::zoo::comparison::Comparison>,
}

/// An obs column with its most frequent categories.
#[derive(Debug, Clone, PartialEq)]
pub struct ObsColumn {
    pub name: String,
    pub kind: String,
    pub top: Vec<(String, usize)>,
    pub n_categories: usize,
}

#[derive(Debug)]
pub enum Request {
    /// Jobs, and with `all` datasets and models too.
    Refresh {
        all: bool,
    },
    Details(PathBuf),
    /// The event log the monitor shows (a job's, or a model's history).
    Follow(Option<PathBuf>),
    Overlap {
        dataset: PathBuf,
        model: String,
    },
    Matrix(Vec<PathBuf>),
    Submit(Box<Submission>),
    Cancel(String),
    /// Start an ended job again (`scmz jobs resume`).
    Resume(String),
    /// The job whose log the log pane shows (sent again with each refresh), or none.
    JobLog(Option<String>),
    /// What a finished projection job reported (its labels, its predicted mapping).
    Summary(String),
}

#[derive(Debug)]
pub enum Update {
    Datasets(Vec<Summary>),
    /// The zoo's models, and why each folder that cannot be read cannot.
    Models(Vec<ModelEntry>, Vec<String>),
    Jobs(Vec<Job>),
    Details(PathBuf, Result<Vec<ObsColumn>, String>),
    /// New records of the followed log (`reset`: the log started over or another was chosen).
    Run {
        path: PathBuf,
        records: Vec<Record>,
        reset: bool,
    },
    Overlap {
        dataset: PathBuf,
        model: String,
        result: Result<Box<OverlapReport>, String>,
    },
    Predicted {
        dataset: PathBuf,
        model: String,
        result: Result<String, String>,
    },
    Matrix(Result<Vec<OverlapReport>, String>),
    Notice(String),
    /// The last lines of a job's stderr log.
    JobLog {
        job: String,
        lines: Vec<String>,
    },
    /// The report lines of a finished projection job (`Request::Summary`).
    Summary {
        job: String,
        lines: Vec<String>,
    },
}

pub fn datasets(s: &Sources) -> Update {
    let mut rows = catalog::scan(&s.data_dirs, s.cache.as_deref(), s.scan_worker.as_deref());
    // As people read names (c2 before c10), the order of the Overlap lists and the matrix.
    rows.sort_by(|a, b| natord::compare_ignore_case(&a.path.to_string_lossy(), &b.path.to_string_lossy()));
    Update::Datasets(rows)
}

pub fn models(s: &Sources) -> Update {
    let zoo = Zoo::new(&s.zoo);
    let (good, bad): (Vec<_>, Vec<_>) = zoo.list().into_iter().partition(Result::is_ok);
    let unreadable = bad.into_iter().filter_map(Result::err).map(|e| e.to_string()).collect();
    let mut out: Vec<ModelEntry> = good
        .into_iter()
        .filter_map(Result::ok)
        .map(|manifest| {
            let history = scmz::events::read_log(&zoo.model_dir(&manifest.name).join("history.jsonl"))
                .unwrap_or_default()
                .into_iter()
                .filter(|r| matches!(r.event, Event::Epoch { .. } | Event::Latent { .. }))
                .collect();
            let comparisons = scmz::zoo::comparison::load_all(&zoo.model_dir(&manifest.name));
            ModelEntry {
                manifest,
                history,
                comparisons,
            }
        })
        .collect();
    out.sort_by(|a, b| natord::compare_ignore_case(&a.manifest.name, &b.manifest.name));
    Update::Models(out, unreadable)
}

/// Jobs, then training runs started in a terminal (no job record) in the zoo shown.
pub fn jobs(s: &Sources) -> Update {
    let reg = Registry::new(&s.jobs);
    let _ = reg.schedule();
    let mut jobs: Vec<Job> = reg.list().into_iter().filter_map(Result::ok).collect();
    let runs = scmz::jobs::terminal_runs(&s.zoo, &jobs);
    // Oldest first like the registry, so the newest is on top of the screen.
    jobs.splice(0..0, runs);
    Update::Jobs(jobs)
}

pub fn details(path: &Path) -> Update {
    let result = Dataset::open(path).map_err(|e| e.to_string()).map(|ds| {
        ds.info()
            .obs
            .iter()
            .map(|c| match &c.kind {
                ColumnKind::Categorical { categories, counts, .. } => {
                    let mut top: Vec<(String, usize)> = categories
                        .iter()
                        .cloned()
                        .zip(counts.iter().map(|&n| n as usize))
                        .collect();
                    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    let n = top.len();
                    top.truncate(3);
                    ObsColumn {
                        name: c.name.clone(),
                        kind: "categorical".into(),
                        top,
                        n_categories: n,
                    }
                }
                other => ObsColumn {
                    name: c.name.clone(),
                    kind: match other {
                        ColumnKind::Numeric { dtype } => dtype.clone(),
                        ColumnKind::Boolean => "bool".into(),
                        ColumnKind::String => "string".into(),
                        ColumnKind::Other { encoding } => encoding.clone(),
                        ColumnKind::Categorical { .. } => unreachable!(),
                    },
                    top: Vec::new(),
                    n_categories: 0,
                },
            })
            .collect()
    });
    Update::Details(path.to_path_buf(), result)
}

pub fn overlap(s: &Sources, dataset: &Path, model: &str) -> Update {
    let result = (|| -> Result<Box<OverlapReport>, String> {
        let m = Zoo::new(&s.zoo).load(model).map_err(|e| e.to_string())?;
        let ds = Dataset::open(dataset).map_err(|e| e.to_string())?;
        compare_dataset_to_list(&ds, &m.gene_list())
            .map(Box::new)
            .map_err(|e| e.to_string())
    })();
    Update::Overlap {
        dataset: dataset.to_path_buf(),
        model: model.to_string(),
        result,
    }
}

/// The engine's mapping prediction (`scmz project --predict-only --json`) for people, in its
/// units: the latent displacement as a share of the latent spread, and the labels kept.
pub fn prediction_text(p: &serde_json::Value) -> String {
    match p["predicted_displacement"].as_f64() {
        Some(d) => format!(
            "latent displacement {d:.3} of the latent spread{}",
            p["predicted_agreement"]
                .as_f64()
                .map(|a| format!("; {:.0}% of labels as with all genes", 100.0 * a))
                .unwrap_or_default()
        ),
        None => "- (the model keeps no reference counts)".into(),
    }
}

/// The mapping quality the engine predicts (a child process: the TUI never loads libtorch).
pub fn predicted(s: &Sources, engine: &Path, dataset: &Path, model: &str) -> Update {
    let mut spec = ProjectSpec::prediction(dataset, model);
    spec.zoo = Some(s.zoo.clone());
    let out = EngineRequest::Project(Box::new(spec))
        .to_args()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        .and_then(|args| scmz::jobs::engine_command(engine).args(args).output());
    let result = match out {
        Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .map_err(|e| e.to_string())
            .map(|p| prediction_text(&p)),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("the engine failed")
            .trim_start_matches("error: ")
            .to_string()),
        Err(e) => Err(format!("{}: {e}", engine.display())),
    };
    Update::Predicted {
        dataset: dataset.to_path_buf(),
        model: model.to_string(),
        result,
    }
}

#[cfg(test)]
pub fn matrix(paths: &[PathBuf]) -> Update {
    matrix_unless(paths, || false).unwrap_or(Update::Matrix(Err("cancelled".into())))
}

/// Every ordered pair of datasets (gene lists only: no matrix is read), unless `cancelled` says,
/// between two files or two rows, that the user has moved on (a newer overlap, matrix or refresh
/// was asked for): then None, and nothing is sent.
pub fn matrix_unless(paths: &[PathBuf], cancelled: impl Fn() -> bool) -> Option<Update> {
    let mut lists: Vec<GeneList> = Vec::with_capacity(paths.len());
    for p in paths {
        if cancelled() {
            return None;
        }
        match Dataset::open(p) {
            Ok(ds) => lists.push(GeneList::from_table(label(&ds), &ds.info().genes)),
            Err(e) => return Some(Update::Matrix(Err(e.to_string()))),
        }
    }
    let mut out = Vec::with_capacity(lists.len() * lists.len());
    for a in &lists {
        if cancelled() {
            return None;
        }
        out.extend(lists.iter().map(|b| compare_lists(a, b)));
    }
    Some(Update::Matrix(Ok(out)))
}

/// The last `bytes` of the regular file `path`, as text (invalid UTF-8 replaced).
fn read_tail(path: &Path, bytes: u64) -> Result<String, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = scmz::files::open_regular(path).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let len = f.metadata().map_err(io)?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(bytes))).map_err(io)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(io)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The lines of a projection job's report (its stdout) that say what it found: the labels it
/// transferred and the mapping it predicted; read from the last 64 KiB, each printable.
pub fn summary(s: &Sources, job: &str) -> Update {
    let path = Registry::new(&s.jobs).job_dir(job).join("stdout.log");
    let lines = match read_tail(&path, 64 << 10) {
        Ok(t) => t
            .lines()
            .filter(|l| {
                scmz::zoo::projection::ProjectReport::FINDINGS
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| scmz::files::printable(l).to_string())
            .collect(),
        Err(e) => vec![format!("its report cannot be read ({e})")],
    };
    Update::Summary {
        job: job.to_string(),
        lines,
    }
}

/// The last 2,000 lines (at most 256 KiB) of job `job`'s stderr log, each printable.
pub fn job_log(s: &Sources, job: &str) -> Update {
    let lines = if job.starts_with("run:") {
        vec!["a run started in a terminal: its output went to that terminal".to_string()]
    } else {
        let dir = Registry::new(&s.jobs).job_dir(job);
        let path = dir.join("stderr.log");
        // What the job printed (a projection's report) follows its errors and progress.
        let report = read_tail(&dir.join("stdout.log"), 64 << 10).unwrap_or_default();
        let read = read_tail(&path, 256 << 10).map(|text| match report.trim() {
            "" => text,
            r => format!("{}\n-- output --\n{r}\n", text.trim_end()),
        });
        match read {
            Ok(text) => {
                // A progress line rewritten with \r shows as its last state.
                let all: Vec<String> = text
                    .lines()
                    .map(|l| scmz::files::printable(l.rsplit('\r').next().unwrap_or(l)).into_owned())
                    .collect();
                let skip = all.len().saturating_sub(2000);
                match all.len() {
                    0 => vec!["(the log is empty so far)".to_string()],
                    _ => all.into_iter().skip(skip).collect(),
                }
            }
            Err(e) => vec![e],
        }
    };
    Update::JobLog {
        job: job.to_string(),
        lines,
    }
}

/// The TUI writes projections into scmz's own folder, made on first use (the engine refuses an
/// output whose folder is not there: `p` on the Overlap screen failed so).
pub fn make_output_folder(req: &Submission) -> Result<(), String> {
    if let EngineRequest::Project(spec) = &req.request {
        if let Some(parent) = spec.output.as_deref().and_then(Path::parent) {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
    }
    Ok(())
}

pub fn submit(s: &Sources, req: &Submission) -> Update {
    if let Err(e) = make_output_folder(req) {
        return Update::Notice(format!("could not start the job: {e}"));
    }
    match Registry::new(&s.jobs).submit_request(req) {
        Ok(jobs) => Update::Notice(format!(
            "started job {} ({} {}); it keeps running after you quit",
            jobs.first().map_or("", |j| j.id.as_str()),
            req.request.kind(),
            jobs.first().and_then(|j| j.name.clone()).unwrap_or_default()
        )),
        Err(e) => Update::Notice(format!("could not start the job: {e}")),
    }
}

pub fn resume(s: &Sources, id: &str) -> Update {
    match Registry::new(&s.jobs).resume(id) {
        Ok(jobs) => Update::Notice(format!(
            "job {} resumes job {id}",
            jobs.first().map_or("", |j| j.id.as_str())
        )),
        Err(e) => Update::Notice(format!("resume {id}: {e}")),
    }
}

pub fn cancel(s: &Sources, id: &str) -> Update {
    match Registry::new(&s.jobs).cancel(id, std::time::Duration::from_secs(30)) {
        Ok(j) => Update::Notice(format!("job {id}: {}", j.state)),
        Err(e) => Update::Notice(format!("cancel {id}: {e}")),
    }
}

/// Answers the app's requests on two threads, so that slow work never holds up the monitor: this
/// one polls jobs and the followed event log and submits and cancels (each answer in
/// milliseconds); `slow_work` reads the catalog, the zoo, dataset details, overlaps and the
/// matrix, where a newer request of a kind supersedes the older ones still waiting.
pub fn run(
    s: Sources,
    engine: PathBuf,
    requests: mpsc::Receiver<Request>,
    send: impl Fn(Update) + Send + Clone + 'static,
) {
    let (slow_tx, slow_rx) = mpsc::channel::<Request>();
    // Counts the requests that supersede slow work under way (overlap, matrix, full refresh).
    let newer = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (s, send, newer) = (s.clone(), send.clone(), newer.clone());
        std::thread::spawn(move || slow_work(&s, &engine, slow_rx, &newer, send));
    }
    let forward = |req: Request| {
        if !matches!(req, Request::Details(_)) {
            newer.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = slow_tx.send(req);
    };
    let mut tails: HashMap<PathBuf, LogTail> = HashMap::new();
    let mut followed: Option<PathBuf> = None;
    let mut log_of: Option<String> = None;
    for req in requests {
        match req {
            Request::Summary(job) => send(summary(&s, &job)),
            Request::JobLog(job) => {
                log_of = job;
                if let Some(job) = &log_of {
                    send(job_log(&s, job));
                }
            }
            Request::Refresh { all } => {
                if all {
                    forward(Request::Refresh { all });
                }
                send(jobs(&s));
                if let Some(job) = &log_of {
                    send(job_log(&s, job));
                }
                if let Some(p) = &followed {
                    let tail = tails.entry(p.clone()).or_insert_with(|| LogTail::new(p));
                    let before = tail.records.len();
                    if tail.poll() || tail.records.len() < before {
                        send(Update::Run {
                            path: p.clone(),
                            records: tail.records[before.min(tail.records.len())..].to_vec(),
                            reset: tail.records.len() < before,
                        });
                    }
                }
            }
            Request::Follow(path) => {
                followed = path.clone();
                if let Some(p) = path {
                    let tail = tails.entry(p.clone()).or_insert_with(|| LogTail::new(&p));
                    tail.poll();
                    send(Update::Run {
                        path: p,
                        records: tail.records.clone(),
                        reset: true,
                    });
                }
            }
            slow @ (Request::Details(_) | Request::Overlap { .. } | Request::Matrix(_)) => forward(slow),
            Request::Submit(req) => {
                send(submit(&s, &req));
                send(jobs(&s));
            }
            Request::Resume(id) => {
                send(resume(&s, &id));
                send(jobs(&s));
            }
            Request::Cancel(id) => {
                let (s2, send2) = (s.clone(), send.clone());
                std::thread::spawn(move || {
                    send2(cancel(&s2, &id));
                    send2(jobs(&s2));
                });
            }
        }
    }
}

/// The slow requests, in order, but only the newest overlap, matrix and full refresh of those
/// waiting: moving through datasets quickly asks for pairs no longer selected (the app drops
/// their answers anyway), and they would delay the one on screen.
fn slow_work(
    s: &Sources,
    engine: &Path,
    requests: mpsc::Receiver<Request>,
    newer: &std::sync::atomic::AtomicU64,
    send: impl Fn(Update) + Send + Clone + 'static,
) {
    while let Ok(first) = requests.recv() {
        let batch: Vec<Request> = std::iter::once(first).chain(requests.try_iter()).collect();
        // What had been asked when this batch was taken: a matrix stops when more comes.
        let seen = newer.load(std::sync::atomic::Ordering::SeqCst);
        let last = |is: fn(&Request) -> bool| batch.iter().rposition(is);
        let newest = [
            last(|r| matches!(r, Request::Refresh { .. })),
            last(|r| matches!(r, Request::Overlap { .. })),
            last(|r| matches!(r, Request::Matrix(_))),
        ];
        for (i, req) in batch.into_iter().enumerate() {
            let superseded = !matches!(req, Request::Details(_)) && !newest.contains(&Some(i));
            if superseded {
                continue;
            }
            match req {
                Request::Refresh { .. } => {
                    send(datasets(s));
                    send(models(s));
                }
                Request::Details(p) => send(details(&p)),
                Request::Overlap { dataset, model } => {
                    send(overlap(s, &dataset, &model));
                    // The prediction takes a second or more: its own thread.
                    let (s2, e2, send2) = (s.clone(), engine.to_path_buf(), send.clone());
                    std::thread::spawn(move || send2(predicted(&s2, &e2, &dataset, &model)));
                }
                Request::Matrix(paths) => {
                    let moved_on = || newer.load(std::sync::atomic::Ordering::SeqCst) != seen;
                    if let Some(u) = matrix_unless(&paths, moved_on) {
                        send(u);
                    }
                }
                _ => {}
            }
        }
    }
}
