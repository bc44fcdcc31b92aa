//! The TUI's state and what keys and worker updates do to it. Nothing here draws or does I/O
//! beyond checking whether a log file exists; work goes out as `Request`s to the worker.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use scmz::data::catalog::Summary;
use scmz::events::Record;
use scmz::genes::OverlapReport;
use scmz::jobs::{Job, Submission};
use scmz::spec::{EngineRequest, ProjectSpec, TrainSpec};

use super::theme::Theme;
use super::worker::{ModelEntry, ObsColumn, Request, Sources, Update};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Datasets,
    Models,
    Overlap,
    Jobs,
}

impl Screen {
    pub const ALL: [Screen; 4] = [Screen::Datasets, Screen::Models, Screen::Overlap, Screen::Jobs];
    pub fn title(self) -> &'static str {
        match self {
            Screen::Datasets => "Datasets",
            Screen::Models => "Models",
            Screen::Overlap => "Overlap",
            Screen::Jobs => "Jobs",
        }
    }
}

/// Which loss term the charts show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    Total,
    Recon,
    Kl,
}

impl Term {
    pub fn name(self) -> &'static str {
        match self {
            Term::Total => "ELBO",
            Term::Recon => "reconstruction",
            Term::Kl => "KL",
        }
    }
}

/// The model the demo trains when its zoo is empty.
pub const DEMO_MODEL: &str = "pbmc-demo";

pub const SORT_COLUMNS: [&str; 5] = ["name", "cells", "genes", "ids", "values"];

/// The training form.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainForm {
    pub data: Vec<PathBuf>,
    /// (label, value, choices: empty for free text)
    pub fields: Vec<(&'static str, String, &'static [&'static str])>,
    pub focus: usize,
    /// The dataset's obs columns, when known: the batch and label keys must name one.
    pub columns: Option<Vec<String>>,
}

impl TrainForm {
    fn new(data: Vec<PathBuf>, labels: Option<String>) -> Self {
        let stem = data
            .first()
            .and_then(|p| p.file_stem())
            .map(|s| {
                s.to_string_lossy()
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
            })
            .unwrap_or_else(|| "model".into());
        TrainForm {
            data,
            fields: vec![
                ("name", stem, &[]),
                ("likelihood", "nb".into(), &["nb", "zinb", "poisson"]),
                ("epochs", "50".into(), &[]),
                ("batch key", String::new(), &[]),
                ("label key", labels.unwrap_or_default(), &[]),
                ("device", "auto".into(), &["auto", "cpu", "cuda"]),
            ],
            focus: 0,
            columns: None,
        }
    }

    pub fn value(&self, label: &str) -> &str {
        self.fields
            .iter()
            .find(|f| f.0 == label)
            .map(|f| f.1.as_str())
            .unwrap_or("")
    }

    fn submission(&self, zoo: &Path) -> Result<Submission, String> {
        let name = self.value("name").trim();
        scmz::zoo::check_name(name)?;
        let epochs: usize = self
            .value("epochs")
            .trim()
            .parse()
            .map_err(|_| "epochs: give a whole number".to_string())?;
        fn choice<T: clap::ValueEnum>(form: &TrainForm, label: &str) -> Result<T, String> {
            T::from_str(form.value(label), false).map_err(|e| format!("{label}: {e}"))
        }
        let first = self.data.first().cloned().unwrap_or_default();
        let mut spec = TrainSpec::defaults(first, name.into());
        spec.data = self.data.clone();
        spec.epochs = Some(epochs);
        spec.likelihood = choice(self, "likelihood")?;
        spec.device = choice(self, "device")?;
        spec.zoo = Some(zoo.to_path_buf());
        let optional = |label: &str| Some(self.value(label).trim().to_string()).filter(|v| !v.is_empty());
        for label in ["batch key", "label key"] {
            if let (Some(key), Some(columns)) = (optional(label), &self.columns) {
                if !columns.contains(&key) {
                    return Err(format!(
                        "{label} `{key}`: no such obs column (has {})",
                        columns.join(", ")
                    ));
                }
            }
        }
        spec.batch_key = optional("batch key");
        spec.label_key = optional("label key");
        Ok(Submission::local(EngineRequest::Train(Box::new(spec))))
    }
}

/// A job's log in the log pane: `scroll` lines up from the end (0: the end, followed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogView {
    pub job: String,
    pub lines: Vec<String>,
    pub scroll: usize,
}

/// The run of the selected job: its event log as read (`raw`, which runs with one name share)
/// and the records of this job's run in it (`records`, what the screen shows).
#[derive(Debug, Default)]
pub struct RunView {
    pub path: Option<PathBuf>,
    /// The job shown.
    pub job: Option<Job>,
    raw: Vec<Record>,
    pub records: Vec<Record>,
}

impl RunView {
    fn refilter(&mut self) {
        self.records = self
            .job
            .as_ref()
            .map_or_else(|| self.raw.clone(), |j| j.own_records(&self.raw));
    }

    /// The log holds runs, but not this job's: a later run of its name restarted or replaced it.
    pub fn replaced(&self) -> bool {
        self.records.is_empty() && !self.raw.is_empty()
    }
}

pub struct App {
    pub screen: Screen,
    pub theme: Theme,
    pub ascii: bool,
    pub sources: Sources,
    pub datasets: Vec<Summary>,
    pub models: Vec<ModelEntry>,
    pub jobs: Vec<Job>,
    pub loaded: bool,
    pub models_loaded: bool,
    /// The first answer about jobs has come (until then the screen says "loading", not "none").
    pub jobs_loaded: bool,
    pub ds_sel: usize,
    pub sort: (usize, bool),
    pub filter: String,
    pub filtering: bool,
    pub marked: HashSet<PathBuf>,
    pub details: HashMap<PathBuf, Result<Vec<ObsColumn>, String>>,
    pub model_sel: usize,
    pub job_sel: usize,
    pub ov_ds: usize,
    pub ov_model: usize,
    /// 0: datasets list, 1: models list.
    pub ov_focus: usize,
    pub ov_matrix: bool,
    /// The pairwise matrix's first shown row and column, for more datasets than fit.
    pub mx_scroll: (usize, usize),
    /// How many of the matrix's rows and columns the last drawing showed at once.
    pub mx_fit: std::cell::Cell<(usize, usize)>,
    pub overlap: Option<(PathBuf, String, Result<Box<OverlapReport>, String>)>,
    pub predicted: Option<(PathBuf, String, Result<String, String>)>,
    pub matrix: Option<Result<Vec<OverlapReport>, String>>,
    pub run: RunView,
    pub term: Term,
    pub log_scale: bool,
    pub help: bool,
    pub form: Option<TrainForm>,
    pub confirm_cancel: Option<String>,
    /// `p` on a pair whose overlap is below the projection's minimum: the share found and the
    /// minimum, until `y` projects anyway (`--force`) or another key drops it.
    pub confirm_force: Option<(f64, f64)>,
    /// The log pane (Enter on a job): its stderr log, followed while open.
    pub log_view: Option<LogView>,
    pub notice: Option<String>,
    /// Start a short training job when the zoo is empty (the demo's first run).
    pub demo: Option<PathBuf>,
    pub quit: bool,
    outbox: Vec<Request>,
}

impl App {
    pub fn new(sources: Sources, theme: Theme, ascii: bool) -> Self {
        App {
            screen: Screen::Datasets,
            theme,
            ascii,
            sources,
            datasets: Vec::new(),
            models: Vec::new(),
            jobs: Vec::new(),
            loaded: false,
            models_loaded: false,
            jobs_loaded: false,
            ds_sel: 0,
            sort: (0, false),
            filter: String::new(),
            filtering: false,
            marked: HashSet::new(),
            log_view: None,
            details: HashMap::new(),
            model_sel: 0,
            job_sel: 0,
            ov_ds: 0,
            ov_model: 0,
            ov_focus: 0,
            ov_matrix: false,
            mx_scroll: (0, 0),
            mx_fit: std::cell::Cell::new((usize::MAX, usize::MAX)),
            overlap: None,
            predicted: None,
            matrix: None,
            run: RunView::default(),
            term: Term::Total,
            log_scale: false,
            help: false,
            form: None,
            confirm_cancel: None,
            confirm_force: None,
            notice: None,
            demo: None,
            quit: false,
            outbox: Vec::new(),
        }
    }

    /// Requests produced since the last call.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.outbox)
    }

    /// Dataset rows in view: filtered by `/`, sorted by `s`.
    /// What `/` matches a dataset on, lower case: its name, format, gene id kind, species,
    /// values and label columns (each word of the filter must match somewhere).
    fn filter_text(&self, d: &Summary) -> String {
        let mut t = vec![
            self.display_path(&d.path),
            d.format.clone().unwrap_or_default(),
            scmz::data::catalog::id_kind_label(d),
            d.species.clone().unwrap_or_default(),
            d.values.clone(),
        ];
        t.extend(d.label_columns.iter().map(|c| c.name.clone()));
        t.join(" ").to_lowercase()
    }

    pub fn visible_datasets(&self) -> Vec<&Summary> {
        let f = self.filter.to_lowercase();
        let mut v: Vec<&Summary> = self
            .datasets
            .iter()
            .filter(|d| f.split_whitespace().all(|term| self.filter_text(d).contains(term)))
            .collect();
        let key = |d: &&Summary| -> (String, usize) {
            match self.sort.0 {
                1 => (String::new(), d.n_cells),
                2 => (String::new(), d.n_genes),
                3 => (scmz::data::catalog::id_kind_label(d), 0),
                4 => (d.values.clone(), 0),
                _ => (self.display_path(&d.path), 0),
            }
        };
        v.sort_by_key(key);
        if self.sort.1 {
            v.reverse();
        }
        v
    }

    /// A dataset path relative to the folder it was found under.
    pub fn display_path(&self, p: &Path) -> String {
        self.sources
            .data_dirs
            .iter()
            .find_map(|d| p.strip_prefix(d).ok())
            .unwrap_or(p)
            .display()
            .to_string()
    }

    pub fn selected_dataset(&self) -> Option<&Summary> {
        self.visible_datasets().get(self.ds_sel).copied()
    }

    pub fn selected_job(&self) -> Option<&Job> {
        // Newest first on screen.
        self.jobs.iter().rev().nth(self.job_sel)
    }

    pub fn overlap_dataset(&self) -> Option<&Summary> {
        self.datasets.get(self.ov_ds)
    }

    pub fn overlap_model(&self) -> Option<&ModelEntry> {
        self.models.get(self.ov_model)
    }

    /// The (dataset, model) pair the Overlap screen shows now.
    pub(crate) fn overlap_pair(&self) -> Option<(PathBuf, String)> {
        Some((
            self.overlap_dataset()?.path.clone(),
            self.overlap_model()?.manifest.name.clone(),
        ))
    }

    fn sync_follow(&mut self) {
        let (want, job) = match (self.screen, self.selected_job()) {
            (Screen::Jobs, Some(j)) => (j.event_log(), Some(j.clone())),
            _ => (None, None),
        };
        if want != self.run.path && (want.is_some() || self.screen == Screen::Jobs) {
            self.run = RunView {
                path: want.clone(),
                job,
                ..Default::default()
            };
            self.outbox.push(Request::Follow(want));
        } else if want.is_some() && want == self.run.path && job != self.run.job {
            // Another job whose run has the same log (a name used again), or this one's record
            // changed (it ended).
            self.run.job = job;
            self.run.refilter();
        }
    }

    fn sync_details(&mut self) {
        if let Some(d) = self.selected_dataset() {
            if d.error.is_none() && !self.details.contains_key(&d.path) {
                let p = d.path.clone();
                self.details.insert(p.clone(), Ok(Vec::new()));
                self.outbox.push(Request::Details(p));
            }
        }
    }

    pub fn update(&mut self, u: Update) {
        match u {
            Update::Datasets(d) => {
                self.datasets = d;
                self.loaded = true;
                self.ds_sel = self.ds_sel.min(self.visible_datasets().len().saturating_sub(1));
                self.ov_ds = self.ov_ds.min(self.datasets.len().saturating_sub(1));
                self.sync_details();
            }
            Update::Models(m) => {
                self.models = m;
                self.model_sel = self.model_sel.min(self.models.len().saturating_sub(1));
                self.ov_model = self.ov_model.min(self.models.len().saturating_sub(1));
                self.models_loaded = true;
                // Models and jobs come from different worker threads, in either order.
                if self.jobs_loaded {
                    self.maybe_start_demo();
                }
            }
            Update::Jobs(j) => {
                self.jobs = j;
                self.jobs_loaded = true;
                self.job_sel = self.job_sel.min(self.jobs.len().saturating_sub(1));
                if self.models_loaded {
                    self.maybe_start_demo();
                }
                self.sync_follow();
            }
            Update::Details(p, d) => {
                self.details.insert(p, d);
            }
            Update::Run { path, records, reset } => {
                if Some(&path) == self.run.path.as_ref() {
                    if reset {
                        self.run.raw.clear();
                    }
                    self.run.raw.extend(records);
                    self.run.refilter();
                }
            }
            // A result answers one (dataset, model) pair: one that arrives after the selection
            // moved on is dropped, never shown for another pair.
            Update::Overlap { dataset, model, result } => {
                if self.overlap_pair().is_some_and(|(d, m)| d == dataset && m == model) {
                    self.overlap = Some((dataset, model, result));
                }
            }
            Update::Predicted { dataset, model, result } => {
                if self.overlap_pair().is_some_and(|(d, m)| d == dataset && m == model) {
                    self.predicted = Some((dataset, model, result));
                }
            }
            Update::Matrix(m) => self.matrix = Some(m),
            Update::Notice(n) => self.notice = Some(n),
            Update::JobLog { job, lines } => {
                if let Some(view) = self.log_view.as_mut().filter(|v| v.job == job) {
                    view.lines = lines;
                    view.scroll = view.scroll.min(view.lines.len().saturating_sub(1));
                }
            }
        }
    }

    /// The demo's first run: no model in the zoo and no demo job under way, so start a short
    /// training job (over any interrupted one) and say so.
    fn maybe_start_demo(&mut self) {
        let Some(data) = self.demo.take() else {
            return;
        };
        let under_way = self
            .jobs
            .iter()
            .any(|j| j.name.as_deref() == Some(DEMO_MODEL) && !j.state.is_final());
        if !self.models.is_empty() || under_way {
            return;
        }
        let mut form = TrainForm::new(vec![data], Some("bulk_labels".into()));
        form.fields[0].1 = DEMO_MODEL.into();
        form.fields[2].1 = "300".into();
        if let Ok(mut req) = form.submission(&self.sources.zoo) {
            if let EngineRequest::Train(spec) = &mut req.request {
                spec.restart = true;
            }
            self.outbox.push(Request::Submit(Box::new(req)));
            self.notice = Some(
                "The demo zoo has no model yet: started a short training job on pbmc68k_counts (Jobs screen)".into(),
            );
            self.screen = Screen::Jobs;
        }
    }

    fn refresh_all(&mut self) {
        self.outbox.push(Request::Refresh { all: true });
    }

    fn list_len(&self) -> usize {
        match self.screen {
            Screen::Datasets => self.visible_datasets().len(),
            Screen::Models => self.models.len(),
            Screen::Jobs => self.jobs.len(),
            Screen::Overlap if self.ov_focus == 0 => self.datasets.len(),
            Screen::Overlap => self.models.len(),
        }
    }

    fn sel_mut(&mut self) -> &mut usize {
        match self.screen {
            Screen::Datasets => &mut self.ds_sel,
            Screen::Models => &mut self.model_sel,
            Screen::Jobs => &mut self.job_sel,
            Screen::Overlap if self.ov_focus == 0 => &mut self.ov_ds,
            Screen::Overlap => &mut self.ov_model,
        }
    }

    /// Moves the selection by `delta`, or to the first (`Some(false)`) or last row.
    fn move_sel(&mut self, delta: isize, to_end: Option<bool>) {
        let last = self.list_len().saturating_sub(1);
        let sel = self.sel_mut();
        *sel = match to_end {
            Some(true) => last,
            Some(false) => 0,
            None => (*sel as isize + delta).clamp(0, last as isize) as usize,
        };
        self.after_move();
    }

    fn after_move(&mut self) {
        match self.screen {
            Screen::Datasets => self.sync_details(),
            Screen::Jobs => self.sync_follow(),
            Screen::Overlap => self.request_overlap(),
            Screen::Models => {}
        }
    }

    fn request_overlap(&mut self) {
        if self.ov_matrix {
            return;
        }
        let (Some(d), Some(m)) = (self.overlap_dataset(), self.overlap_model()) else {
            return;
        };
        let (dataset, model) = (d.path.clone(), m.manifest.name.clone());
        let same = |o: &Option<(PathBuf, String, _)>| o.as_ref().is_some_and(|(p, n, _)| *p == dataset && *n == model);
        if !same(&self.overlap) {
            self.overlap = None;
            self.predicted = None;
            self.outbox.push(Request::Overlap { dataset, model });
        }
    }

    fn set_screen(&mut self, s: Screen) {
        self.screen = s;
        self.after_move();
    }

    /// What a key does. Forms, the filter prompt and confirmations take keys first.
    pub fn on_key(&mut self, k: KeyEvent) {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c')) {
            self.quit = true;
            return;
        }
        self.notice = None;
        if self.help {
            self.help = false;
            return;
        }
        if self.confirm_force.take().is_some() {
            if matches!(k.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
                self.submit_projection(true);
            }
            return;
        }
        if let Some(id) = self.confirm_cancel.take() {
            if matches!(k.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
                self.notice = Some(format!("cancelling job {id}..."));
                self.outbox.push(Request::Cancel(id));
            }
            return;
        }
        if self.form.is_some() {
            self.form_key(k);
            return;
        }
        if let Some(view) = self.log_view.as_mut() {
            let page = 10;
            let most = view.lines.len().saturating_sub(1);
            match k.code {
                KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') => {
                    self.log_view = None;
                    self.outbox.push(Request::JobLog(None));
                }
                KeyCode::Up | KeyCode::Char('k') => view.scroll = (view.scroll + 1).min(most),
                KeyCode::Down | KeyCode::Char('j') => view.scroll = view.scroll.saturating_sub(1),
                KeyCode::PageUp => view.scroll = (view.scroll + page).min(most),
                KeyCode::PageDown => view.scroll = view.scroll.saturating_sub(page),
                KeyCode::Char('g') | KeyCode::Home => view.scroll = most,
                KeyCode::Char('G') | KeyCode::End => view.scroll = 0,
                _ => {}
            }
            return;
        }
        if self.filtering {
            match k.code {
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                KeyCode::Enter => self.filtering = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.ds_sel = 0;
            self.sync_details();
            return;
        }
        if self.screen == Screen::Overlap && self.ov_matrix {
            let n = self
                .matrix
                .as_ref()
                .and_then(|m| m.as_ref().ok())
                .map_or(0, |r| r.len().isqrt());
            let (fit_rows, fit_cols) = self.mx_fit.get();
            let (row, col) = &mut self.mx_scroll;
            match k.code {
                KeyCode::Down | KeyCode::Char('j') => *row = (*row + 1).min(n.saturating_sub(fit_rows)),
                KeyCode::Up | KeyCode::Char('k') => *row = row.saturating_sub(1),
                KeyCode::Right | KeyCode::Char('l') => *col = (*col + 1).min(n.saturating_sub(fit_cols)),
                KeyCode::Left | KeyCode::Char('h') => *col = col.saturating_sub(1),
                KeyCode::Home | KeyCode::Char('g') => self.mx_scroll = (0, 0),
                _ => return self.global_key(k),
            }
            return;
        }
        self.global_key(k)
    }

    fn global_key(&mut self, k: KeyEvent) {
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab | KeyCode::BackTab => {
                let i = Screen::ALL.iter().position(|s| *s == self.screen).unwrap_or(0);
                let n = if k.code == KeyCode::Tab { i + 1 } else { i + 3 };
                self.set_screen(Screen::ALL[n % 4]);
            }
            KeyCode::Char(c @ '1'..='4') => self.set_screen(Screen::ALL[c as usize - '1' as usize]),
            KeyCode::Down | KeyCode::Char('j') => self.move_sel(1, None),
            KeyCode::Up | KeyCode::Char('k') => self.move_sel(-1, None),
            KeyCode::PageDown => self.move_sel(10, None),
            KeyCode::PageUp => self.move_sel(-10, None),
            KeyCode::Home | KeyCode::Char('g') => self.move_sel(0, Some(false)),
            KeyCode::End | KeyCode::Char('G') => self.move_sel(0, Some(true)),
            KeyCode::Char('r') => self.refresh_all(),
            _ => self.screen_key(k),
        }
    }

    fn screen_key(&mut self, k: KeyEvent) {
        match (self.screen, k.code) {
            (Screen::Datasets, KeyCode::Char('/')) => self.filtering = true,
            (Screen::Datasets, KeyCode::Char('s')) => {
                self.sort = ((self.sort.0 + 1) % SORT_COLUMNS.len(), false);
            }
            (Screen::Datasets, KeyCode::Char('S')) => self.sort.1 = !self.sort.1,
            (Screen::Datasets, KeyCode::Char(' ')) => {
                if let Some(p) = self.selected_dataset().map(|d| d.path.clone()) {
                    if !self.marked.remove(&p) {
                        self.marked.insert(p);
                    }
                }
            }
            (Screen::Datasets, KeyCode::Char('t')) => self.open_form(),
            (Screen::Datasets, KeyCode::Char('o')) => {
                if let Some(p) = self.selected_dataset().map(|d| d.path.clone()) {
                    self.ov_ds = self.datasets.iter().position(|d| d.path == p).unwrap_or(0);
                }
                self.ov_matrix = false;
                self.set_screen(Screen::Overlap);
            }
            (Screen::Models, KeyCode::Char('o')) => {
                self.ov_model = self.model_sel;
                self.ov_focus = 0;
                self.ov_matrix = false;
                self.set_screen(Screen::Overlap);
            }
            (Screen::Overlap, KeyCode::Left | KeyCode::Char('h')) => self.ov_focus = 0,
            (Screen::Overlap, KeyCode::Right | KeyCode::Char('l')) => self.ov_focus = 1,
            (Screen::Overlap, KeyCode::Char('m')) => {
                self.ov_matrix = !self.ov_matrix;
                if self.ov_matrix && self.matrix.is_none() {
                    let paths = self
                        .datasets
                        .iter()
                        .filter(|d| d.error.is_none())
                        .map(|d| d.path.clone())
                        .collect();
                    self.outbox.push(Request::Matrix(paths));
                } else {
                    self.request_overlap();
                }
            }
            (Screen::Overlap, KeyCode::Char('p')) => self.project(),
            (Screen::Models | Screen::Jobs, KeyCode::Char('e')) => {
                self.term = match self.term {
                    Term::Total => Term::Recon,
                    Term::Recon => Term::Kl,
                    Term::Kl => Term::Total,
                };
            }
            (Screen::Models | Screen::Jobs, KeyCode::Char('L')) => self.log_scale = !self.log_scale,
            (Screen::Jobs, KeyCode::Enter) => {
                if let Some(id) = self.selected_job().map(|j| j.id.clone()) {
                    self.log_view = Some(LogView {
                        job: id.clone(),
                        ..Default::default()
                    });
                    self.outbox.push(Request::JobLog(Some(id)));
                }
            }
            (Screen::Jobs, KeyCode::Char('c')) => match self.selected_job() {
                Some(j) if j.backend == "terminal" => {
                    self.notice = Some("this run belongs to a terminal: stop it there with Ctrl-C".into())
                }
                Some(j) if !j.state.is_final() => self.confirm_cancel = Some(j.id.clone()),
                Some(j) => self.notice = Some(format!("job {} already ended ({})", j.id, j.state)),
                None => {}
            },
            _ => {}
        }
    }

    fn open_form(&mut self) {
        let mut data: Vec<PathBuf> = self.marked.iter().cloned().collect();
        data.sort();
        let current = self
            .selected_dataset()
            .map(|d| (d.path.clone(), d.values.clone(), d.label_columns.clone()));
        if data.is_empty() {
            match &current {
                Some((p, _, _)) => data.push(p.clone()),
                None => return,
            }
        }
        if data.len() > 1 {
            self.notice = Some(format!(
                "one dataset per model: merge the {} marked first (`scmz merge ... -o merged.h5ad`)",
                data.len()
            ));
            return;
        }
        if let Some((_, values, _)) = &current {
            if values != "counts" {
                self.notice = Some("this dataset holds normalised values; training needs raw counts".into());
                return;
            }
        }
        let label = current.and_then(|c| c.2.first().map(|l| l.name.clone()));
        let columns = match self.details.get(&data[0]) {
            Some(Ok(cols)) if !cols.is_empty() => Some(cols.iter().map(|c| c.name.clone()).collect()),
            _ => None,
        };
        self.form = Some(TrainForm {
            columns,
            ..TrainForm::new(data, label)
        });
    }

    fn form_key(&mut self, k: KeyEvent) {
        let Some(form) = self.form.as_mut() else {
            return;
        };
        let n = form.fields.len();
        let field = &mut form.fields[form.focus];
        match k.code {
            KeyCode::Esc => self.form = None,
            KeyCode::Tab | KeyCode::Down => form.focus = (form.focus + 1) % n,
            KeyCode::BackTab | KeyCode::Up => form.focus = (form.focus + n - 1) % n,
            KeyCode::Left | KeyCode::Right if !field.2.is_empty() => {
                let i = field.2.iter().position(|c| *c == field.1).unwrap_or(0);
                let j = if k.code == KeyCode::Right {
                    i + 1
                } else {
                    i + field.2.len() - 1
                };
                field.1 = field.2[j % field.2.len()].to_string();
            }
            KeyCode::Backspace if field.2.is_empty() => {
                field.1.pop();
            }
            KeyCode::Char(c) if field.2.is_empty() => field.1.push(c),
            KeyCode::Enter => match form.submission(&self.sources.zoo) {
                Ok(req) => {
                    self.outbox.push(Request::Submit(Box::new(req)));
                    self.form = None;
                    self.screen = Screen::Jobs;
                    self.job_sel = 0;
                }
                Err(e) => self.notice = Some(e),
            },
            _ => {}
        }
    }

    /// `p` on Overlap: projects the pair, after asking when fewer of the model's genes are found
    /// than the projection accepts (the engine would refuse it without `--force`).
    fn project(&mut self) {
        let (Some(d), Some(m)) = (self.overlap_dataset(), self.overlap_model()) else {
            return;
        };
        let least = 100.0 * ProjectSpec::defaults(d.path.clone(), m.manifest.name.clone()).min_overlap;
        let found = match (&self.overlap, self.overlap_pair()) {
            (Some((od, om, Ok(r))), Some((pd, pm))) if *od == pd && *om == pm => Some(r.pct_b_found),
            _ => None,
        };
        match found {
            Some(pct) if pct < least => self.confirm_force = Some((pct, least)),
            _ => self.submit_projection(false),
        }
    }

    fn submit_projection(&mut self, force: bool) {
        let (Some(d), Some(m)) = (self.overlap_dataset(), self.overlap_model()) else {
            return;
        };
        let stem = d
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let out = scmz::dirs::data_dir()
            .join("projections")
            .join(format!("{stem}.{}.h5ad", m.manifest.name));
        let mut spec = ProjectSpec::defaults(d.path.clone(), m.manifest.name.clone());
        spec.zoo = Some(self.sources.zoo.clone());
        spec.output = Some(out.clone());
        // scmz's own projections folder: projecting the pair again replaces the older copy.
        spec.overwrite = true;
        spec.force = force;
        let req = Submission {
            slot: "cpu".into(),
            ..Submission::local(EngineRequest::Project(Box::new(spec)))
        };
        self.outbox.push(Request::Submit(Box::new(req)));
        self.notice = Some(format!("projecting into {}", out.display()));
    }
}
