//! Popups drawn over the screen: help, the training form, confirmations.

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::block;
use crate::tui::app::App;
use crate::tui::keys::BINDINGS;
use crate::tui::screens::overlay::{Field, Overlay};

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let [r] = Layout::horizontal([Constraint::Length(w.min(area.width))])
        .flex(Flex::Center)
        .areas(area);
    let [r] = Layout::vertical([Constraint::Length(h.min(area.height))])
        .flex(Flex::Center)
        .areas(r);
    r
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let Some(overlay) = &app.overlay else {
        return;
    };
    if let Overlay::Help = overlay {
        // This screen's keys first, then the others' with where they work; each wraps under its
        // description, and what a short terminal cannot show is counted, not cut.
        let width = area.width.min(64).saturating_sub(2).max(20) as usize;
        let room = area.height.saturating_sub(3) as usize;
        let here: Vec<_> = crate::tui::keys::for_screen(app.screen).collect();
        let others = BINDINGS.iter().filter(|b| !here.iter().any(|h| h.keys == b.keys));
        let mut lines: Vec<Line> = Vec::new();
        let mut left_out = 0;
        for (i, b) in here.iter().copied().chain(others).enumerate() {
            let where_ = if i < here.len() || b.screens.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    b.screens.iter().map(|s| s.title()).collect::<Vec<_>>().join(", ")
                )
            };
            let text = format!("{}{where_}", b.what);
            let wrapped = wrap_words(&text, width.saturating_sub(10));
            if left_out > 0 || lines.len() + wrapped.len() > room {
                left_out += 1;
                continue;
            }
            for (j, part) in wrapped.into_iter().enumerate() {
                let keys = if j == 0 { b.keys } else { "" };
                lines.push(Line::from(vec![
                    Span::styled(format!("{keys:<10}"), app.theme.accent()),
                    Span::raw(part),
                ]));
            }
        }
        let last = if left_out > 0 {
            format!("+{left_out} keys of other screens not shown; any key closes")
        } else {
            "any key closes this help".to_string()
        };
        lines.push(Line::from(Span::styled(last, app.theme.muted())));
        let r = centered(area, width as u16 + 2, lines.len() as u16 + 2);
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .style(app.theme.base())
                .block(block(app, "Keys")),
            r,
        );
    } else if let Overlay::Form(form) = overlay {
        let mut lines = vec![Line::from(Span::styled(
            format!(
                "data: {}",
                form.data
                    .iter()
                    .map(|p| app.display_path(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            app.theme.muted(),
        ))];
        for field in Field::ALL {
            let (label, value) = (field.label(), form.value(field));
            let focused = field == form.focus;
            let shown = if form.choices(field).is_empty() {
                // A value longer than its room shows its end, where the typing is.
                let room = 44usize;
                let n = value.chars().count();
                let value = if n > room {
                    let tail: String = value.chars().skip(n - (room - 1)).collect();
                    format!("{}{tail}", if app.ascii { "~" } else { "…" })
                } else {
                    value.to_string()
                };
                format!("{value}{}", if focused { "_" } else { "" })
            } else {
                format!("< {value} >")
            };
            let note = if field == Field::Device && !form.gpu {
                "  no GPU here: runs on the CPU"
            } else {
                ""
            };
            lines.push(Line::from(vec![
                Span::styled(format!("{label:>11}: "), app.theme.muted()),
                Span::styled(
                    shown,
                    if focused {
                        app.theme.selected()
                    } else {
                        app.theme.base()
                    },
                ),
                Span::styled(note, app.theme.muted()),
            ]));
        }
        lines.push(Line::from(Span::styled(
            "Tab/↑↓ field  ←/→ choose  Enter start  Esc close",
            app.theme.muted(),
        )));
        let r = centered(area, 60, lines.len() as u16 + 2);
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(lines)
                .style(app.theme.base())
                .block(block(app, "Train a model (runs as a background job)")),
            r,
        );
    } else if let Overlay::Log(view) = overlay {
        // The whole body, between the tabs and the footer.
        let r = Rect {
            y: area.y + 1,
            height: area.height.saturating_sub(2),
            ..area
        };
        let rows = r.height.saturating_sub(2) as usize;
        // Long lines (an error naming a path) wrap between words, so that nothing is cut and no
        // number is split; a word longer than the pane (a path) is broken where it must be.
        let width = r.width.saturating_sub(2).max(1) as usize;
        let end = view.lines.len().saturating_sub(view.scroll);
        let mut wrapped: Vec<String> = Vec::new();
        for l in &view.lines[..end] {
            wrapped.extend(wrap_words(l, width));
        }
        let start = wrapped.len().saturating_sub(rows);
        let lines: Vec<Line> = wrapped[start..].iter().map(|l| Line::raw(l.as_str())).collect();
        let ended = app.jobs.iter().any(|j| j.id == view.job && j.state.is_final());
        let state = if view.scroll == 0 {
            if ended { "ended, at its end" } else { "following" }.to_string()
        } else {
            format!("{} lines up", view.scroll)
        };
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(lines).style(app.theme.base()).block(block(
                app,
                format!("Log of job {} ({state}; ↑↓ PgUp/PgDn, G end, Esc)", view.job),
            )),
            r,
        );
    } else if let Overlay::ConfirmForce { found, least } = overlay {
        let r = centered(area, 64, 8);
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(format!(
                "Only {found:.1} % of the model's genes are in this dataset, below the {least:.0} % scmz projects without --force (the missing genes are {}).{} Project anyway (--force)?  y / n",
                if app.overlap_model().is_some_and(|m| m.manifest.architecture.masked_input) {
                    "masked"
                } else {
                    "zero-filled: the model was trained without a mask"
                },
                match app.overlap_view.shown(&app.overlap_view.predicted, app.overlap_pair()) {
                    Some((_, _, Ok(p))) => format!(" Predicted: {p}."),
                    _ => String::new(),
                }
            ))
            .wrap(Wrap { trim: true })
            .style(app.theme.base())
            .block(block(app, "Low overlap")),
            r,
        );
    } else if let Overlay::ConfirmReplace { output, .. } = overlay {
        let written = std::fs::metadata(output)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| jiff::Timestamp::try_from(t).ok())
            .map(|t| format!(" (written {} UTC)", t.strftime("%Y-%m-%d %H:%M")))
            .unwrap_or_default();
        let r = centered(area, 60, 6);
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(format!(
                "This pair was projected before: {}{written}. Replace it?  y / n",
                output.display()
            ))
            .wrap(Wrap { trim: true })
            .style(app.theme.base())
            .block(block(app, "Projection exists")),
            r,
        );
    } else if let Overlay::ConfirmCancel(id) = overlay {
        let r = centered(area, 50, 4);
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(format!(
                "Cancel job {id}?{}  y / n",
                if app.jobs.iter().any(|j| &j.id == id && j.kind() == "train") {
                    " Its last checkpoint is kept."
                } else {
                    ""
                }
            ))
            .wrap(Wrap { trim: true })
            .style(app.theme.base())
            .block(block(app, "Cancel")),
            r,
        );
    }
}

/// How many rows `line` takes wrapped between words in `width` columns.
pub(super) fn wrapped_rows(line: &Line, width: usize) -> usize {
    let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
    wrap_words(&text, width).len()
}

/// `text` in lines of at most `width` characters, broken at spaces (kept indentation included);
/// an empty text is one empty line.
pub(super) fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let options = textwrap::Options::new(width.max(1))
        .word_separator(textwrap::WordSeparator::AsciiSpace)
        .break_words(true);
    textwrap::wrap(text, options)
        .into_iter()
        .map(|l| l.into_owned())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn log_lines_wrap_between_words() {
        let line = "epoch 12/400  ELBO 1234.567  KL 12.345  val ELBO 1240.001";
        let lines = super::wrap_words(line, 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        // Every number whole on one line.
        for number in ["1234.567", "12.345", "1240.001", "12/400"] {
            assert!(lines.iter().any(|l| l.contains(number)), "{number} split in {lines:?}");
        }
        // A word longer than the width is broken; nothing is lost.
        let path = "/a/very/long/path/without/any/spaces/at/all.h5ad";
        let lines = super::wrap_words(path, 16);
        assert_eq!(lines.concat(), path);
        assert_eq!(super::wrap_words("", 10), [""]);
    }
}
