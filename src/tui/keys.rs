//! Key bindings as data: the help overlay lists all of them, the footer those of the screen in
//! view. Keys are matched in `app.rs` by the same names.

use super::app::Screen;

pub struct Binding {
    pub keys: &'static str,
    pub what: &'static str,
    /// The footer's word for it.
    pub short: &'static str,
    /// Screens where it works; empty: everywhere.
    pub screens: &'static [Screen],
    /// Shown in the footer.
    pub footer: bool,
}

const fn b(
    keys: &'static str,
    what: &'static str,
    short: &'static str,
    screens: &'static [Screen],
    footer: bool,
) -> Binding {
    Binding {
        keys,
        what,
        short,
        screens,
        footer,
    }
}

use Screen::*;

pub const BINDINGS: &[Binding] = &[
    b("1-4 Tab", "switch screen", "screens", &[], true),
    b("j/k ↑/↓", "move", "move", &[], true),
    b("g/G", "first / last row", "ends", &[], false),
    b("/", "filter datasets", "filter", &[Datasets], true),
    b("s/S", "sort by next column / reverse", "sort", &[Datasets], true),
    b("space", "mark dataset for training", "mark", &[Datasets], true),
    b("t", "train a model on the dataset(s)", "train", &[Datasets], true),
    b("o", "overlap with a model", "overlap", &[Datasets, Models], true),
    b(
        "h/l ←/→",
        "datasets / models list (matrix: scroll)",
        "lists",
        &[Overlap],
        true,
    ),
    b("m", "pairwise matrix of all datasets", "matrix", &[Overlap], true),
    b("p", "project the dataset with the model", "project", &[Overlap], true),
    b("PgUp/PgDn", "scroll the overlap report", "scroll", &[Overlap], true),
    b("Enter", "the job's log (scroll, Esc closes)", "log", &[Jobs], true),
    b("c", "cancel the job", "cancel", &[Jobs], true),
    b(
        "R",
        "resume the ended job (training: from its checkpoint)",
        "resume",
        &[Jobs],
        true,
    ),
    b("e", "loss term: total / recon / KL", "term", &[Models, Jobs], true),
    b("L", "log scale", "log", &[Models, Jobs], true),
    b("r", "refresh now", "refresh", &[], false),
    b("?", "this help", "help", &[], true),
    b("q Ctrl-C", "quit (jobs keep running)", "quit", &[], true),
];

pub fn for_screen(screen: Screen) -> impl Iterator<Item = &'static Binding> {
    BINDINGS
        .iter()
        .filter(move |b| b.screens.is_empty() || b.screens.contains(&screen))
}
