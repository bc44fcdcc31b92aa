//! Drawing: reads `App`, writes the frame, changes nothing. One file per screen, plus the
//! charts every screen shares and the overlays (help, training form, confirmations).

mod charts;
mod datasets;
mod jobs;
mod models;
mod overlap;
mod overlays;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Screen};
use super::keys;
use super::screens::overlay::Overlay;

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    f.render_widget(Block::default().style(app.theme.base()), area);
    // A notice longer than the width takes up to three lines: what to do is at its end.
    // Measured as it is drawn (wrapped between words, after a leading space).
    let footer_h = app.notice.as_ref().map_or(1, |n| {
        overlays::wrapped_rows(&Line::from(format!(" {n}")), usize::from(area.width.max(1))).clamp(1, 3) as u16
    });
    let [tabs, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(footer_h)]).areas(area);
    draw_tabs(f, app, tabs);
    match app.screen {
        Screen::Datasets => datasets::draw(f, app, body),
        Screen::Models => models::draw(f, app, body),
        Screen::Overlap => overlap::draw(f, app, body),
        Screen::Jobs => jobs::draw(f, app, body),
    }
    draw_footer(f, app, footer);
    overlays::draw(f, app, area);
    if app.ascii {
        asciify(f.buffer_mut());
    }
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = vec![Span::styled(" scmz ", app.theme.accent())];
    for (i, s) in Screen::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, s.title());
        let style = if *s == app.screen {
            app.theme.selected().add_modifier(Modifier::BOLD)
        } else {
            app.theme.muted()
        };
        spans.push(Span::styled(label, style));
    }
    let running = app
        .jobs
        .iter()
        .filter(|j| j.state == scmz::jobs::JobState::Running)
        .count();
    if running > 0 {
        spans.push(Span::styled(
            format!("  {running} running"),
            Style::default().fg(app.theme.accent),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_footer(f: &mut Frame, app: &App, area: Rect) {
    let line = if let Some(n) = &app.notice {
        Line::from(Span::styled(format!(" {n}"), Style::default().fg(app.theme.warn)))
    } else if matches!(app.overlay, Some(Overlay::Log(_))) {
        // The log pane takes every key: its own, not the screen's.
        Line::from(Span::styled(
            " ↑↓ j/k scroll  PgUp/PgDn page  g start  G end  Esc/Enter/q close",
            app.theme.muted(),
        ))
    } else if app.datasets_view.filtering {
        Line::from(vec![
            Span::styled(" filter: ", app.theme.accent()),
            Span::raw(format!("{}_", app.datasets_view.filter)),
            Span::styled("  Enter keep  Esc clear", app.theme.muted()),
        ])
    } else {
        // Help always shows (it lists every key); the others in order while they fit whole (a
        // cut "q Ct" helped no one).
        let width = |b: &keys::Binding| b.keys.chars().count() + b.short.chars().count() + 3;
        let shown: Vec<_> = keys::for_screen(app.screen).filter(|b| b.footer).collect();
        let help: usize = shown.iter().filter(|b| b.keys == "?").map(|b| width(b)).sum();
        let mut room = (area.width as usize).saturating_sub(help);
        let mut spans = Vec::new();
        for b in shown {
            if b.keys != "?" {
                if width(b) > room {
                    continue;
                }
                room -= width(b);
            }
            spans.push(Span::styled(format!(" {}", b.keys), app.theme.accent()));
            spans.push(Span::styled(format!(" {} ", b.short), app.theme.muted()));
        }
        Line::from(spans)
    };
    f.render_widget(Paragraph::new(line).wrap(Wrap { trim: false }), area);
}

/// A bordered block with a title, in the theme's colours.
pub fn block<'a>(app: &App, title: impl Into<String>) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_type(BorderType::Rounded)
        .border_style(app.theme.border())
        .title(Span::styled(format!(" {} ", title.into()), app.theme.accent()))
}

/// A table in a titled block: bold muted header, the selected row highlighted.
pub fn table<'a>(
    app: &App,
    title: impl Into<String>,
    header: &[&'a str],
    rows: Vec<ratatui::widgets::Row<'a>>,
    widths: impl IntoIterator<Item = Constraint>,
) -> ratatui::widgets::Table<'a> {
    ratatui::widgets::Table::new(rows, widths)
        .header(ratatui::widgets::Row::new(header.to_vec()).style(app.theme.muted().add_modifier(Modifier::BOLD)))
        .block(block(app, title))
        .row_highlight_style(app.theme.selected())
}

/// A bordered block whose title is a styled line (e.g. a chart's legend).
pub fn block_line<'a>(app: &App, title: Line<'a>) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_type(BorderType::Rounded)
        .border_style(app.theme.border())
        .title(title)
}

/// The first and last rows (from 1) of a list of `total` rows that shows only `visible` at once,
/// with the selection `sel` in view (ratatui scrolls it to the bottom); None when all fit.
pub fn rows_shown(total: usize, visible: usize, sel: usize) -> Option<(usize, usize)> {
    if total <= visible || visible == 0 {
        return None;
    }
    let first = sel.min(total - 1).saturating_sub(visible - 1);
    Some((first + 1, first + visible))
}

/// "  rows 5-12 of 40" (`compact`: " 5-12/40") when not all rows fit, else nothing: rows out of
/// view are never hidden without a word.
pub fn rows_in_view(total: usize, visible: usize, sel: usize, compact: bool) -> String {
    match rows_shown(total, visible, sel) {
        None => String::new(),
        Some((a, b)) if compact => format!(" {a}-{b}/{total}"),
        Some((a, b)) => format!("  rows {a}-{b} of {total}"),
    }
}

/// Thousands separators: 12,345.
pub fn thousands(n: usize) -> String {
    scmz::human::thousands(n as u64)
}

/// Replaces everything outside ASCII with an ASCII look-alike, for terminals without braille or
/// box-drawing fonts (`--ascii`).
fn asciify(buf: &mut ratatui::buffer::Buffer) {
    for cell in buf.content.iter_mut() {
        let s = cell.symbol();
        if s.is_ascii() {
            continue;
        }
        let c = s.chars().next().unwrap_or(' ');
        let r = match c {
            '─' | '━' | '═' | '╌' => "-",
            '│' | '┃' | '║' | '╎' => "|",
            '╭' | '╮' | '╰' | '╯' | '┌' | '┐' | '└' | '┘' | '├' | '┤' | '┬' | '┴' | '┼' => {
                "+"
            }
            '\u{2801}'..='\u{28ff}' => ".",
            '\u{2800}' => " ",
            '█' | '▇' | '▆' | '▅' | '■' | '▪' => "#",
            '×' => "x",
            '▄' | '▃' | '▂' | '▁' => "_",
            '•' | '·' | '●' => "*",
            '↑' => "^",
            '↓' => "v",
            '←' => "<",
            '→' => ">",
            '…' => "~",
            _ => "?",
        };
        cell.set_symbol(r);
    }
}
