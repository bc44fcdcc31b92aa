//! The terminal UI: `scmz` with no arguments. A client of the domain library like the CLI:
//! `app` holds what the screens share (the data, the screen in view, the theme, the one overlay,
//! the outbox of requests) and routes keys; `screens` holds each screen's own state and keys
//! and the overlays (help, training form, confirmations, log pane); `worker` runs the requests
//! on its own threads through the library, `ui` draws, `theme` and `keys` are data. The loop here wakes on
//! a key, a worker update or a tick, and redraws at once after a key, else at most ten times a second and only when
//! something changed, which keeps it light over SSH.

mod app;
mod keys;
mod screens;
mod theme;
mod ui;
mod worker;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::ExecutableCommand;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

pub use theme::Theme;
use worker::{Request, Sources, Update};

pub struct Options {
    pub data_dirs: Vec<PathBuf>,
    pub zoo: PathBuf,
    pub theme: Option<String>,
    pub ascii: bool,
    /// The bundled demo: start a short training job on this dataset when the zoo is empty.
    pub demo: Option<PathBuf>,
}

/// The theme to use: `--theme`, else the config file's, else dark; `NO_COLOR` removes colour.
pub fn choose_theme(flag: Option<&str>, config: &scmz::config::Config) -> anyhow::Result<Theme> {
    let name = flag
        .map(str::to_string)
        .or_else(|| config.tui.theme.clone())
        .unwrap_or_else(|| "dark".into());
    let theme = Theme::load(&name)?;
    Ok(match std::env::var_os("NO_COLOR") {
        Some(v) if !v.is_empty() => theme.without_color(),
        _ => theme,
    })
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = std::io::stdout().execute(LeaveAlternateScreen);
    let _ = std::io::stdout().execute(crossterm::cursor::Show);
}

enum Msg {
    Term(TermEvent),
    Update(Update),
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("the terminal UI needs a terminal; use the subcommands (`scmz --help`) in scripts");
    }
    let config = scmz::config::Config::load()?;
    let theme = choose_theme(opts.theme.as_deref(), &config)?;
    let ascii = opts.ascii || config.tui.ascii.unwrap_or(false);
    let sources = Sources {
        data_dirs: opts
            .data_dirs
            .iter()
            .map(|d| d.canonicalize().unwrap_or(d.clone()))
            .collect(),
        zoo: opts.zoo.clone(),
        jobs: scmz::jobs::default_dir(),
        cache: Some(scmz::data::catalog::default_cache()),
        // Files are opened in a child process: one that crashes libhdf5 must not end the TUI.
        scan_worker: Some(scmz::jobs::running_scmz()),
    };
    let mut app = app::App::new(sources.clone(), theme, ascii);
    app.demo = opts.demo.clone();

    // The terminal is restored on panic as on any other exit.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default_hook(info);
    }));
    enable_raw_mode()?;
    std::io::stdout().execute(EnterAlternateScreen)?;
    let result = (|| {
        let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        terminal.clear()?;
        event_loop(&mut terminal, &mut app, sources)
    })();
    restore_terminal();
    result
}

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<std::io::Stdout>>,
    app: &mut app::App,
    sources: Sources,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
        let (req_tx, req_rx) = std::sync::mpsc::channel::<Request>();
        let engine = scmz::jobs::this_engine();
        let utx = tx.clone();
        std::thread::spawn(move || {
            worker::run(sources, engine, req_rx, move |u| {
                let _ = utx.send(Msg::Update(u));
            })
        });
        let ktx = tx.clone();
        std::thread::spawn(move || {
            while let Ok(ev) = event::read() {
                if ktx.send(Msg::Term(ev)).is_err() {
                    break;
                }
            }
        });
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let _ = req_tx.send(Request::Refresh { all: true });
        let (mut last_refresh, mut last_full) = (Instant::now(), Instant::now());
        let mut dirty = true;
        let mut last_draw = Instant::now() - Duration::from_secs(1);
        loop {
            // A key is drawn at once; worker updates at most ten times a second, the last of a
            // burst when its 100 ms are up (not at the next tick).
            let mut key = false;
            let next_draw = tokio::time::Instant::from_std(last_draw + Duration::from_millis(100));
            tokio::select! {
                Some(msg) = rx.recv() => {
                    match msg {
                        Msg::Term(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                            app.on_key(k);
                            key = true;
                        }
                        Msg::Term(_) => {}
                        Msg::Update(u) => app.update(u),
                    }
                    dirty = true;
                }
                _ = tokio::time::sleep_until(next_draw), if dirty => {}
                _ = tick.tick() => {
                    app.ticks += 1;
                    dirty |= app.awaiting_answer();
                    if last_full.elapsed() > Duration::from_secs(10) {
                        last_full = Instant::now();
                        last_refresh = last_full;
                        let _ = req_tx.send(Request::Refresh { all: true });
                    } else if last_refresh.elapsed() >= Duration::from_secs(1) {
                        last_refresh = Instant::now();
                        let _ = req_tx.send(Request::Refresh { all: false });
                    }
                }
                _ = sigterm.recv() => app.quit = true,
            }
            for r in app.take_requests() {
                let _ = req_tx.send(r);
            }
            if app.quit {
                return Ok(());
            }
            if dirty && (key || last_draw.elapsed() >= Duration::from_millis(100)) {
                terminal.draw(|f| ui::draw(f, app))?;
                last_draw = Instant::now();
                dirty = false;
            }
        }
    })
}
