//! The TUI's state and what keys and worker updates do to it. Nothing here draws or does I/O
//! beyond checking whether a log file exists; work goes out as `Request`s to the worker.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use scmz::data::catalog::Summary;
use scmz::jobs::Job;
use scmz::spec::EngineRequest;

use super::screens::datasets::Datasets;
use super::screens::jobs::Jobs;
use super::screens::models::Models;
use super::screens::overlap::{Focus, Overlap};
use super::screens::overlay::{Overlay, TrainForm};
use super::theme::Theme;
use super::worker::{ModelEntry, Request, Sources, Update};

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

/// What `r` says until the datasets come back.
const REREADING: &str = "reading the datasets, the zoo and the jobs again";

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
    /// Why each zoo folder that cannot be read cannot (the Models title counts them).
    pub models_unreadable: Vec<String>,
    /// The first answer about jobs has come (until then the screen says "loading", not "none").
    pub jobs_loaded: bool,
    /// Each screen's own state.
    pub datasets_view: Datasets,
    pub models_view: Models,
    pub overlap_view: Overlap,
    pub jobs_view: Jobs,
    /// What the charts of the Models and Jobs screens show: the loss term, and a log scale.
    pub term: Term,
    pub log_scale: bool,
    /// The help, the training form, a confirmation or the log pane, over the screen.
    pub overlay: Option<Overlay>,
    pub notice: Option<String>,
    /// Start a short training job when the zoo is empty (the demo's first run).
    pub demo: Option<PathBuf>,
    /// Where `p` on the Overlap screen writes (scmz's data folder's `projections`).
    pub projections: PathBuf,
    /// Ticks seen (four a second): the frame of the spinner shown while an answer is awaited.
    pub ticks: usize,
    pub quit: bool,
    pub(in crate::tui) outbox: Vec<Request>,
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
            models_unreadable: Vec::new(),
            jobs_loaded: false,
            datasets_view: Datasets::default(),
            models_view: Models::default(),
            overlap_view: Overlap::default(),
            jobs_view: Jobs::default(),
            term: Term::Total,
            log_scale: false,
            overlay: None,
            notice: None,
            demo: None,
            projections: scmz::dirs::data_dir().join("projections"),
            ticks: 0,
            quit: false,
            outbox: Vec::new(),
        }
    }

    /// A spinner's frame, then `what` ("predicting..."): something is being computed.
    pub fn waiting(&self, what: &str) -> String {
        const FRAMES: [&str; 4] = ["⠋", "⠙", "⠸", "⠴"];
        const ASCII: [&str; 4] = ["|", "/", "-", "\\"];
        let frames = if self.ascii { ASCII } else { FRAMES };
        format!("{} {what}", frames[self.ticks % frames.len()])
    }

    /// Whether something on screen awaits an answer (its spinner turns on each tick).
    pub fn awaiting_answer(&self) -> bool {
        let view = &self.overlap_view;
        !self.loaded
            || !self.models_loaded
            || !self.jobs_loaded
            || (self.screen == Screen::Overlap
                && if view.matrix_shown {
                    view.matrix.is_none()
                } else {
                    let pair = self.overlap_pair();
                    pair.is_some()
                        && (view.shown(&view.report, pair.clone()).is_none()
                            || view.shown(&view.predicted, pair).is_none())
                })
    }

    /// Requests produced since the last call.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.outbox)
    }

    pub fn update(&mut self, u: Update) {
        match u {
            Update::Datasets(d) => {
                // The selections stay on their datasets when rows come and go.
                let selected = self.selected_dataset().map(|d| d.path.clone());
                let paired = self.overlap_dataset().map(|d| d.path.clone());
                let same = |a: &[Summary], b: &[Summary]| {
                    a.len() == b.len()
                        && a.iter().zip(b).all(|(x, y)| {
                            Summary {
                                cached: false,
                                ..x.clone()
                            } == Summary {
                                cached: false,
                                ..y.clone()
                            }
                        })
                };
                if !same(&self.datasets, &d) {
                    // Files changed: the matrix and the details read before are stale, and the
                    // pair's report if its dataset is one of them.
                    self.overlap_view.matrix = None;
                    self.datasets_view.details.clear();
                    let row = |all: &[Summary], p: &PathBuf| all.iter().find(|x| &x.path == p).cloned();
                    if let Some(p) = &paired {
                        let (old, new) = (row(&self.datasets, p), row(&d, p));
                        if !same(old.as_slice(), new.as_slice()) {
                            self.overlap_view.report = None;
                            self.overlap_view.predicted = None;
                        }
                    }
                }
                if self.notice.as_deref().is_some_and(|n| n.starts_with(REREADING)) {
                    self.notice = None;
                }
                let stale = self.overlap_view.matrix.is_none();
                self.datasets = d;
                self.loaded = true;
                let visible = self.visible_datasets();
                self.datasets_view.sel = selected
                    .and_then(|p| visible.iter().position(|d| d.path == p))
                    .unwrap_or(self.datasets_view.sel)
                    .min(visible.len().saturating_sub(1));
                self.overlap_view.dataset = paired
                    .and_then(|p| self.datasets.iter().position(|d| d.path == p))
                    .unwrap_or(self.overlap_view.dataset)
                    .min(self.datasets.len().saturating_sub(1));
                if stale && self.overlap_view.matrix_shown {
                    self.request_matrix();
                }
                self.sync_details();
                // The pair in view may be another now (a dataset gone): ask for its overlap.
                if self.screen == Screen::Overlap {
                    self.request_overlap();
                }
            }
            Update::Models(m, unreadable) => {
                self.models_unreadable = unreadable;
                let name = |e: Option<&ModelEntry>| e.map(|e| e.manifest.name.clone());
                let (selected, paired) = (name(self.models.get(self.models_view.sel)), name(self.overlap_model()));
                self.models = m;
                let at = |n: Option<String>, old: usize, models: &[ModelEntry]| {
                    n.and_then(|n| models.iter().position(|e| e.manifest.name == n))
                        .unwrap_or(old)
                        .min(models.len().saturating_sub(1))
                };
                self.models_view.sel = at(selected, self.models_view.sel, &self.models);
                self.overlap_view.model = at(paired, self.overlap_view.model, &self.models);
                self.models_loaded = true;
                // Models and jobs come from different worker threads, in either order.
                if self.jobs_loaded {
                    self.maybe_start_demo();
                }
            }
            Update::Jobs(j) => {
                // The selection stays on its job as new ones arrive above it (after a submit, on
                // the newest: the one submitted).
                let selected = self
                    .selected_job()
                    .map(|j| j.id.clone())
                    .filter(|_| !self.jobs_view.awaiting);
                self.jobs = j;
                self.jobs_view.awaiting = false;
                self.jobs_loaded = true;
                let newest_first = self.jobs.iter().rev();
                self.jobs_view.sel = selected
                    .and_then(|id| newest_first.clone().position(|j| j.id == id))
                    .unwrap_or(self.jobs_view.sel)
                    .min(self.jobs.len().saturating_sub(1));
                if self.models_loaded {
                    self.maybe_start_demo();
                }
                self.sync_follow();
            }
            Update::Details(p, d) => {
                self.datasets_view.details.insert(p, d);
            }
            Update::Run { path, records, reset } => {
                if Some(&path) == self.jobs_view.run.path.as_ref() {
                    if reset {
                        self.jobs_view.run.raw.clear();
                    }
                    self.jobs_view.run.raw.extend(records);
                    self.jobs_view.run.refilter();
                }
            }
            // A result answers one (dataset, model) pair: one that arrives after the selection
            // moved on is dropped, never shown for another pair.
            Update::Overlap { dataset, model, result } => {
                if self.overlap_pair().is_some_and(|(d, m)| d == dataset && m == model) {
                    self.overlap_view.report = Some((dataset, model, result));
                }
            }
            Update::Predicted { dataset, model, result } => {
                if self.overlap_pair().is_some_and(|(d, m)| d == dataset && m == model) {
                    self.overlap_view.predicted = Some((dataset, model, result));
                }
            }
            Update::Matrix(m) => self.overlap_view.matrix = Some(m),
            Update::Notice(n) => self.notice = Some(n),
            Update::Summary { job, lines } => {
                self.jobs_view.summaries.insert(job, lines);
            }
            Update::JobLog { job, lines } => {
                if let Some(Overlay::Log(view)) = self
                    .overlay
                    .as_mut()
                    .filter(|o| matches!(o, Overlay::Log(v) if v.job == job))
                {
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
        form.name = DEMO_MODEL.into();
        form.epochs = "300".into();
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
        self.notice = Some(format!("{REREADING}..."));
    }

    fn list_len(&self) -> usize {
        match self.screen {
            Screen::Datasets => self.visible_datasets().len(),
            Screen::Models => self.models.len(),
            Screen::Jobs => self.jobs.len(),
            Screen::Overlap if self.overlap_view.focus == Focus::Datasets => self.datasets.len(),
            Screen::Overlap => self.models.len(),
        }
    }

    fn sel_mut(&mut self) -> &mut usize {
        match self.screen {
            Screen::Datasets => &mut self.datasets_view.sel,
            Screen::Models => &mut self.models_view.sel,
            Screen::Jobs => &mut self.jobs_view.sel,
            Screen::Overlap if self.overlap_view.focus == Focus::Datasets => &mut self.overlap_view.dataset,
            Screen::Overlap => &mut self.overlap_view.model,
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

    pub(in crate::tui) fn set_screen(&mut self, s: Screen) {
        self.screen = s;
        self.after_move();
    }

    /// What a key does: the overlay takes keys first, then the filter prompt and the
    /// matrix's scrolling, then the keys every screen shares, then the screen in view.
    pub fn on_key(&mut self, k: KeyEvent) {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c')) {
            self.quit = true;
            return;
        }
        self.notice = None;
        if self.overlay_key(k) {
            return;
        }
        if self.datasets_view.filtering {
            return self.filter_key(k);
        }
        if self.screen == Screen::Overlap && self.overlap_view.matrix_shown && self.matrix_key(k) {
            return;
        }
        self.global_key(k)
    }

    fn global_key(&mut self, k: KeyEvent) {
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.overlay = Some(Overlay::Help),
            KeyCode::Tab | KeyCode::BackTab => {
                let i = Screen::ALL.iter().position(|s| *s == self.screen).unwrap_or(0);
                let n = if k.code == KeyCode::Tab { i + 1 } else { i + 3 };
                self.set_screen(Screen::ALL[n % 4]);
            }
            KeyCode::Char(c @ '1'..='4') => self.set_screen(Screen::ALL[c as usize - '1' as usize]),
            KeyCode::Down | KeyCode::Char('j') => self.move_sel(1, None),
            KeyCode::Up | KeyCode::Char('k') => self.move_sel(-1, None),
            // On Overlap they scroll the report.
            KeyCode::PageDown if self.screen != Screen::Overlap => self.move_sel(10, None),
            KeyCode::PageUp if self.screen != Screen::Overlap => self.move_sel(-10, None),
            KeyCode::Home | KeyCode::Char('g') => self.move_sel(0, Some(false)),
            KeyCode::End | KeyCode::Char('G') => self.move_sel(0, Some(true)),
            KeyCode::Char('r') => self.refresh_all(),
            _ => self.screen_key(k),
        }
    }

    fn screen_key(&mut self, k: KeyEvent) {
        match (self.screen, k.code) {
            (Screen::Models | Screen::Jobs, KeyCode::Char('e')) => {
                self.term = match self.term {
                    Term::Total => Term::Recon,
                    Term::Recon => Term::Kl,
                    Term::Kl => Term::Total,
                };
            }
            (Screen::Models | Screen::Jobs, KeyCode::Char('L')) => self.log_scale = !self.log_scale,
            (Screen::Datasets, _) => self.datasets_key(k),
            (Screen::Models, _) => self.models_key(k),
            (Screen::Overlap, _) => self.overlap_key(k),
            (Screen::Jobs, _) => self.jobs_key(k),
        }
    }
}
