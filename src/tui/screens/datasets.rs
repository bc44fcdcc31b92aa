//! The Datasets screen: the catalog as a table (filtered with `/`, sorted with `s`/`S`, marked
//! with space), the selected dataset's details, and the keys that start from a dataset (`t`
//! train, `o` overlap).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent};
use scmz::data::catalog::Summary;

use super::overlay::{Overlay, TrainForm};
use crate::tui::app::{App, Screen};
use crate::tui::worker::{ObsColumn, Request};

/// The column the table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortColumn {
    #[default]
    Name,
    Cells,
    Genes,
    Ids,
    Species,
    Values,
}

impl SortColumn {
    pub const ALL: [SortColumn; 6] = [
        SortColumn::Name,
        SortColumn::Cells,
        SortColumn::Genes,
        SortColumn::Ids,
        SortColumn::Species,
        SortColumn::Values,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortColumn::Name => "name",
            SortColumn::Cells => "cells",
            SortColumn::Genes => "genes",
            SortColumn::Ids => "ids",
            SortColumn::Species => "species",
            SortColumn::Values => "values",
        }
    }

    fn next(self) -> SortColumn {
        let i = SortColumn::ALL.iter().position(|c| *c == self).unwrap_or(0);
        SortColumn::ALL[(i + 1) % SortColumn::ALL.len()]
    }
}

/// The Datasets screen's state.
#[derive(Debug, Default)]
pub struct Datasets {
    /// The selected row among those in view.
    pub sel: usize,
    pub sort: SortColumn,
    pub descending: bool,
    /// What `/` typed, and whether the prompt is open.
    pub filter: String,
    pub filtering: bool,
    /// Datasets marked with space (for the training form).
    pub marked: HashSet<PathBuf>,
    /// The obs columns of each dataset whose details were asked for.
    pub details: HashMap<PathBuf, Result<Vec<ObsColumn>, String>>,
}

impl App {
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

    /// Dataset rows in view: filtered by `/`, sorted by `s`.
    pub fn visible_datasets(&self) -> Vec<&Summary> {
        let view = &self.datasets_view;
        let f = view.filter.to_lowercase();
        let mut v: Vec<&Summary> = self
            .datasets
            .iter()
            .filter(|d| f.split_whitespace().all(|term| self.filter_text(d).contains(term)))
            .collect();
        // Text columns in natural order (c2 before c10), then by name; numbers by value.
        let text = |d: &Summary| -> String {
            match view.sort {
                SortColumn::Ids => scmz::data::catalog::id_kind_label(d),
                SortColumn::Species => d.species.clone().unwrap_or_default(),
                SortColumn::Values => d.values.clone(),
                _ => String::new(),
            }
        };
        let number = |d: &Summary| match view.sort {
            SortColumn::Cells => d.n_cells,
            SortColumn::Genes => d.n_genes,
            _ => 0,
        };
        v.sort_by(|a, b| {
            natord::compare_ignore_case(&text(a), &text(b))
                .then(number(a).cmp(&number(b)))
                .then_with(|| natord::compare_ignore_case(&self.display_path(&a.path), &self.display_path(&b.path)))
        });
        if view.descending {
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
        self.visible_datasets().get(self.datasets_view.sel).copied()
    }

    /// Asks for the selected dataset's obs columns, once.
    pub(in crate::tui) fn sync_details(&mut self) {
        if let Some(d) = self.selected_dataset() {
            if d.error.is_none() && !self.datasets_view.details.contains_key(&d.path) {
                let p = d.path.clone();
                self.datasets_view.details.insert(p.clone(), Ok(Vec::new()));
                self.outbox.push(Request::Details(p));
            }
        }
    }

    /// The filter prompt, while open, takes every key.
    pub(in crate::tui) fn filter_key(&mut self, k: KeyEvent) {
        let view = &mut self.datasets_view;
        match k.code {
            KeyCode::Esc => {
                view.filtering = false;
                view.filter.clear();
            }
            KeyCode::Enter => view.filtering = false,
            KeyCode::Backspace => {
                view.filter.pop();
            }
            KeyCode::Char(c) => view.filter.push(c),
            _ => {}
        }
        view.sel = 0;
        self.sync_details();
    }

    pub(in crate::tui) fn datasets_key(&mut self, k: KeyEvent) {
        let view = &mut self.datasets_view;
        match k.code {
            KeyCode::Char('/') => view.filtering = true,
            KeyCode::Char('s') => {
                view.sort = view.sort.next();
                view.descending = false;
            }
            KeyCode::Char('S') => view.descending = !view.descending,
            KeyCode::Char(' ') => {
                if let Some(p) = self.selected_dataset().map(|d| d.path.clone()) {
                    let marked = &mut self.datasets_view.marked;
                    if !marked.remove(&p) {
                        marked.insert(p);
                    }
                }
            }
            KeyCode::Char('t') => self.open_form(),
            KeyCode::Char('o') => {
                if let Some(p) = self.selected_dataset().map(|d| d.path.clone()) {
                    self.overlap_view.dataset = self.datasets.iter().position(|d| d.path == p).unwrap_or(0);
                }
                self.overlap_view.matrix_shown = false;
                self.set_screen(Screen::Overlap);
            }
            _ => {}
        }
    }

    /// `t`: the training form for the marked dataset (or the selected one), unless what the job
    /// would fail on is known already (several datasets, normalised values).
    fn open_form(&mut self) {
        let mut data: Vec<PathBuf> = self.datasets_view.marked.iter().cloned().collect();
        data.sort();
        if let Some(e) = self.selected_dataset().and_then(|d| d.error.clone()) {
            self.notice = Some(format!("this file cannot be read ({e}); nothing to train on"));
            return;
        }
        let current = self
            .selected_dataset()
            .map(|d| (d.path.clone(), d.values.clone(), d.label_columns.clone()));
        if data.is_empty() {
            match &current {
                Some((p, _, _)) => data.push(p.clone()),
                None => {
                    self.notice = Some("no dataset selected to train on".into());
                    return;
                }
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
        let columns = match self.datasets_view.details.get(&data[0]) {
            Some(Ok(cols)) if !cols.is_empty() => {
                Some(cols.iter().map(|c| (c.name.clone(), c.kind == "categorical")).collect())
            }
            _ => None,
        };
        self.overlay = Some(Overlay::Form(TrainForm {
            columns,
            ..TrainForm::new(data, label)
        }));
    }
}
