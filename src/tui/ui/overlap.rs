//! The Overlap screen: a dataset and a model side by side and the report users read before
//! applying the model (or, with `m`, the pairwise matrix of all datasets).

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use scmz::genes::OverlapReport;

use super::{block, thousands};
use crate::tui::app::App;
use crate::tui::screens::overlap::Focus;

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    if app.overlap_view.matrix_shown {
        return draw_matrix(f, app, area);
    }
    let lists_w = if area.width >= 100 { 34 } else { 26 };
    let [lists, report] = Layout::horizontal([Constraint::Length(lists_w), Constraint::Min(20)]).areas(area);
    let [dl, ml] = Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(lists);
    // A list of the pair's side: `> ` and the selection's colour where the arrow keys move.
    let mut list = |items: Vec<String>, title: &str, side: Focus, sel: usize, area: Rect| {
        let focused = app.overlap_view.focus == side;
        let style = if focused {
            app.theme.selected()
        } else {
            app.theme.muted().add_modifier(Modifier::REVERSED)
        };
        let more = super::rows_in_view(items.len(), area.height.saturating_sub(2) as usize, sel, true);
        let title = if focused {
            format!("> {title}{more}")
        } else {
            format!("{title}{more}")
        };
        f.render_stateful_widget(
            List::new(items.into_iter().map(ListItem::new).collect::<Vec<_>>())
                .block(block(app, title))
                .highlight_style(style),
            area,
            &mut ListState::default().with_selected(Some(sel)),
        );
    };
    // Names lose their middle, not their end, so that two 10x files of one folder tell apart.
    let name_w = usize::from(lists_w.saturating_sub(2));
    let ds = app
        .datasets
        .iter()
        .map(|d| super::datasets::middle_cut(&app.display_path(&d.path), name_w, app.ascii))
        .collect();
    list(ds, "Dataset (A)", Focus::Datasets, app.overlap_view.dataset, dl);
    let ms = app.models.iter().map(|m| m.manifest.name.clone()).collect();
    list(ms, "Model (B)", Focus::Models, app.overlap_view.model, ml);
    let title = "Overlap: the model's genes found in the dataset";
    let lines = match (
        &app.overlap_view.shown(&app.overlap_view.report, app.overlap_pair()),
        app.models.is_empty(),
    ) {
        _ if !app.models_loaded => vec![Line::from(app.waiting("loading the zoo..."))],
        (_, true) => vec![Line::from(
            "No model in the zoo yet: train one first (Datasets screen, t).",
        )],
        (None, _) => vec![Line::from(app.waiting("computing the overlap..."))],
        (Some((_, _, Err(e))), _) => vec![Line::from(Span::styled(
            e.clone(),
            Style::default().fg(app.theme.error),
        ))],
        (Some((_, _, Ok(r))), _) => report_lines(app, r, report.width.saturating_sub(2) as usize),
    };
    // Longer than the panel: PgUp/PgDn scroll it, and its bottom border says where it is.
    let width = report.width.saturating_sub(2) as usize;
    let total: usize = lines.iter().map(|l| super::overlays::wrapped_rows(l, width)).sum();
    let visible = report.height.saturating_sub(2) as usize;
    let view = &app.overlap_view;
    view.report_scroll_max.set(total.saturating_sub(visible));
    view.report_page.set(visible.saturating_sub(1).max(1));
    let top = view.report_scroll.min(total.saturating_sub(visible));
    let mut frame = block(app, title);
    if total > visible {
        frame = frame.title_bottom(Span::styled(
            format!(
                " lines {}-{} of {total}, PgUp/PgDn ",
                top + 1,
                (top + visible).min(total)
            ),
            app.theme.muted(),
        ));
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((top as u16, 0))
            .block(frame),
        report,
    );
}

fn bar(app: &App, pct: f64, width: usize) -> Span<'static> {
    let filled = ((pct / 100.0) * width as f64).round() as usize;
    let color = if pct >= 90.0 {
        app.theme.ok
    } else if pct >= 60.0 {
        app.theme.warn
    } else {
        app.theme.error
    };
    let (full, empty) = if app.ascii { ("#", ".") } else { ("█", "░") };
    Span::styled(
        format!(
            "{}{}",
            full.repeat(filled.min(width)),
            empty.repeat(width - filled.min(width))
        ),
        Style::default().fg(color),
    )
}

/// The report in `width` columns: narrower than 52, each bar goes under its name, and bars
/// shrink (to 5) before their numbers are cut.
fn report_lines<'a>(app: &App, r: &OverlapReport, width: usize) -> Vec<Line<'a>> {
    let key = |k: &str| Span::styled(format!("{k:<19}"), app.theme.muted());
    let narrow = width < 52;
    let bar_w = width.saturating_sub(if narrow { 0 } else { 19 } + 24).clamp(5, 20);
    let mut lines = vec![
        Line::from(vec![
            key("dataset (A)"),
            Span::raw(format!("{} ({} genes, {})", r.a, thousands(r.a_genes), r.a_ids)),
        ]),
        Line::from(vec![
            key("model (B)"),
            Span::raw(format!("{} ({} genes, {})", r.b, thousands(r.b_genes), r.b_ids)),
        ]),
        Line::from(vec![
            key("matched through"),
            Span::raw(format!("{} ({})", r.key, r.reason)),
        ]),
        Line::from(""),
    ];
    let mut bar_line = |name: &str, pct: f64, text: Span<'a>| {
        let bar = bar(app, pct, bar_w);
        if narrow {
            lines.push(Line::from(Span::styled(name.to_string(), app.theme.muted())));
            lines.push(Line::from(vec![bar, text]));
        } else {
            lines.push(Line::from(vec![key(name), bar, text]));
        }
    };
    bar_line(
        "model genes found",
        r.pct_b_found,
        Span::styled(
            format!(
                " {:.1}%  {} of {}",
                r.pct_b_found,
                thousands(r.found),
                thousands(r.b_genes)
            ),
            app.theme.accent(),
        ),
    );
    bar_line(
        "dataset genes used",
        r.pct_a_used,
        Span::raw(format!(" {:.1}%", r.pct_a_used)),
    );
    if let Some(c) = r.counts_coverage {
        bar_line(
            "counts covered",
            100.0 * c,
            Span::raw(format!(" {:.1}% of the dataset's counts", 100.0 * c)),
        );
    }
    let predicted = match &app.overlap_view.shown(&app.overlap_view.predicted, app.overlap_pair()) {
        Some((_, _, Ok(p))) => Span::raw(p.clone()),
        Some((_, _, Err(e))) => Span::styled(e.clone(), app.theme.muted()),
        None => Span::styled(app.waiting("predicting..."), app.theme.muted()),
    };
    lines.push(Line::from(vec![key("predicted mapping"), predicted]));
    if !r.routes.is_empty() {
        let routes: Vec<String> = r
            .routes
            .iter()
            .map(|(route, n)| format!("{} {n}", route.describe()))
            .collect();
        lines.push(Line::from(vec![
            key("routes"),
            Span::styled(routes.join(", "), app.theme.muted()),
        ]));
    }
    for w in &r.warnings {
        lines.push(Line::from(Span::styled(
            format!("! {w}"),
            Style::default().fg(app.theme.warn),
        )));
    }
    if !r.missing.is_empty() {
        let top: Vec<String> = r.missing.iter().take(12).map(|m| m.name.clone()).collect();
        lines.push(Line::from(vec![
            key(&format!("missing ({})", r.missing.len())),
            Span::styled(
                format!("{}{}", top.join(" "), if r.missing.len() > 12 { " ..." } else { "" }),
                app.theme.muted(),
            ),
        ]));
        lines.push(Line::from(Span::styled(
            if app.overlap_model().is_some_and(|m| m.manifest.architecture.masked_input) {
                "  missing genes are masked when projecting, not set to zero"
            } else {
                "  missing genes are zero-filled when projecting: this model was trained without a mask (scmz train --gene-dropout makes one that masks)"
            },
            app.theme.muted(),
        )));
    }
    lines
}

/// The least width of the matrix's row labels (number and name); room the columns leave widens
/// them up to 30.
const LABEL: u16 = 14;

fn draw_matrix(f: &mut Frame, app: &App, area: Rect) {
    let title = "Pairwise overlap: % of column dataset's genes found in row's (m: back)";
    let reports = match &app.overlap_view.matrix {
        None => {
            let text = app.waiting(&format!(
                "computing over {} datasets...",
                app.overlap_view.matrix_paths.len()
            ));
            return f.render_widget(Paragraph::new(text).block(block(app, title)), area);
        }
        Some(Err(e)) => return f.render_widget(Paragraph::new(e.clone()).block(block(app, title)), area),
        Some(Ok(r)) => r,
    };
    if reports.is_empty() {
        let text = "No readable dataset to compare: run scmz in a folder with .h5ad files or 10x outputs.";
        return f.render_widget(
            Paragraph::new(text).wrap(Wrap { trim: true }).block(block(app, title)),
            area,
        );
    }
    let n = reports.len().isqrt();
    // Whole numbers or none: a column is 5 characters and a space, a row one line, and what
    // does not fit is scrolled to with the arrows.
    let fit_cols = (area.width.saturating_sub(2 + LABEL + 1) as usize / 6).max(1);
    let fit_rows = (area.height.saturating_sub(3) as usize).max(1);
    app.overlap_view.fit.set((fit_rows, fit_cols));
    let row0 = app.overlap_view.scroll.0.min(n.saturating_sub(fit_rows));
    let col0 = app.overlap_view.scroll.1.min(n.saturating_sub(fit_cols));
    let cols = col0..n.min(col0 + fit_cols);
    let spare = (area.width as usize).saturating_sub(3 + LABEL as usize + 6 * cols.len());
    let label_w = LABEL as usize + spare.min(16);
    let title = if n > fit_cols || n > fit_rows {
        format!(
            "Rows {}-{}, columns {}-{} of {n}: % of column's genes in row's (arrows, m)",
            row0 + 1,
            n.min(row0 + fit_rows),
            cols.start + 1,
            cols.end
        )
    } else {
        title.to_string()
    };
    // Names relative to the data folder, cut in the middle (copies of a file differ at the end).
    let view = &app.overlap_view;
    let names: Vec<String> = if view.matrix_paths.len() == n {
        view.matrix_paths
            .iter()
            .map(|p| {
                let shown = app.display_path(p);
                shown.strip_suffix(".h5ad").map(str::to_string).unwrap_or(shown)
            })
            .collect()
    } else {
        reports.iter().take(n).map(|r| r.b.clone()).collect()
    };
    let short = |s: &str, w: usize| super::datasets::middle_cut(s, w, app.ascii);
    let mut header = vec![String::new()];
    // Columns by number (5 characters cannot name a file), rows by number and name.
    header.extend(cols.clone().map(|j| format!("{:>5}", j + 1)));
    let rows: Vec<Row> = (row0..n.min(row0 + fit_rows))
        .map(|i| {
            let digits = n.to_string().len();
            let label = format!(
                "{:>digits$} {}",
                i + 1,
                short(&names[i], label_w.saturating_sub(digits + 1))
            );
            let mut cells = vec![Span::raw(label)];
            for j in cols.clone() {
                let r = &reports[i * n + j];
                let c = if r.pct_b_found >= 90.0 {
                    app.theme.ok
                } else if r.pct_b_found >= 50.0 {
                    app.theme.warn
                } else {
                    app.theme.error
                };
                cells.push(Span::styled(format!("{:>5.1}", r.pct_b_found), Style::default().fg(c)));
            }
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![Constraint::Length(label_w as u16)];
    widths.extend(std::iter::repeat_n(Constraint::Length(5), cols.len()));
    let mut frame = block(app, &title);
    if !view.matrix_left_out.is_empty() {
        let names: Vec<String> = view.matrix_left_out.iter().map(|p| app.display_path(p)).collect();
        frame = frame.title_bottom(Span::styled(
            format!(
                " {} unreadable left out: {} ",
                names.len(),
                short(&names.join(", "), area.width.saturating_sub(30) as usize)
            ),
            Style::default().fg(app.theme.warn),
        ));
    }
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(app.theme.muted().add_modifier(Modifier::BOLD)))
            .block(frame),
        area,
    );
}
