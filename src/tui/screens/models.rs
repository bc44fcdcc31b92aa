//! The Models screen: the zoo's models and the selected one's training curves.

use crossterm::event::{KeyCode, KeyEvent};

use crate::tui::app::{App, Screen};

/// The Models screen's state.
#[derive(Debug, Default)]
pub struct Models {
    /// The selected row.
    pub sel: usize,
}

impl App {
    /// `o`: the selected model against the datasets, on the Overlap screen.
    pub(in crate::tui) fn models_key(&mut self, k: KeyEvent) {
        if k.code == KeyCode::Char('o') {
            self.overlap_view.model = self.models_view.sel;
            self.overlap_view.focus = super::overlap::Focus::Datasets;
            self.overlap_view.matrix_shown = false;
            self.set_screen(Screen::Overlap);
        }
    }
}
