//! The Overlap screen: a dataset against a model (gene overlap and the mapping prediction,
//! each result kept with the pair it answers), the pairwise matrix of all datasets (`m`), and
//! `p`, which projects the pair as a job (asking first when the overlap is too low).

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent};
use scmz::data::catalog::Summary;
use scmz::genes::OverlapReport;
use scmz::jobs::Submission;
use scmz::spec::{EngineRequest, ProjectSpec};

use super::overlay::Overlay;
use crate::tui::app::App;
use crate::tui::worker::{ModelEntry, Request};

/// Which list the arrow keys move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Focus {
    #[default]
    Datasets,
    Models,
}

/// A result and the (dataset, model) pair it answers.
pub type ForPair<T> = Option<(PathBuf, String, Result<T, String>)>;

/// The Overlap screen's state.
#[derive(Debug)]
pub struct Overlap {
    /// The selected dataset (in catalog order) and model.
    pub dataset: usize,
    pub model: usize,
    pub focus: Focus,
    /// The pairwise matrix is shown instead of the pair.
    pub matrix_shown: bool,
    /// The matrix's first shown row and column, for more datasets than fit.
    pub scroll: (usize, usize),
    /// How many of the matrix's rows and columns the last drawing showed at once.
    pub fit: std::cell::Cell<(usize, usize)>,
    /// The report's first shown line (PgUp/PgDn), and the most it can be, as last drawn.
    pub report_scroll: usize,
    pub report_scroll_max: std::cell::Cell<usize>,
    /// Lines PgUp/PgDn move: the report's height, less one kept in view.
    pub report_page: std::cell::Cell<usize>,
    pub report: ForPair<Box<OverlapReport>>,
    pub predicted: ForPair<String>,
    pub matrix: Option<Result<Vec<OverlapReport>, String>>,
    /// The matrix's datasets, in its row (and column) order, and those left out of it because
    /// they cannot be read.
    pub matrix_paths: Vec<PathBuf>,
    pub matrix_left_out: Vec<PathBuf>,
}

impl Default for Overlap {
    fn default() -> Self {
        Overlap {
            dataset: 0,
            model: 0,
            focus: Focus::Datasets,
            matrix_shown: false,
            scroll: (0, 0),
            fit: std::cell::Cell::new((usize::MAX, usize::MAX)),
            report_scroll: 0,
            report_scroll_max: std::cell::Cell::new(0),
            report_page: std::cell::Cell::new(5),
            report: None,
            predicted: None,
            matrix: None,
            matrix_paths: Vec::new(),
            matrix_left_out: Vec::new(),
        }
    }
}

impl Overlap {
    /// A result, if it answers `pair` (the pair selected now): after a refresh that moved the
    /// selection (a dataset gone), the old pair's result is not shown for the new one.
    pub fn shown<'a, T>(&self, result: &'a ForPair<T>, pair: Option<(PathBuf, String)>) -> &'a ForPair<T> {
        match (result, pair) {
            (Some((d, m, _)), Some((pd, pm))) if *d == pd && *m == pm => result,
            _ => &None,
        }
    }
}

impl App {
    pub fn overlap_dataset(&self) -> Option<&Summary> {
        self.datasets.get(self.overlap_view.dataset)
    }

    pub fn overlap_model(&self) -> Option<&ModelEntry> {
        self.models.get(self.overlap_view.model)
    }

    /// The (dataset, model) pair the Overlap screen shows now.
    pub(crate) fn overlap_pair(&self) -> Option<(PathBuf, String)> {
        Some((
            self.overlap_dataset()?.path.clone(),
            self.overlap_model()?.manifest.name.clone(),
        ))
    }

    /// Asks for the selected pair's overlap unless it is shown already.
    pub(in crate::tui) fn request_overlap(&mut self) {
        if self.overlap_view.matrix_shown {
            return;
        }
        let Some((dataset, model)) = self.overlap_pair() else {
            return;
        };
        let view = &mut self.overlap_view;
        if !view
            .report
            .as_ref()
            .is_some_and(|(p, n, _)| *p == dataset && *n == model)
        {
            view.report = None;
            view.predicted = None;
            view.report_scroll = 0;
            self.outbox.push(Request::Overlap { dataset, model });
        }
    }

    /// Asks for the pairwise matrix of the readable datasets (those the catalog cannot read are
    /// named as left out).
    pub(in crate::tui) fn request_matrix(&mut self) {
        let (readable, unreadable): (Vec<&Summary>, Vec<&Summary>) =
            self.datasets.iter().partition(|d| d.error.is_none());
        let paths: Vec<PathBuf> = readable.iter().map(|d| d.path.clone()).collect();
        let view = &mut self.overlap_view;
        view.matrix_left_out = unreadable.iter().map(|d| d.path.clone()).collect();
        view.matrix_paths = paths.clone();
        self.outbox.push(Request::Matrix(paths));
    }

    /// The matrix, while shown, scrolls with the arrows; other keys go on.
    pub(in crate::tui) fn matrix_key(&mut self, k: KeyEvent) -> bool {
        let view = &mut self.overlap_view;
        let n = view
            .matrix
            .as_ref()
            .and_then(|m| m.as_ref().ok())
            .map_or(0, |r| r.len().isqrt());
        let (fit_rows, fit_cols) = view.fit.get();
        let (row, col) = &mut view.scroll;
        match k.code {
            KeyCode::Down | KeyCode::Char('j') => *row = (*row + 1).min(n.saturating_sub(fit_rows)),
            KeyCode::Up | KeyCode::Char('k') => *row = row.saturating_sub(1),
            KeyCode::Right | KeyCode::Char('l') => *col = (*col + 1).min(n.saturating_sub(fit_cols)),
            KeyCode::Left | KeyCode::Char('h') => *col = col.saturating_sub(1),
            KeyCode::Esc => {
                view.matrix_shown = false;
                self.request_overlap();
            }
            KeyCode::Home | KeyCode::Char('g') => view.scroll = (0, 0),
            KeyCode::End | KeyCode::Char('G') => {
                view.scroll = (n.saturating_sub(fit_rows), n.saturating_sub(fit_cols));
            }
            _ => return false,
        }
        true
    }

    pub(in crate::tui) fn overlap_key(&mut self, k: KeyEvent) {
        match k.code {
            KeyCode::Left | KeyCode::Char('h') => self.overlap_view.focus = Focus::Datasets,
            KeyCode::Right | KeyCode::Char('l') => self.overlap_view.focus = Focus::Models,
            KeyCode::Char('m') => {
                let view = &mut self.overlap_view;
                view.matrix_shown = !view.matrix_shown;
                if view.matrix_shown && view.matrix.is_none() {
                    self.request_matrix();
                } else {
                    self.request_overlap();
                }
            }
            KeyCode::Char('p') => self.project(),
            KeyCode::PageDown | KeyCode::PageUp => {
                let view = &mut self.overlap_view;
                let page = view.report_page.get();
                view.report_scroll = if k.code == KeyCode::PageDown {
                    (view.report_scroll + page).min(view.report_scroll_max.get())
                } else {
                    view.report_scroll.saturating_sub(page)
                };
            }
            _ => {}
        }
    }

    /// `p` on Overlap: projects the pair, after asking when fewer of the model's genes are found
    /// than the projection accepts (the engine would refuse it without `--force`).
    fn project(&mut self) {
        let (Some(d), Some(m)) = (self.overlap_dataset(), self.overlap_model()) else {
            self.notice = Some(if self.datasets.is_empty() {
                "no dataset to project: run scmz in a folder with .h5ad files or 10x outputs".into()
            } else {
                "no model in the zoo to project with: train one first (Datasets screen, t)".into()
            });
            return;
        };
        if let Some(e) = &d.error {
            self.notice = Some(format!("this file cannot be read ({e}); nothing to project"));
            return;
        }
        if d.values != "counts" {
            self.notice = Some(
                "this dataset holds normalised values; projecting needs raw counts: open the file that holds them"
                    .into(),
            );
            return;
        }
        let least = 100.0 * ProjectSpec::defaults(d.path.clone(), m.manifest.name.clone()).min_overlap;
        // The question below the minimum needs the overlap: not before it is known.
        let found = match self.overlap_view.shown(&self.overlap_view.report, self.overlap_pair()) {
            Some((_, _, Ok(r))) => r.pct_b_found,
            Some((_, _, Err(e))) => {
                self.notice = Some(format!("cannot project this pair: {e}"));
                return;
            }
            None => {
                self.notice = Some("the overlap is still being computed: press p again once it shows".into());
                return;
            }
        };
        if found < least {
            self.overlay = Some(Overlay::ConfirmForce { found, least });
        } else {
            self.submit_projection(false, false);
        }
    }

    /// Starts the projection of the pair in view into scmz's projections folder; an earlier
    /// projection of the pair is replaced only once `replace` says so (else it asks).
    pub(in crate::tui) fn submit_projection(&mut self, force: bool, replace: bool) {
        let (Some(d), Some(m)) = (self.overlap_dataset(), self.overlap_model()) else {
            return;
        };
        let stem = d
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let out = self.projections.join(format!("{stem}.{}.h5ad", m.manifest.name));
        // `p` twice: one job (the second would write the same file).
        let under_way = self.jobs.iter().any(|j| {
            !j.state.is_final() && matches!(&j.request, EngineRequest::Project(s) if s.output.as_ref() == Some(&out))
        });
        if under_way || self.jobs_view.awaiting {
            self.notice = Some(format!("a projection into {} is under way already", out.display()));
            return;
        }
        if out.exists() && !replace {
            self.overlay = Some(Overlay::ConfirmReplace { output: out, force });
            return;
        }
        let mut spec = ProjectSpec::defaults(d.path.clone(), m.manifest.name.clone());
        spec.zoo = Some(self.sources.zoo.clone());
        spec.output = Some(out.clone());
        // Asked above: projecting the pair again replaces the older copy.
        spec.overwrite = true;
        spec.force = force;
        let req = Submission {
            slot: "cpu".into(),
            ..Submission::local(EngineRequest::Project(Box::new(spec)))
        };
        self.outbox.push(Request::Submit(Box::new(req)));
        self.jobs_view.awaiting = true;
        self.notice = Some(format!("projecting into {}", out.display()));
    }
}
