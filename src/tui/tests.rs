//! The TUI as a user sees it: every screen rendered on ratatui's `TestBackend` at 80x24 and
//! 120x40 from real data (the datasets in `tests/data`, the frozen fixture zoo, the event log of a
//! real training run), checked with `insta` text snapshots; and what keys do.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use scmz::events::Event;
use scmz::jobs::{Job, JobState, Registry};
use scmz::spec::{EngineRequest, ProjectSpec, TrainSpec};

use super::app::{App, Screen};
use super::screens::overlap::Focus;
use super::screens::overlay::Overlay;
use super::theme::Theme;
use super::worker::{self, Request, Sources};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn job(id: &str, kind: &str, name: &str, state: JobState, events: Option<PathBuf>) -> Job {
    let request = match kind {
        "train" => EngineRequest::Train(Box::new(TrainSpec::defaults("d.h5ad".into(), name.into()))),
        _ => EngineRequest::Project(Box::new(ProjectSpec::defaults("d.h5ad".into(), name.into()))),
    };
    let mut j = Job::new(id.into(), request, events);
    j.state = state;
    j.created = "2026-11-25T18:20:40Z".into();
    j.started = Some("2026-11-25T18:20:41Z".into());
    // Our own pid: alive, so the running job is not taken for a dead one.
    j.supervisor_pid = Some(std::process::id());
    j.pid = Some(std::process::id());
    j
}

/// Types `text` key by key.
fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

/// Enter, and what the app says to it.
fn enter_notice(app: &mut App) -> String {
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    app.notice.clone().unwrap_or_default()
}

/// Moves the Datasets selection to the dataset whose file name is `name`.
fn select_dataset(app: &mut App, name: &str) {
    let i = app
        .visible_datasets()
        .iter()
        .position(|d| d.path.ends_with(name))
        .unwrap();
    for _ in 0..i {
        key(app, KeyCode::Down);
    }
}

/// An app loaded through the worker's functions, as the worker thread would, with two jobs: a
/// finished one and a running one whose event log is a real run's, stopped at epoch 25.
fn loaded_app(jobs_dir: &Path) -> App {
    let reg = Registry::new(jobs_dir);
    let mut done = job("20261125-180000-1", "train", "pbmc-tiny", JobState::Done, None);
    done.reason = None;
    let mut slurm = job(
        "20261125-181000-2",
        "train",
        "atlas-n_latent-30",
        JobState::Queued,
        None,
    );
    slurm.backend = "slurm".into();
    slurm.slurm_id = Some("4211_2".into());
    slurm.reason = Some("pending in Slurm (Resources)".into());
    let running = job(
        "20261125-182040-3",
        "train",
        "pbmc-demo",
        JobState::Running,
        Some(data().join("events/pbmc-running.jsonl")),
    );
    for j in [&done, &slurm, &running] {
        std::fs::create_dir_all(reg.job_dir(&j.id)).unwrap();
        reg.save(j).unwrap();
    }
    let sources = Sources {
        data_dirs: vec![data()],
        // Relative (tests run in the package root), so the title that names the zoo is the same
        // on every machine.
        zoo: PathBuf::from("tests/data/zoo"),
        jobs: jobs_dir.to_path_buf(),
        cache: None,
        scan_worker: None,
    };
    let mut app = App::new(sources.clone(), Theme::bundled("dark"), false);
    app.update(worker::datasets(&sources));
    app.update(worker::models(&sources));
    // Slurm is not reachable from here: its row keeps what its record says.
    app.update(worker::jobs(&sources));
    serve(&mut app, &sources);
    app
}

/// Answers the app's requests synchronously, as the worker thread would.
fn serve(app: &mut App, s: &Sources) {
    loop {
        let reqs = app.take_requests();
        if reqs.is_empty() {
            return;
        }
        for r in reqs {
            match r {
                Request::Details(p) => app.update(worker::details(&p)),
                Request::Follow(Some(p)) => {
                    let mut tail = scmz::events::LogTail::new(&p);
                    tail.poll();
                    app.update(worker::Update::Run {
                        path: p,
                        records: tail.records,
                        reset: true,
                    });
                }
                Request::Overlap { dataset, model } => app.update(worker::overlap(s, &dataset, &model)),
                Request::Matrix(paths) => app.update(worker::matrix(&paths)),
                Request::JobLog(Some(job)) => app.update(worker::job_log(s, &job)),
                Request::Summary(job) => app.update(worker::summary(s, &job)),
                _ => {}
            }
        }
    }
}

/// The job submission among the app's pending requests.
fn submission(app: &mut App) -> scmz::jobs::Submission {
    app.take_requests()
        .into_iter()
        .find_map(|r| match r {
            Request::Submit(s) => Some(*s),
            _ => None,
        })
        .expect("a job submission")
}

fn key(app: &mut App, code: KeyCode) {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
    let s = app.sources.clone();
    serve(app, &s);
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| super::ui::draw(f, app)).unwrap();
    let buf = t.backend().buffer();
    (0..h)
        .map(|y| {
            let line: String = (0..w).map(|x| buf[(x, y)].symbol()).collect();
            line.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn snap(name: &str, app: &App) {
    for (w, h) in [(80, 24), (120, 40)] {
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), fixed_temp_names(render(app, w, h)));
    }
}

/// A screen with tempfile's folders (`.tmpAbC123`, named at random) named `.tmpXXXXXX`: the
/// same width, so the same layout, on every run.
fn fixed_temp_names(mut text: String) -> String {
    let mut from = 0;
    while let Some(at) = text[from..].find("/.tmp") {
        let start = from + at + "/.tmp".len();
        let end = start + text[start..].chars().take(6).map(char::len_utf8).sum::<usize>();
        text.replace_range(start..end, &"X".repeat(text[start..end].chars().count()));
        from = end;
    }
    text
}

/// Before the worker's first answers every screen says it is loading, never "no models" or "no
/// jobs" for a zoo and a queue it has not read yet; once they come, an empty zoo says so.
#[test]
fn screens_say_loading_until_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources {
        data_dirs: vec![data()],
        zoo: dir.path().join("zoo"),
        jobs: dir.path().join("jobs"),
        cache: None,
        scan_worker: None,
    };
    let mut app = App::new(sources.clone(), Theme::bundled("dark"), false);
    for (k, want) in [
        ('1', "scanning..."),
        ('2', "loading the zoo..."),
        ('3', "loading the zoo..."),
        ('4', "loading jobs..."),
    ] {
        key(&mut app, KeyCode::Char(k));
        let text = render(&app, 80, 24);
        assert!(text.contains(want), "screen {k}:\n{text}");
        snap(&format!("{}_loading", app.screen.title().to_lowercase()), &app);
        assert!(
            !text.contains("No models yet") && !text.contains("No jobs"),
            "screen {k}:\n{text}"
        );
    }
    app.update(worker::models(&sources));
    app.update(worker::jobs(&sources));
    key(&mut app, KeyCode::Char('2'));
    assert!(render(&app, 80, 24).contains("No models yet"));
    snap("models_empty", &app);
    key(&mut app, KeyCode::Char('3'));
    assert!(render(&app, 80, 24).contains("No model in the zoo yet"));
    snap("overlap_empty", &app);
    key(&mut app, KeyCode::Char('4'));
    assert!(render(&app, 80, 24).contains("No jobs"));
    snap("jobs_empty", &app);
    // A folder with no datasets.
    std::fs::create_dir_all(dir.path().join("nothing")).unwrap();
    app.sources.data_dirs = vec![dir.path().join("nothing")];
    let s = app.sources.clone();
    app.update(worker::datasets(&s));
    key(&mut app, KeyCode::Char('1'));
    assert!(render(&app, 80, 24).contains("no datasets here"));
    snap("datasets_empty", &app);
}

/// A failed job's panel says why, at both sizes.
#[test]
fn a_failed_job_shows_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut failed = job("20261125-190000-1", "train", "pbmc-bad", JobState::Failed, None);
    failed.reason = Some(
        "exited with code 1: pbmc68k_counts.h5ad: no obs column `batch` for --batch-key; label-like columns: bulk_labels, louvain, phase"
            .into(),
    );
    let app = jobs_app(dir.path(), &[&failed]);
    for (w, h) in [(80, 24), (120, 40)] {
        assert!(render(&app, w, h).contains("no obs column `batch`"), "{w}x{h}");
    }
    snap("job_failed", &app);
    // However long the path before it, the reason's end shows.
    let mut long = failed.clone();
    long.reason = Some(format!(
        "exited with code 1: {}/x.h5ad: no obs column `nosuch` for --batch-key",
        "/very_long_directory_name".repeat(12)
    ));
    let app = jobs_app(dir.path(), &[&long]);
    for (w, h) in [(80, 24), (60, 20)] {
        assert!(render(&app, w, h).contains("for --batch-key"), "{w}x{h}");
    }
}

/// A prediction or overlap that arrives for a pair no longer selected (the user moved on while
/// it was computed) is dropped; the selected pair's own answer is shown.
#[test]
fn late_answers_for_another_pair_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char('o'));
    let (dataset, model) = app.overlap_pair().unwrap();
    let other = dataset.with_file_name("mouse_10k_subset.h5ad");
    app.overlap_view.predicted = None;
    let predicted = |dataset: &Path, model: &str, text: &str| worker::Update::Predicted {
        dataset: dataset.to_path_buf(),
        model: model.to_string(),
        result: Ok(text.to_string()),
    };
    app.update(predicted(&other, &model, "1.122 latent displacement"));
    assert!(
        app.overlap_view.predicted.is_none(),
        "another pair's prediction was kept"
    );
    app.update(predicted(&dataset, "some-other-model", "0.010"));
    assert!(app.overlap_view.predicted.is_none());
    // What the screen shows after those late answers: the pair's own prediction only.
    let text = render(&app, 120, 40);
    assert!(!text.contains("1.122") && !text.contains("0.010"), "{text}");
    snap("overlap_late_answers_dropped", &app);
    app.update(predicted(&dataset, &model, "0.2 latent displacement"));
    assert_eq!(
        app.overlap_view.predicted.as_ref().map(|p| p.2.clone()),
        Some(Ok("0.2 latent displacement".to_string()))
    );
}

#[test]
fn every_screen_at_80x24_and_120x40() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    // Sort by name: the first row is the 10x mtx v2 folder; move to pbmc68k_counts.
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    snap("datasets", &app);
    key(&mut app, KeyCode::Char('2'));
    snap("models", &app);
    // From the dataset, `o` opens the overlap with the zoo's model.
    key(&mut app, KeyCode::Char('1'));
    key(&mut app, KeyCode::Char('o'));
    assert_eq!(app.screen, Screen::Overlap);
    snap("overlap", &app);
    key(&mut app, KeyCode::Char('m'));
    snap("overlap_matrix", &app);
    key(&mut app, KeyCode::Char('4'));
    snap("jobs", &app);
    key(&mut app, KeyCode::Char('?'));
    snap("help", &app);
}

#[test]
fn the_run_monitor_follows_a_real_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    key(&mut app, KeyCode::Char('4'));
    // Newest job first: the running one, whose monitor shows the real log.
    assert_eq!(app.selected_job().unwrap().name.as_deref(), Some("pbmc-demo"));
    let text = render(&app, 120, 40);
    assert!(text.contains("epoch 25/40"), "{text}");
    assert!(text.contains("Latent epoch 25"), "{text}");
    assert!(text.contains("/10 above 0.05 nats"), "{text}");
    assert!(text.contains("CD14+…cyte"), "{text}");
    // The Slurm job shows its backend and id in the row.
    assert!(text.contains("slurm 4211_2"), "{text}");
    // Log scale and the KL term change the chart's title.
    key(&mut app, KeyCode::Char('e'));
    key(&mut app, KeyCode::Char('e'));
    key(&mut app, KeyCode::Char('L'));
    assert!(render(&app, 120, 40).contains("KL per cell, log10"));
}

#[test]
fn names_sort_as_people_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    let one = app.datasets[0].clone();
    app.datasets = ["c10.h5ad", "c2.h5ad", "C1.h5ad", "b.h5ad"]
        .iter()
        .map(|n| scmz::data::catalog::Summary {
            path: data().join(n),
            ..one.clone()
        })
        .collect();
    let names = |app: &App| -> Vec<String> {
        app.visible_datasets()
            .iter()
            .map(|d| app.display_path(&d.path))
            .collect()
    };
    assert_eq!(names(&app), ["b.h5ad", "C1.h5ad", "c2.h5ad", "c10.h5ad"]);
    key(&mut app, KeyCode::Char('S'));
    assert_eq!(names(&app), ["c10.h5ad", "c2.h5ad", "C1.h5ad", "b.h5ad"]);
}

#[test]
fn filter_sort_help_and_ascii_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    let all = app.visible_datasets().len();
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "pbmc");
    key(&mut app, KeyCode::Enter);
    let names: Vec<String> = app
        .visible_datasets()
        .iter()
        .map(|d| app.display_path(&d.path))
        .collect();
    assert_eq!(names, ["pbmc68k_counts.h5ad", "pbmc68k_reduced.h5ad"], "of {all}");
    // `/` matches more than names: format, species, label columns; every word must match.
    let shown = |app: &mut App, filter: &str| -> Vec<String> {
        let kept = std::mem::replace(&mut app.datasets_view.filter, filter.to_string());
        let names = app
            .visible_datasets()
            .iter()
            .map(|d| app.display_path(&d.path))
            .collect();
        app.datasets_view.filter = kept;
        names
    };
    let mouse = shown(&mut app, "mouse");
    assert!(mouse.iter().any(|n| n == "mouse_10k_subset.h5ad"), "{mouse:?}");
    let labelled = shown(&mut app, "bulk_labels");
    assert!(labelled.iter().any(|n| n == "pbmc68k_counts.h5ad"), "{labelled:?}");
    let h5 = shown(&mut app, "10x h5");
    assert!(
        !h5.is_empty() && h5.iter().all(|n| n.starts_with("10x/") && n.ends_with(".h5")),
        "{h5:?}"
    );
    // Sort by cells, reversed: the biggest dataset first.
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('/'));
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.visible_datasets().len(), all);
    key(&mut app, KeyCode::Char('s'));
    key(&mut app, KeyCode::Char('S'));
    assert!(app.visible_datasets()[0].path.ends_with("mouse_10k_subset.h5ad"));
    key(&mut app, KeyCode::Char('?'));
    let text = render(&app, 80, 24);
    assert!(text.contains("this help") && text.contains("quit"), "{text}");
    key(&mut app, KeyCode::Char('x'));
    assert!(!matches!(app.overlay, Some(Overlay::Help)));
    // ASCII mode leaves nothing outside ASCII on screen, on the busiest screen too.
    app.ascii = true;
    key(&mut app, KeyCode::Char('4'));
    for (w, h) in [(80, 24), (120, 40)] {
        let text = render(&app, w, h);
        assert!(text.is_ascii(), "{text}");
        // Nothing drawn as `?` (the legend's squares were): the only one is the help key.
        assert_eq!(text.matches('?').count(), 1, "{text}");
        assert!(text.contains("#CD"), "the legend: {text}");
    }
    key(&mut app, KeyCode::Char('q'));
    assert!(app.quit);
}

/// The Details panel says a dataset's duplicated gene names once (it said it twice).
#[test]
fn duplicated_gene_names_are_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "mouse_10k_subset.h5ad");
    let text = render(&app, 120, 40);
    assert_eq!(text.matches("duplicated gene").count(), 1, "{text}");
}

/// Two marked datasets do not make a job that fails ("train takes one dataset"): the form says
/// to merge them first. A batch or label key the dataset does not have is refused in the form,
/// naming the columns it has.
#[test]
fn the_training_form_refuses_what_the_job_would_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char(' '));
    app.datasets_view.sel = 0;
    select_dataset(&mut app, "mouse_10k_subset.h5ad");
    key(&mut app, KeyCode::Char(' '));
    key(&mut app, KeyCode::Char('t'));
    assert!(app.form().is_none());
    assert!(
        app.notice.as_deref().unwrap().contains("scmz merge"),
        "{:?}",
        app.notice
    );
    app.datasets_view.marked.clear();
    app.notice = None;
    app.datasets_view.sel = 0;
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char('t'));
    let form = app.form().cloned().expect("form open");
    assert!(
        form.columns
            .as_ref()
            .unwrap()
            .contains(&("bulk_labels".to_string(), true)),
        "{form:?}"
    );
    // Focus the batch key (name, likelihood, epochs, batch key) and type a column it lacks.
    for _ in 0..3 {
        key(&mut app, KeyCode::Tab);
    }
    typed(&mut app, "nosuch");
    let notice = enter_notice(&mut app);
    assert!(
        notice.contains("batch key `nosuch`: no such obs column") && notice.contains("bulk_labels"),
        "{notice}"
    );
    assert!(app.form().is_some());
    assert!(!app.take_requests().iter().any(|r| matches!(r, Request::Submit(_))));
    // A column that is there but holds numbers: refused, naming the categorical ones.
    for _ in 0.."nosuch".len() {
        key(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "n_counts");
    let notice = enter_notice(&mut app);
    assert!(
        notice.contains("batch key `n_counts`: not categorical") && notice.contains("bulk_labels, louvain"),
        "{notice}"
    );
    assert!(!app.take_requests().iter().any(|r| matches!(r, Request::Submit(_))));
}

/// The form reads epochs as `scmz train --epochs` does, and a long name shows its end.
#[test]
fn the_form_reads_epochs_as_the_cli_and_shows_the_end_of_long_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char('t'));
    let long = format!("{}-end", "abcdefghij".repeat(6));
    if let Some(Overlay::Form(f)) = &mut app.overlay {
        f.name = long.clone();
    }
    let text = render(&app, 80, 24);
    assert!(text.contains("…") && text.contains("ghij-end_"), "{text}");
    for (epochs, says) in [
        ("99999999999999999999999", "far too large"),
        ("2000000", "more than 1,000,000"),
        ("0", "at least 1"),
    ] {
        if let Some(Overlay::Form(f)) = &mut app.overlay {
            f.name = "ok-name".into();
            f.epochs = epochs.into();
        }
        app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        let notice = app.notice.clone().unwrap_or_default();
        assert!(
            notice.starts_with("epochs: ") && notice.contains(says),
            "{epochs}: {notice}"
        );
    }
}

/// A finished projection job says where it wrote.
#[test]
fn a_finished_projection_names_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    let mut spec = ProjectSpec::defaults("d.h5ad".into(), "pbmc-tiny".into());
    spec.output = Some("/tmp/projections/d.pbmc-tiny.h5ad".into());
    let mut done = Job::new("20261125-190000-9".into(), EngineRequest::Project(Box::new(spec)), None);
    done.state = JobState::Done;
    done.created = "2026-11-25T19:00:00Z".into();
    // Its report, as the engine printed it into the job's stdout log.
    let job_dir = Registry::new(dir.path()).job_dir(&done.id);
    std::fs::create_dir_all(&job_dir).unwrap();
    std::fs::write(
        job_dir.join("stdout.log"),
        "model      pbmc-tiny (765 genes)\ngenes      700 of the model's genes found (91.5 %); symbol\n\
         labels     CD14+ Monocyte (129), Dendritic (240) (mean confidence 0.81)\nwrote      /tmp/projections/d.pbmc-tiny.h5ad\n",
    )
    .unwrap();
    app.update(worker::Update::Jobs(vec![done]));
    key(&mut app, KeyCode::Char('4'));
    let s = app.sources.clone();
    serve(&mut app, &s);
    let text = render(&app, 120, 40);
    assert!(text.contains("written to /tmp/projections/d.pbmc-tiny.h5ad"), "{text}");
    assert!(
        text.contains("labels     CD14+ Monocyte (129), Dendritic (240) (mean confidence 0.81)")
            && text.contains("700 of the model's genes found"),
        "{text}"
    );
    snap("projection_done", &app);
    // The folder `p` writes into is made before the job is submitted.
    let mut spec = ProjectSpec::defaults("d.h5ad".into(), "m".into());
    let out = dir.path().join("data/projections/d.m.h5ad");
    spec.output = Some(out.clone());
    let req = scmz::jobs::Submission::local(EngineRequest::Project(Box::new(spec)));
    worker::make_output_folder(&req).unwrap();
    assert!(out.parent().unwrap().is_dir());
}

#[test]
fn the_training_form_submits_a_job_and_cancel_asks_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char('t'));
    // The same snapshot on a machine with a GPU.
    if let Some(Overlay::Form(f)) = &mut app.overlay {
        f.gpu = false;
    }
    let form = app.form().cloned().expect("form open");
    assert_eq!(form.label_key.as_str(), "bulk_labels");
    // Name field: replace it; likelihood: next choice; epochs: 3.
    for _ in 0..form.name.len() {
        key(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "mine");
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Char('3'));
    insta::assert_snapshot!("train_form_80x24", render(&app, 80, 24));
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let sub = submission(&mut app);
    let EngineRequest::Train(spec) = &sub.request else {
        panic!("not a training: {sub:?}")
    };
    assert!(spec.data[0].ends_with("pbmc68k_counts.h5ad"), "{spec:?}");
    assert_eq!((spec.name.as_str(), spec.epochs), ("mine", Some(3)));
    assert_eq!(spec.likelihood, scmz::spec::Likelihood::Zinb);
    assert_eq!(spec.label_key.as_deref(), Some("bulk_labels"));
    assert_eq!(app.screen, Screen::Jobs);
    // Until the list shows the new job, `c` would act on the row selected before: it waits.
    key(&mut app, KeyCode::Char('c'));
    assert!(app.overlay.is_none() && app.notice.as_deref().unwrap().contains("on its way"));
    let s = app.sources.clone();
    app.update(worker::jobs(&s));
    // Cancel asks first; `n` keeps the job.
    key(&mut app, KeyCode::Char('c'));
    assert!(matches!(app.overlay, Some(Overlay::ConfirmCancel(_))));
    key(&mut app, KeyCode::Char('n'));
    assert!(!matches!(app.overlay, Some(Overlay::ConfirmCancel(_))) && app.take_requests().is_empty());
    key(&mut app, KeyCode::Char('c'));
    app.on_key(KeyEvent::new(KeyCode::Char('y'), KeyModifiers::NONE));
    assert!(matches!(app.take_requests().as_slice(), [Request::Cancel(id)] if id == "20261125-182040-3"));
}

#[test]
fn the_form_offers_cuda_only_where_there_is_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char('t'));
    let devices = |app: &mut App, gpu: bool| -> Vec<String> {
        if let Some(Overlay::Form(f)) = &mut app.overlay {
            f.gpu = gpu;
            f.focus = super::screens::overlay::Field::Device;
        }
        (0..3)
            .map(|_| {
                key(app, KeyCode::Right);
                app.form().unwrap().device.clone()
            })
            .collect()
    };
    assert_eq!(devices(&mut app, false), ["cpu", "auto", "cpu"]);
    assert!(render(&app, 80, 24).contains("no GPU here"));
    assert_eq!(devices(&mut app, true), ["cuda", "auto", "cpu"]);
    assert!(!render(&app, 80, 24).contains("no GPU here"));
}

#[test]
fn normalised_data_is_not_offered_for_training_and_no_color_drops_colours() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_reduced.h5ad");
    key(&mut app, KeyCode::Char('t'));
    assert!(app.form().is_none());
    assert!(app.notice.as_deref().unwrap().contains("raw counts"));
    let t = Theme::bundled("high-contrast").without_color();
    assert!(t.monochrome && t.accent == ratatui::style::Color::Reset);
    // Without colour the latent's categories are letters, in the plot and its legend.
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('4'));
    app.theme = t;
    let text = render(&app, 120, 40);
    let legend = text
        .lines()
        .find(|l| l.contains("aCD4+"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(legend.contains(" bCD4+") && legend.contains(" cCD4+"), "{legend}");
    let plot: String = text
        .lines()
        .skip_while(|l| !l.contains("Latent epoch"))
        .take(10)
        .collect();
    let letters: std::collections::HashSet<char> = plot
        .split('│')
        .filter(|part| part.chars().all(|c| c == ' ' || c.is_ascii_alphabetic()))
        .flat_map(|part| part.chars().filter(char::is_ascii_alphabetic))
        .collect();
    assert!(letters.len() >= 3, "{letters:?} in {plot}");
}

#[test]
fn runs_started_in_a_terminal_are_monitored_too() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = dir.path().join("zoo");
    std::fs::create_dir_all(zoo.join(".runs/fg")).unwrap();
    std::fs::copy(
        data().join("events/pbmc-running.jsonl"),
        zoo.join(".runs/fg/events.jsonl"),
    )
    .unwrap();
    let sources = Sources {
        data_dirs: vec![data()],
        zoo,
        jobs: dir.path().join("jobs"),
        cache: None,
        scan_worker: None,
    };
    let mut app = App::new(sources.clone(), Theme::bundled("dark"), false);
    app.update(worker::jobs(&sources));
    key(&mut app, KeyCode::Char('4'));
    let text = render(&app, 120, 40);
    assert!(text.contains("run:fg") && text.contains("terminal"), "{text}");
    assert!(text.contains("epoch 25/40"), "{text}");
    key(&mut app, KeyCode::Char('c'));
    assert!(
        !matches!(app.overlay, Some(Overlay::ConfirmCancel(_))) && app.notice.as_deref().unwrap().contains("Ctrl-C")
    );
}

#[test]
fn the_demo_starts_a_training_job_only_when_its_zoo_is_empty_and_none_is_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources {
        data_dirs: vec![data()],
        zoo: dir.path().join("zoo"),
        jobs: dir.path().join("jobs"),
        cache: None,
        scan_worker: None,
    };
    let demo = |jobs: Vec<Job>| {
        let mut app = App::new(sources.clone(), Theme::bundled("dark"), false);
        app.demo = Some(data().join("pbmc68k_counts.h5ad"));
        app.update(worker::models(&sources));
        app.update(worker::Update::Jobs(jobs));
        app
    };
    let mut app = demo(Vec::new());
    let sub = submission(&mut app);
    let EngineRequest::Train(spec) = &sub.request else {
        panic!("not a training: {sub:?}")
    };
    assert_eq!(
        (spec.name.as_str(), spec.epochs, spec.restart),
        ("pbmc-demo", Some(300), true)
    );
    assert_eq!(app.screen, Screen::Jobs);
    assert!(app.notice.as_deref().unwrap().contains("no model yet"));
    // A demo job still running from an earlier visit: nothing new starts.
    let running = job("20261125-190000-1", "train", "pbmc-demo", JobState::Running, None);
    let mut app = demo(vec![running]);
    assert!(!app.take_requests().iter().any(|r| matches!(r, Request::Submit(_))));
}

/// `n` copies of a small dataset in `dir`.
fn copies(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("copy{i:03}.h5ad"));
            std::fs::copy(data().join("pbmc68k_counts.h5ad"), &p).unwrap();
            p
        })
        .collect()
}

/// The real worker threads over the datasets in `dir`: where requests go, and its answers.
fn worker_over(
    dir: &Path,
) -> (
    std::sync::mpsc::Sender<Request>,
    std::sync::mpsc::Receiver<worker::Update>,
) {
    let sources = Sources {
        data_dirs: vec![dir.to_path_buf()],
        zoo: dir.join("zoo"),
        jobs: dir.join("jobs"),
        cache: None,
        scan_worker: None,
    };
    let (req_tx, req_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        worker::run(sources, PathBuf::from("scmz-engine"), req_rx, move |u| {
            let _ = tx.send(u);
        })
    });
    (req_tx, rx)
}

/// The monitor is never held up by slow work: with the pairwise matrix computing over 60
/// datasets, a refresh of the jobs (and the followed log) is answered first.
#[test]
fn job_polling_is_answered_while_the_matrix_computes() {
    let dir = tempfile::tempdir().unwrap();
    let paths = copies(dir.path(), 60);
    let (req_tx, rx) = worker_over(dir.path());
    req_tx.send(Request::Matrix(paths)).unwrap();
    req_tx.send(Request::Refresh { all: false }).unwrap();
    let mut order = Vec::new();
    while order.len() < 2 {
        match rx.recv_timeout(std::time::Duration::from_secs(120)).unwrap() {
            worker::Update::Jobs(_) => order.push("jobs"),
            worker::Update::Matrix(m) => {
                assert_eq!(m.unwrap().len(), 60 * 60, "every pair of 60 datasets");
                order.push("matrix");
            }
            _ => {}
        }
    }
    assert_eq!(order, ["jobs", "matrix"]);
}

/// While the pair's prediction is awaited a spinner turns (a frame a tick) before "predicting...",
/// and the app asks for redraws on ticks only while something is awaited.
#[test]
fn a_spinner_turns_while_the_prediction_is_awaited() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    key(&mut app, KeyCode::Char('3'));
    assert!(app.awaiting_answer());
    let first = render(&app, 120, 40);
    assert!(first.contains("⠋ predicting..."), "{first}");
    app.ticks += 1;
    assert!(render(&app, 120, 40).contains("⠙ predicting..."));
    app.ascii = true;
    assert!(render(&app, 120, 40).contains("/ predicting..."));
    let pair = app.overlap_pair().unwrap();
    app.update(worker::Update::Predicted {
        dataset: pair.0,
        model: pair.1,
        result: Ok("0.2 of the latent spread".into()),
    });
    assert!(!app.awaiting_answer() && !render(&app, 120, 40).contains("predicting..."));
}

#[test]
fn the_prediction_says_its_units() {
    let p = serde_json::json!({"predicted_displacement": 1.1224, "predicted_agreement": 0.136});
    assert_eq!(
        worker::prediction_text(&p),
        "latent displacement 1.122 of the latent spread; 14% of labels as with all genes"
    );
    let none = serde_json::json!({"predicted_displacement": null});
    assert!(worker::prediction_text(&none).contains("no reference counts"));
}

/// Rows that come and go on a refresh do not move the selections off what the user picked
/// (p or t would act on another dataset or model); a changed file makes the matrix read again.
#[test]
fn selections_stay_on_their_items_and_the_matrix_follows_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    let mut more = app.datasets.clone();
    more.insert(
        0,
        scmz::data::catalog::Summary {
            path: data().join("0_new.h5ad"),
            ..more[0].clone()
        },
    );
    app.update(worker::Update::Datasets(more.clone()));
    assert!(app.selected_dataset().unwrap().path.ends_with("pbmc68k_counts.h5ad"));
    // Overlap: the model picked stays picked when a new one sorts before it.
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('l'));
    key(&mut app, KeyCode::Down);
    let picked = app.overlap_model().unwrap().manifest.name.clone();
    let mut models = app.models.clone();
    let mut first = models[0].clone();
    first.manifest.name = "a-new-model".into();
    models.insert(0, first);
    app.update(worker::Update::Models(models, Vec::new()));
    assert_eq!(app.overlap_model().unwrap().manifest.name, picked);
    // Jobs: a new job above the selected one.
    key(&mut app, KeyCode::Char('4'));
    key(&mut app, KeyCode::Down);
    let job_id = app.selected_job().unwrap().id.clone();
    let mut jobs = app.jobs.clone();
    jobs.push(job(
        "20261125-200000-9",
        "train",
        "later",
        scmz::jobs::JobState::Queued,
        None,
    ));
    app.update(worker::Update::Jobs(jobs));
    assert_eq!(app.selected_job().unwrap().id, job_id);
    // The matrix: computed, then a file changes: asked for again while shown.
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('m'));
    let s = app.sources.clone();
    serve(&mut app, &s);
    assert!(app.overlap_view.matrix.is_some());
    app.update(worker::Update::Datasets(more.clone()));
    assert!(app.overlap_view.matrix.is_some(), "the same files: kept");
    more[1].n_cells += 1;
    app.update(worker::Update::Datasets(more));
    assert!(app.overlap_view.matrix.is_none());
    assert!(app.take_requests().iter().any(|r| matches!(r, Request::Matrix(_))));
}

/// Marks a filter hides are counted in the title (t trains on them); a filter that matches
/// nothing says so (not "no datasets here"); --ascii bars are ASCII.
#[test]
fn hidden_marks_no_matches_and_ascii_bars_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "mouse_10k_subset.h5ad");
    key(&mut app, KeyCode::Char(' '));
    assert!(render(&app, 120, 40).contains("1 marked  sorted"));
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "pbmc");
    key(&mut app, KeyCode::Enter);
    assert!(render(&app, 120, 40).contains("1 marked (1 hidden by the filter)"));
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "zzz");
    let text = render(&app, 120, 40);
    assert!(
        text.contains("no dataset matches \"pbmczzz\"") && !text.contains("no datasets here"),
        "{text}"
    );
    app.ascii = true;
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('3'));
    let s = app.sources.clone();
    serve(&mut app, &s);
    let text = render(&app, 120, 40);
    assert!(
        !text.contains('█') && !text.contains('░') && text.contains("#"),
        "{text}"
    );
}

/// Obs columns that do not fit the Details panel are counted, never dropped without a word.
#[test]
fn details_count_the_columns_they_leave_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    let s = app.sources.clone();
    serve(&mut app, &s);
    let small = render(&app, 80, 24);
    assert!(
        small.contains("obs columns (4)") && small.contains("more (scmz inspect shows all)"),
        "{small}"
    );
    let big = render(&app, 120, 40);
    assert!(!big.contains("more (scmz inspect") && big.contains("phase"), "{big}");
}

/// An empty folder and zoo: the matrix, p and t say why there is nothing to do.
#[test]
fn nothing_to_do_is_said() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let sources = Sources {
        data_dirs: vec![dir.path().join("empty")],
        zoo: dir.path().join("zoo"),
        jobs: dir.path().join("jobs"),
        cache: None,
        scan_worker: None,
    };
    let mut app = App::new(sources.clone(), Theme::bundled("dark"), false);
    app.update(worker::datasets(&sources));
    app.update(worker::models(&sources));
    app.update(worker::jobs(&sources));
    key(&mut app, KeyCode::Char('t'));
    assert!(app.notice.as_deref().unwrap().contains("no dataset selected"));
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('p'));
    assert!(app.notice.as_deref().unwrap().contains("no dataset to project"));
    key(&mut app, KeyCode::Char('m'));
    serve(&mut app, &sources);
    assert!(render(&app, 80, 24).contains("No readable dataset to compare"));
}

/// From the second trial: a changed file drops the pair's report (it showed the old file's
/// numbers after r); the report says zero-filled for a model without a mask; a long epochs value
/// is whole; an unreadable zoo folder is counted; r's notice goes when the answer comes; the
/// filter leads the Datasets title.
#[test]
fn second_trial_findings_stay_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char('o'));
    let s = app.sources.clone();
    serve(&mut app, &s);
    assert!(app.overlap_view.report.is_some());
    let text = render(&app, 120, 40);
    let masked = app.overlap_model().unwrap().manifest.architecture.masked_input;
    if !app
        .overlap_view
        .report
        .as_ref()
        .unwrap()
        .2
        .as_ref()
        .unwrap()
        .missing
        .is_empty()
    {
        assert_eq!(text.contains("zero-filled when projecting"), !masked, "{text}");
    }
    key(&mut app, KeyCode::Char('r'));
    assert!(app.notice.as_deref().unwrap().starts_with("reading the datasets"));
    let mut changed = app.datasets.clone();
    let i = changed
        .iter()
        .position(|d| d.path.ends_with("pbmc68k_counts.h5ad"))
        .unwrap();
    changed[i].n_genes += 1;
    app.update(worker::Update::Datasets(changed));
    assert!(app.overlap_view.report.is_none(), "the old file's report is dropped");
    assert!(app.notice.is_none(), "r's notice goes with its answer");
    assert!(app
        .take_requests()
        .iter()
        .any(|r| matches!(r, Request::Overlap { dataset, .. } if dataset.ends_with("pbmc68k_counts.h5ad"))));
    // Models: 341 of 100,000 epochs whole; an unreadable folder counted.
    let mut models = app.models.clone();
    models[0].manifest.training.epochs_run = 341;
    models[0].manifest.training.max_epochs = 100_000;
    app.update(worker::Update::Models(
        models,
        vec!["zz-bad/manifest.json: not valid JSON".into()],
    ));
    key(&mut app, KeyCode::Char('2'));
    for (w, h) in [(60, 20), (80, 24), (120, 40)] {
        let text = render(&app, w, h);
        assert!(text.contains("341/100000"), "{w}x{h}: {text}");
    }
    assert!(render(&app, 120, 40).contains("1 folder unreadable"));
    key(&mut app, KeyCode::Char('1'));
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "pbmc");
    assert!(render(&app, 80, 24).contains("Datasets matching \"pbmc\": 2 of"));
}

/// From the third trial: p before the pair's overlap is known waits (it started a job without
/// the low-overlap question); normalised data is not projected; Esc leaves the matrix; the log
/// pane shows a job's output (a projection's report) after its errors.
#[test]
fn third_trial_findings_stay_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "mouse_10k_subset.h5ad");
    key(&mut app, KeyCode::Char('o'));
    app.take_requests();
    app.overlap_view.report = None;
    key(&mut app, KeyCode::Char('p'));
    assert!(app.notice.as_deref().unwrap().contains("still being computed"));
    assert!(app.overlay.is_none() && !app.take_requests().iter().any(|r| matches!(r, Request::Submit(_))));
    key(&mut app, KeyCode::Char('1'));
    app.datasets_view.sel = 0;
    select_dataset(&mut app, "pbmc68k_reduced.h5ad");
    key(&mut app, KeyCode::Char('o'));
    let s = app.sources.clone();
    serve(&mut app, &s);
    key(&mut app, KeyCode::Char('p'));
    assert!(app.notice.as_deref().unwrap().contains("normalised values"));
    assert!(!app.take_requests().iter().any(|r| matches!(r, Request::Submit(_))));
    key(&mut app, KeyCode::Char('m'));
    assert!(app.overlap_view.matrix_shown);
    key(&mut app, KeyCode::Esc);
    assert!(!app.overlap_view.matrix_shown);
    // The log pane: stderr, then the job's output.
    let reg = Registry::new(dir.path());
    let id = "20261125-180000-1";
    std::fs::write(reg.job_dir(id).join("stderr.log"), "progress\n").unwrap();
    std::fs::write(reg.job_dir(id).join("stdout.log"), "labels     B (3), T (2)\n").unwrap();
    let w = worker::job_log(&app.sources, id);
    let worker::Update::JobLog { lines, .. } = w else {
        panic!("{w:?}")
    };
    assert_eq!(lines, ["progress", "-- output --", "labels     B (3), T (2)"]);
}

/// A matrix under way stops when another is asked for (the user left it, or came back to it):
/// the first answer is the newer matrix's, and the one left is never sent.
#[test]
fn a_matrix_under_way_gives_way_to_a_newer_request() {
    let dir = tempfile::tempdir().unwrap();
    let paths = copies(dir.path(), 120);
    assert!(worker::matrix_unless(&paths, || true).is_none());
    let (req_tx, rx) = worker_over(dir.path());
    req_tx.send(Request::Matrix(paths.clone())).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    req_tx.send(Request::Matrix(paths[..2].to_vec())).unwrap();
    loop {
        if let worker::Update::Matrix(m) = rx.recv_timeout(std::time::Duration::from_secs(120)).unwrap() {
            assert_eq!(m.unwrap().len(), 2 * 2, "the newer matrix first");
            break;
        }
    }
    assert!(
        !rx.try_iter().any(|u| matches!(u, worker::Update::Matrix(_))),
        "the older matrix is not sent"
    );
}

/// Enter on a job opens its log (the engine's stderr), at its end and followed; it scrolls, and
/// Esc closes it and stops following.
#[test]
fn the_log_pane_shows_a_jobs_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    key(&mut app, KeyCode::Char('4'));
    let id = app.selected_job().unwrap().id.clone();
    let lines: Vec<String> = (1..=40).map(|i| format!("epoch {i}/40 line")).collect();
    let long = format!(
        "error: {}/x.h5ad: obs has no column `nosuch`",
        "/very/long/folder".repeat(5)
    );
    let log = format!("{}\n{long}\n", lines.join("\n"));
    std::fs::write(dir.path().join(&id).join("stderr.log"), log).unwrap();
    key(&mut app, KeyCode::Enter);
    let text = render(&app, 80, 24);
    assert!(text.contains(&format!("Log of job {id}")), "{text}");
    // The long line wraps: its end is on screen.
    assert!(
        text.contains("x.h5ad: obs has no column `nosuch`") && text.contains("following"),
        "{text}"
    );
    assert!(!text.contains("epoch 1/40 line"), "{text}");
    snap("log_pane", &app);
    for _ in 0..30 {
        key(&mut app, KeyCode::Up);
    }
    let text = render(&app, 80, 24);
    assert!(
        text.contains("epoch 1/40 line") && text.contains("30 lines up"),
        "{text}"
    );
    app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert!(app.log_view().is_none());
    assert!(app.take_requests().iter().any(|r| matches!(r, Request::JobLog(None))));
    // A run started in a terminal has no log here, and says so.
    let w = worker::job_log(&app.sources, "run:x");
    assert!(matches!(w, worker::Update::JobLog { lines, .. } if lines[0].contains("terminal")));
}

/// How many datasets the matrix the app holds compares.
fn matrix_side(app: &App) -> usize {
    app.overlap_view
        .matrix
        .as_ref()
        .unwrap()
        .as_ref()
        .unwrap()
        .len()
        .isqrt()
}

/// More datasets than fit: the pairwise matrix shows whole numbers only, says which rows and
/// columns it shows, and the arrows scroll to the rest and stop at the last.
#[test]
fn the_overlap_matrix_scrolls_when_it_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('m'));
    let n = matrix_side(&app);
    assert!(n > 7, "the test needs more datasets than fit in 60 columns");
    let first = render(&app, 60, 12);
    assert!(first.contains(&format!("columns 1-7 of {n}")), "{first}");
    // Every number is whole: 5 characters, one decimal.
    for line in first
        .lines()
        .skip(2)
        .filter(|l| l.starts_with('│') && !l.starts_with("│ "))
    {
        // After the row's number and name.
        let cells: Vec<&str> = line.trim_matches('│').split_whitespace().skip(2).collect();
        assert_eq!(cells.len(), 7, "{line}");
        assert!(
            cells
                .iter()
                .all(|c| c.parse::<f64>().is_ok() && c.contains('.') && c.len() >= 3),
            "{line}"
        );
    }
    for _ in 0..2 * n {
        key(&mut app, KeyCode::Right);
        key(&mut app, KeyCode::Down);
    }
    let last = render(&app, 60, 12);
    assert!(
        last.contains(&format!("Rows {}-{n}", n - 6)) && last.contains(&format!("columns {}-{n} of {n}", n - 6)),
        "{last}"
    );
    assert_ne!(first, last);
    // Left goes back at once from the last column, not after the presses past it.
    key(&mut app, KeyCode::Left);
    assert!(render(&app, 60, 12).contains(&format!("columns {}-{} of {n}", n - 7, n - 1)));
    key(&mut app, KeyCode::Char('g'));
    assert_eq!(render(&app, 60, 12), first);
    // G: the last rows and columns at once.
    key(&mut app, KeyCode::Char('G'));
    assert_eq!(render(&app, 60, 12), last);
    key(&mut app, KeyCode::Up);
    assert!(render(&app, 60, 12).contains(&format!("Rows {}-{}", n - 7, n - 1)));
    // Row labels keep the ends of the names, which tell copies of a file apart.
    assert!(first.contains(" 1 10x…19_chr21"), "{first}");
    // The arrows scrolled the matrix, not the lists behind it.
    assert_eq!((app.overlap_view.focus, app.overlap_view.dataset), (Focus::Datasets, 0));
}

/// A file the catalog could not read is not in the matrix, and the matrix says so by name.
#[test]
fn the_matrix_names_the_files_it_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    let all = app.datasets.len();
    app.datasets[1].error = Some("not an HDF5 file".into());
    let gone = app.display_path(&app.datasets[1].path);
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('m'));
    let n = matrix_side(&app);
    assert_eq!(n, all - 1);
    let text = render(&app, 120, 40);
    assert!(text.contains("1 unreadable left out: "), "{text}");
    assert!(text.contains(&gone[..12]), "{gone} in {text}");
}

/// More models than the table shows: its title says which rows are in view, and they are the
/// rows drawn (the selection among them).
#[test]
fn a_table_says_which_rows_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    let one = app.models[0].clone();
    app.models = (1..=12)
        .map(|i| {
            let mut m = one.clone();
            m.manifest.name = format!("model-{i:02}");
            m
        })
        .collect();
    key(&mut app, KeyCode::Char('2'));
    for _ in 0..8 {
        key(&mut app, KeyCode::Down);
    }
    let text = render(&app, 80, 24);
    let title = text.lines().find(|l| l.contains("Zoo ")).unwrap();
    let (a, b) = title
        .split("rows ")
        .nth(1)
        .and_then(|r| r.split(" of 12").next())
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
        .unwrap_or_else(|| panic!("no rows in the title: {title}"));
    assert!(a <= 9 && (9..12).contains(&b), "{title}");
    for i in 1..=12 {
        assert_eq!(
            text.contains(&format!("model-{i:02} ")),
            (a..=b).contains(&i),
            "model-{i:02}: {text}"
        );
    }
    // Few enough to fit: no word of rows.
    app.models.truncate(2);
    app.models_view.sel = 0;
    assert!(!render(&app, 80, 24).contains("rows "));
}

/// The start of a part of run `run` of model `m`, by job `job`.
fn run_start(run: &str, job: &str, first_epoch: usize, max_epochs: usize) -> Event {
    Event::Start {
        name: "m".into(),
        config: serde_json::Value::Null,
        device: "cpu".into(),
        data: Vec::new(),
        n_train: 9,
        n_val: 1,
        first_epoch,
        max_epochs,
        run: Some(run.into()),
        job: Some(job.into()),
    }
}

fn epoch_done(epoch: usize) -> Event {
    let terms = scmz::events::LossTerms {
        recon: 700.0,
        kl: 20.0,
        total: 720.0,
        elbo: 720.0,
    };
    Event::Epoch {
        epoch,
        train: terms,
        val: terms,
        kl_weight: 1.0,
        kl_per_dim: vec![0.5; 10],
        cells_per_s: 1000.0,
        elapsed_s: epoch as f64,
        eta_s: 1.0,
    }
}

/// An app on the Jobs screen over a registry in `dir` holding `jobs`, with the last epoch of the
/// selected job's run as its monitor has it.
fn jobs_app(dir: &Path, jobs: &[&Job]) -> App {
    let reg = Registry::new(dir.join("jobs"));
    for j in jobs {
        std::fs::create_dir_all(reg.job_dir(&j.id)).unwrap();
        reg.save(j).unwrap();
    }
    let sources = Sources {
        data_dirs: Vec::new(),
        zoo: dir.join("zoo"),
        jobs: dir.join("jobs"),
        cache: None,
        scan_worker: None,
    };
    let mut app = App::new(sources.clone(), Theme::bundled("dark"), false);
    app.update(worker::jobs(&sources));
    key(&mut app, KeyCode::Char('4'));
    app
}

/// (selected job, its epochs shown, the last of them).
fn shown_epochs(app: &App) -> (String, usize, Option<usize>) {
    let each = |r: &scmz::events::Record| match r.event {
        Event::Epoch { epoch, .. } => Some(epoch),
        _ => None,
    };
    let seen: Vec<usize> = app.jobs_view.run.records.iter().filter_map(each).collect();
    (app.selected_job().unwrap().id.clone(), seen.len(), seen.last().copied())
}

/// Two runs of one name share a log (the second restarted the first after it failed): each
/// job's monitor shows its own run, never the other's curves.
#[test]
fn a_job_shows_only_its_own_run_when_a_name_is_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let mut w = scmz::events::EventLog::append_to(&log).unwrap();
    for (run, job, epochs) in [("r1", "20261125-180000-1", 200), ("r2", "20261125-190000-2", 4)] {
        w.write(run_start(run, job, 0, 400)).unwrap();
        for e in 0..epochs {
            w.write(epoch_done(e)).unwrap();
        }
    }
    let failed = job("20261125-180000-1", "train", "m", JobState::Failed, Some(log.clone()));
    let running = job("20261125-190000-2", "train", "m", JobState::Running, Some(log));
    let mut app = jobs_app(dir.path(), &[&failed, &running]);
    assert_eq!(shown_epochs(&app), ("20261125-190000-2".to_string(), 4, Some(3)));
    key(&mut app, KeyCode::Down);
    assert_eq!(shown_epochs(&app), ("20261125-180000-1".to_string(), 200, Some(199)));
    key(&mut app, KeyCode::Up);
    assert_eq!(shown_epochs(&app), ("20261125-190000-2".to_string(), 4, Some(3)));
}

/// `p` on a pair whose overlap is below the projection's minimum asks first and projects with
/// `--force` only on `y`; a pair above it is projected at once.
#[test]
fn projecting_a_low_overlap_pair_asks_before_forcing() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    let forced = |app: &mut App| {
        let sub = submission(app);
        let EngineRequest::Project(spec) = &sub.request else {
            panic!("not a projection: {sub:?}")
        };
        spec.force
    };
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char('o'));
    let p = KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE);
    app.on_key(p);
    assert!(!matches!(app.overlay, Some(Overlay::ConfirmForce { .. })));
    assert!(!forced(&mut app), "a good overlap is projected as is");

    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "mouse_10k_subset.h5ad");
    key(&mut app, KeyCode::Char('o'));
    app.on_key(p);
    let Some(Overlay::ConfirmForce { found, least }) = app.overlay.clone() else {
        panic!("asks first");
    };
    assert!(found < least, "{found} {least}");
    assert!(app.take_requests().iter().all(|r| !matches!(r, Request::Submit(_))));
    let text = render(&app, 80, 24);
    assert!(text.contains("Low overlap") && text.contains("(--force)?"), "{text}");
    insta::assert_snapshot!("overlap_low_force_80x24", text);
    key(&mut app, KeyCode::Char('n'));
    assert!(!matches!(app.overlay, Some(Overlay::ConfirmForce { .. })) && app.take_requests().is_empty());
    app.on_key(p);
    app.on_key(KeyEvent::new(KeyCode::Char('y'), KeyModifiers::NONE));
    assert!(forced(&mut app), "y projects with --force");
}

/// `p` on a pair projected before asks before replacing the earlier output, and a low-overlap
/// confirmation given first carries through.
#[test]
fn projecting_a_pair_again_asks_before_replacing() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    app.projections = dir.path().join("projections");
    let p = KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE);
    let y = KeyEvent::new(KeyCode::Char('y'), KeyModifiers::NONE);
    select_dataset(&mut app, "mouse_10k_subset.h5ad");
    key(&mut app, KeyCode::Char('o'));
    let model = app.overlap_model().unwrap().manifest.name.clone();
    let out = app.projections.join(format!("mouse_10k_subset.{model}.h5ad"));
    std::fs::create_dir_all(&app.projections).unwrap();
    std::fs::write(&out, b"earlier").unwrap();
    app.on_key(p);
    app.on_key(y);
    // Low overlap confirmed; now the earlier output.
    let Some(Overlay::ConfirmReplace { output, force: true }) = app.overlay.clone() else {
        panic!("asks before replacing: {:?}", app.overlay);
    };
    assert_eq!(output, out);
    assert!(app.take_requests().is_empty());
    let text = render(&app, 80, 24);
    assert!(
        text.contains("projected before") && text.contains("Replace it?"),
        "{text}"
    );
    key(&mut app, KeyCode::Char('n'));
    assert!(app.overlay.is_none() && app.take_requests().is_empty());
    assert!(app.notice.as_deref().unwrap().contains("kept"));
    app.on_key(p);
    app.on_key(y);
    app.on_key(y);
    let sub = submission(&mut app);
    let EngineRequest::Project(spec) = &sub.request else {
        panic!("not a projection: {sub:?}")
    };
    assert!(spec.force && spec.overwrite && spec.output.as_ref() == Some(&out));
}

/// A cancelled job resumed by another: the first shows its run up to its end, the second the
/// whole run, and no end while it trains (the part before it ended cancelled).
#[test]
fn a_resumed_run_shows_each_job_its_own_part() {
    use scmz::events::Record;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let at = |s: u32| format!("2026-12-06T10:{:02}:{:02}Z", s / 60, s % 60);
    let mut events = vec![
        (0, run_start("r1", "a", 0, 8)),
        (10, epoch_done(0)),
        (20, epoch_done(1)),
    ];
    events.push((
        25,
        Event::End {
            status: "cancelled".into(),
            best_epoch: Some(1),
            best_val_elbo: Some(720.0),
            model: None,
        },
    ));
    events.push((60, run_start("r1", "b", 2, 8)));
    events.extend((2..5).map(|e| (60 + 10 * e as u32, epoch_done(e))));
    let lines: Vec<String> = events
        .into_iter()
        .map(|(s, event)| serde_json::to_string(&Record { t: at(s), event }).unwrap())
        .collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let mut cancelled = job("a", "train", "m", JobState::Failed, Some(log.clone()));
    cancelled.created = at(0);
    cancelled.ended = Some(at(30));
    let mut resumed = job("b", "train", "m", JobState::Running, Some(log));
    resumed.created = at(50);
    let mut app = jobs_app(dir.path(), &[&cancelled, &resumed]);
    let ended = |app: &App| render(app, 120, 40).contains("ended cancelled");
    assert_eq!(
        (shown_epochs(&app), ended(&app)),
        (("b".to_string(), 5, Some(4)), false)
    );
    key(&mut app, KeyCode::Down);
    assert_eq!((shown_epochs(&app), ended(&app)), (("a".to_string(), 2, Some(1)), true));
}

/// Key to frame on `TestBackend`: the key handled (the worker's answers are not waited for: the
/// screen shows what it holds, or "loading") and the frame drawn, at 80x24 and 120x40, for every
/// screen switch and the help; the median of 9 rounds under 50 ms.
#[test]
fn screen_switches_reach_the_frame_within_50_ms() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    let mut terms = [(80u16, 24u16), (120, 40)].map(|(w, h)| Terminal::new(TestBackend::new(w, h)).unwrap());
    let keys = ['2', '3', '4', '1', '?'];
    for k in keys {
        let mut took = Vec::new();
        for _ in 0..9 {
            let t0 = std::time::Instant::now();
            app.on_key(KeyEvent::new(KeyCode::Char(k), KeyModifiers::NONE));
            for t in &mut terms {
                t.draw(|f| super::ui::draw(f, &app)).unwrap();
            }
            took.push(t0.elapsed());
            // The requests the key made are answered before the next round, as the worker would.
            let s = app.sources.clone();
            serve(&mut app, &s);
            // Back to where the key is a switch again (any key closes the help).
            let back = match k {
                '?' => KeyCode::Esc,
                '1' => KeyCode::Char('2'),
                _ => KeyCode::Char('1'),
            };
            app.on_key(KeyEvent::new(back, KeyModifiers::NONE));
        }
        took.sort();
        assert!(
            took[4] < std::time::Duration::from_millis(50),
            "key `{k}` to frame: {took:?}"
        );
    }
}

/// `R` on an ended job asks the worker to resume it; on a job that is done or still running it
/// says there is nothing to resume.
#[test]
fn r_resumes_an_ended_job() {
    let dir = tempfile::tempdir().unwrap();
    let failed = job("20261125-190000-1", "train", "m", JobState::Failed, None);
    let done = job("20261125-180000-1", "train", "d", JobState::Done, None);
    let mut app = jobs_app(dir.path(), &[&done, &failed]);
    assert_eq!(app.selected_job().unwrap().id, failed.id);
    app.take_requests();
    app.on_key(KeyEvent::new(KeyCode::Char('R'), KeyModifiers::NONE));
    assert!(matches!(app.take_requests().as_slice(), [Request::Resume(id)] if *id == failed.id));
    assert!(app.notice.as_deref().unwrap().contains("resuming"));
    key(&mut app, KeyCode::Char('j'));
    app.take_requests();
    app.on_key(KeyEvent::new(KeyCode::Char('R'), KeyModifiers::NONE));
    assert!(app.take_requests().is_empty());
    assert!(app.notice.as_deref().unwrap().contains("nothing to resume"));
}

/// From the trial: the form refuses a name the zoo has and 0 epochs (the job failed on them);
/// `p` twice starts one projection; after a refresh that drops the dataset in view, the old
/// pair's overlap is not shown for the pair selected now, which is asked for.
#[test]
fn the_form_the_projection_and_a_refresh_refuse_what_would_mislead() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    select_dataset(&mut app, "pbmc68k_counts.h5ad");
    key(&mut app, KeyCode::Char('t'));
    let name_len = app.form().unwrap().name.len();
    for _ in 0..name_len {
        key(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "pbmc-tiny");
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(app
        .notice
        .as_deref()
        .unwrap()
        .contains("has a model `pbmc-tiny` already"));
    assert!(app.form().is_some() && !app.take_requests().iter().any(|r| matches!(r, Request::Submit(_))));
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Tab);
    for _ in 0..2 {
        key(&mut app, KeyCode::Backspace);
    }
    key(&mut app, KeyCode::Char('0'));
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(
        app.notice
            .as_deref()
            .unwrap()
            .contains("epochs: `0` must be a whole number of at least 1"),
        "{:?}",
        app.notice
    );
    key(&mut app, KeyCode::Esc);
    // p twice: one job.
    key(&mut app, KeyCode::Char('o'));
    app.take_requests();
    app.on_key(KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE));
    app.on_key(KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE));
    let submits = app
        .take_requests()
        .iter()
        .filter(|r| matches!(r, Request::Submit(_)))
        .count();
    assert_eq!(submits, 1);
    assert!(app.notice.as_deref().unwrap().contains("under way already"));
    // The dataset in view leaves the catalog: its overlap is not shown for the next one.
    let gone = app.overlap_dataset().unwrap().path.clone();
    assert!(app.overlap_view.report.is_some());
    let rest: Vec<_> = app.datasets.iter().filter(|d| d.path != gone).cloned().collect();
    app.update(worker::Update::Datasets(rest));
    let pair = app.overlap_pair();
    assert!(app.overlap_view.shown(&app.overlap_view.report, pair.clone()).is_none());
    let (d, m) = pair.unwrap();
    assert!(app
        .take_requests()
        .iter()
        .any(|r| matches!(r, Request::Overlap { dataset, model } if *dataset == d && *model == m)));
}

/// A file that cannot be read is not offered for training or projection, and says why (it was
/// called "normalised values").
#[test]
fn an_unreadable_file_is_not_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("broken.h5ad"), b"not hdf5 at all").unwrap();
    let sources = Sources {
        data_dirs: vec![data_dir],
        zoo: dir.path().join("zoo"),
        jobs: dir.path().join("jobs"),
        cache: None,
        scan_worker: None,
    };
    let mut app = App::new(sources.clone(), Theme::bundled("dark"), false);
    app.update(worker::datasets(&sources));
    assert!(app.selected_dataset().unwrap().error.is_some());
    key(&mut app, KeyCode::Char('t'));
    assert!(app.form().is_none());
    let notice = app.notice.clone().unwrap();
    assert!(
        notice.contains("cannot be read") && !notice.contains("normalised"),
        "{notice}"
    );
}

/// A notice longer than the terminal is wide wraps onto more lines: its end (what to do) is
/// not cut.
#[test]
fn a_long_notice_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    app.notice = Some(format!("{} so do this at the end", "a long reason ".repeat(8)));
    let text = render(&app, 80, 24);
    assert!(text.contains("so do this at the end"), "{text}");
}

/// The log pane of an ended job does not say it is following it, and its footer lists its own
/// keys, not the screen's.
#[test]
fn the_log_pane_of_an_ended_job_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let failed = job("20261125-190000-1", "train", "m", JobState::Failed, None);
    let mut app = jobs_app(dir.path(), &[&failed]);
    key(&mut app, KeyCode::Enter);
    app.update(worker::Update::JobLog {
        job: failed.id.clone(),
        lines: vec!["error: something".into()],
    });
    let text = render(&app, 80, 24);
    assert!(
        text.contains("ended, at its end") && !text.contains("following"),
        "{text}"
    );
    assert!(
        text.contains("Esc/Enter/q close") && !text.contains("c cancel"),
        "{text}"
    );
}

/// At 60x20: the help shows every key of the screen in view (those of other screens as room
/// allows, counted when not); the Models table drops columns whole rather than cut a value; the
/// overlap report scrolls with PgUp/PgDn and says which lines are in view.
#[test]
fn a_small_terminal_drops_and_scrolls_rather_than_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = loaded_app(dir.path());
    for (k, screen) in [
        ('1', Screen::Datasets),
        ('2', Screen::Models),
        ('3', Screen::Overlap),
        ('4', Screen::Jobs),
    ] {
        key(&mut app, KeyCode::Char(k));
        key(&mut app, KeyCode::Char('?'));
        let text = render(&app, 60, 20);
        for b in super::keys::for_screen(screen) {
            assert!(
                text.contains(&format!("│{:<10}", b.keys)),
                "{} on {screen:?}: {text}",
                b.keys
            );
        }
        assert!(
            text.contains("any key closes this help") || text.contains("keys of other screens not shown"),
            "{text}"
        );
        key(&mut app, KeyCode::Esc);
    }
    key(&mut app, KeyCode::Char('2'));
    let text = render(&app, 60, 20);
    let header = text.lines().find(|l| l.contains("model ")).unwrap();
    assert!(header.contains("val ELBO") && !header.contains("created"), "{header}");
    assert!(!text.contains("2026-1│"), "{text}");
    assert!(render(&app, 120, 40)
        .lines()
        .any(|l| l.contains("model ") && l.contains("created")));
    // Jobs: ids and states whole; the backend and the note only where there is room.
    key(&mut app, KeyCode::Char('4'));
    let text = render(&app, 60, 20);
    assert!(text.contains("20261125-182040-3") && text.contains("running"), "{text}");
    assert!(render(&app, 120, 40).contains("slurm 4211_2"));

    key(&mut app, KeyCode::Char('3'));
    let lines_shown = |app: &App| -> (usize, usize, usize) {
        let text = render(app, 60, 20);
        let at = text.find(" lines ").unwrap_or_else(|| panic!("not scrollable: {text}"));
        let rest = &text[at + 7..];
        let (range, rest) = rest.split_once(" of ").unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let total: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (a.parse().unwrap(), b.parse().unwrap(), total.parse().unwrap())
    };
    let (a, b, total) = lines_shown(&app);
    assert_eq!(a, 1);
    assert!(b < total, "{b} {total}");
    key(&mut app, KeyCode::PageDown);
    // A page: the last line in view comes first.
    assert_eq!(lines_shown(&app).0, b);
    for _ in 0..20 {
        key(&mut app, KeyCode::PageDown);
    }
    assert_eq!(lines_shown(&app).1, total, "the end, and no further");
    for _ in 0..20 {
        key(&mut app, KeyCode::PageUp);
    }
    assert_eq!(lines_shown(&app).0, 1);
    // Another pair starts at its top.
    key(&mut app, KeyCode::PageDown);
    key(&mut app, KeyCode::Down);
    let s = app.sources.clone();
    serve(&mut app, &s);
    assert_eq!(app.overlap_view.report_scroll, 0);
}
