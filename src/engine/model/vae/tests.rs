//! The VAE against libtorch's dense autograd, scvi-tools' formulas and its own invariants: fast paths,
//! masks, likelihoods, dropout traces, steps.

use super::likelihood::lgamma_terms;
use super::*;
use crate::model::input::MaskGroups;
use crate::model::layers::{fixed_dropout_mask, TRACE_DROPOUT_STEP};

fn arch(likelihood: &str) -> Architecture {
    Architecture {
        n_genes: 50,
        n_hidden: 16,
        n_latent: 4,
        n_layers: 1,
        dropout: 0.1,
        norm: scmz::spec::Norm::Batch,
        likelihood: clap::ValueEnum::from_str(likelihood, false).expect("a likelihood"),
        batch_categories: Vec::new(),
        masked_input: true,
        classifier_labels: Vec::new(),
        layout: Default::default(),
    }
}

#[test]
fn lgamma_and_digamma_differences_match_libtorch() {
    for &t in &[1e-3f64, 0.07, 0.5, 1.0, 3.7, 12.0, 250.0, 1e4] {
        for &x in &[0.0f64, 1.0, 2.0, 7.0, 16.0, 17.0, 0.5, 33.3, 400.0, 12345.0] {
            let (v, d) = lgamma_digamma_diff(x, t);
            let tt = Tensor::from_slice(&[t, x + t]);
            let lg = Vec::<f64>::try_from(tt.lgamma()).unwrap();
            let dg = Vec::<f64>::try_from(tt.digamma()).unwrap();
            let (ev, ed) = (lg[1] - lg[0], dg[1] - dg[0]);
            // lgamma to 1e-6 relative (a single-precision log inside), digamma to 1e-9.
            assert!(
                (v - ev).abs() <= 1e-6 * ev.abs().max(1.0),
                "lgamma x={x} t={t}: {v} vs {ev}"
            );
            assert!(
                (d - ed).abs() <= 1e-9 * ed.abs().max(1.0),
                "digamma x={x} t={t}: {d} vs {ed}"
            );
        }
    }
}

/// Many nonzeros take the two-thread path; the sums match a direct computation.
#[test]
fn lgamma_terms_on_two_threads_match_direct_sums() {
    let (n_rows, n_genes) = (300usize, 500usize);
    let (mut rows, mut genes, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..n_rows {
        for g in (r % 3..n_genes).step_by(3) {
            rows.push(r as i64);
            genes.push(g as i64);
            x.push(((r * 7 + g) % 40 + 1) as f32);
        }
    }
    assert!(x.len() >= 50_000);
    let theta: Vec<f32> = (0..n_genes).map(|g| 0.1 + (g % 17) as f32).collect();
    let (cell, dtheta) = lgamma_terms(&rows, &genes, &x, None, &theta, n_rows);
    let mut c = vec![0f64; n_rows];
    let mut d = vec![0f64; n_genes];
    for k in 0..x.len() {
        let (v, dv) = lgamma_digamma_diff(x[k] as f64, theta[genes[k] as usize] as f64);
        c[rows[k] as usize] += v;
        d[genes[k] as usize] += dv;
    }
    for (a, b) in cell.iter().zip(&c) {
        assert!((*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    for (a, b) in dtheta.iter().zip(&d) {
        assert!((*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
}

/// A minibatch with a mask, a visibility and a batch covariate.
fn masked_input<'a>(
    sparse: Option<&'a SparseX>,
    x: &'a Tensor,
    measured: &'a Tensor,
    visible: &'a Tensor,
    batch: &'a Tensor,
) -> Input<'a> {
    Input {
        sparse,
        lgamma_x1: None,
        x: Some(x),
        measured: Some(measured),
        measured_groups: None,
        visible: Some(visible),
        batch: Some(batch),
        labels: None,
    }
}

fn sparse_of(x: &Tensor) -> SparseX {
    let (n, g) = (x.size()[0], x.size()[1]);
    let nz = x.reshape([-1]).nonzero().squeeze_dim(1);
    let genes = nz.remainder(g);
    SparseX {
        n_rows: n,
        n_cols: g,
        by_gene: std::sync::Arc::new(ByGene::new(
            &Vec::<i64>::try_from(nz.divide_scalar_mode(g, "floor")).unwrap(),
            &Vec::<i64>::try_from(&genes).unwrap(),
            &Vec::<f32>::try_from(x.reshape([-1]).index_select(0, &nz)).unwrap(),
            g as usize,
        )),
        genes: nz.remainder(g),
        values: x.reshape([-1]).index_select(0, &nz),
        rows: nz.divide_scalar_mode(g, "floor"),
        flat: nz,
    }
}

/// The first layer over the nonzeros (outside autograd, its gradient by hand) and the lgamma
/// terms computed in Rust give the same losses and gradients as the dense computation under
/// autograd, with a mask, gene dropout and a batch covariate in play, for each likelihood.
#[test]
fn sparse_first_layer_matches_dense_autograd() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    for likelihood in ["nb", "zinb", "poisson"] {
        sparse_matches_dense(likelihood);
    }
}

fn sparse_matches_dense(likelihood: &str) {
    tch::manual_seed(5);
    let mut a = arch(likelihood);
    a.batch_categories = vec!["a".into(), "b".into()];
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let vae = Vae::new(&vs.root(), a);
    let params: Vec<Tensor> = vs.trainable_variables();
    let x = Tensor::randint(6, [8, 50], (Kind::Float, tch::Device::Cpu))
        * Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu)).ge(0.6);
    let measured = Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu))
        .ge(0.2)
        .to_kind(Kind::Float);
    let visible = &measured * Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu)).ge(0.3);
    let batch = Tensor::from_slice(&[0i64, 1, 1, 0, 1, 0, 0, 1])
        .one_hot(2)
        .to_kind(Kind::Float);
    let sp = sparse_of(&x);
    let run = |sparse: Option<&SparseX>| {
        let input = masked_input(sparse, &x, &measured, &visible, &batch);
        tch::manual_seed(11);
        let l = vae.losses(&input, 0.7, Pass::Train);
        assert_eq!(l.sparse_first.is_some(), sparse.is_some());
        let grads = vae.backward(&l, &params);
        (l.total.double_value(&[]), grads)
    };
    let (dense_loss, dense_grads) = run(None);
    let (sparse_loss, sparse_grads) = run(Some(&sp));
    // Evaluation (no autograd, the fused pass without gradients) gives the same values too.
    let eval = |sparse: Option<&SparseX>| {
        let input = masked_input(sparse, &x, &measured, &visible, &batch);
        let l = tch::no_grad(|| vae.losses(&input, 1.0, Pass::Mean));
        (l.recon.double_value(&[]), l.kl.double_value(&[]))
    };
    let (a, b) = (eval(None), eval(Some(&sp)));
    assert!(
        (a.0 - b.0).abs() < 1e-3 * a.0.abs() && (a.1 - b.1).abs() < 1e-5,
        "{likelihood}: {a:?} vs {b:?}"
    );
    assert!(
        (dense_loss - sparse_loss).abs() < 1e-3 * dense_loss.abs(),
        "{likelihood}: {dense_loss} vs {sparse_loss}"
    );
    for (d, s) in dense_grads.iter().zip(&sparse_grads) {
        assert_eq!(d.defined(), s.defined(), "{likelihood}");
        if !d.defined() {
            continue;
        }
        assert_eq!(d.size(), s.size());
        let diff = f64::try_from((d - s).abs().max()).unwrap();
        let scale = f64::try_from(d.abs().max()).unwrap();
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{likelihood}: gradient differs by {diff} (scale {scale})"
        );
    }
}

/// The mask given as its distinct rows (a merged file's datasets) gives the same losses and
/// gradients as the per-cell mask.
#[test]
fn mask_groups_match_the_per_cell_mask() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(9);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let vae = Vae::new(&vs.root(), arch("nb"));
    let params: Vec<Tensor> = vs.trainable_variables();
    let x = Tensor::randint(6, [8, 50], (Kind::Float, tch::Device::Cpu))
        * Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu)).ge(0.5);
    let groups = MaskGroups {
        rows: Tensor::rand([3, 50], (Kind::Float, tch::Device::Cpu))
            .ge(0.3)
            .to_kind(Kind::Float),
        index: Tensor::from_slice(&[0i64, 2, 2, 1, 0, 1, 2, 0]),
    };
    let measured = groups.rows.index_select(0, &groups.index);
    let sp = sparse_of(&x);
    let run = |g: Option<&MaskGroups>| {
        let input = Input {
            sparse: Some(&sp),
            lgamma_x1: None,
            x: Some(&x),
            measured: Some(&measured),
            measured_groups: g,
            visible: None,
            batch: None,
            labels: None,
        };
        tch::manual_seed(4);
        let l = vae.losses(&input, 0.5, Pass::Train);
        let grads = vae.backward(&l, &params);
        (l.total.double_value(&[]), grads)
    };
    let (a, ga) = run(None);
    let (b, gb) = run(Some(&groups));
    assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
    for (d, s) in ga.iter().zip(&gb) {
        assert_eq!(d.defined(), s.defined());
        if d.defined() {
            let diff = f64::try_from((d - s).abs().max()).unwrap();
            assert!(diff <= 1e-5 * f64::try_from(d.abs().max()).unwrap().max(1.0), "{diff}");
        }
    }
}

/// A gene a cell's dataset did not measure changes nothing, whatever value sits in it.
#[test]
fn unmeasured_genes_never_enter_the_loss() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(3);
    for likelihood in ["nb", "zinb", "poisson"] {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let vae = Vae::new(&vs.root(), arch(likelihood));
        let x = Tensor::randint(20, [8, 50], (Kind::Float, tch::Device::Cpu));
        let measured = Tensor::rand([8, 50], (Kind::Float, tch::Device::Cpu))
            .ge(0.3)
            .to_kind(Kind::Float);
        let junk = Tensor::randint(1000, [8, 50], (Kind::Float, tch::Device::Cpu));
        let unmeasured: Tensor = 1.0 - &measured;
        let x2: Tensor = &x * &measured + &junk * &unmeasured;
        assert!(bool::try_from(x2.ne_tensor(&x).any()).unwrap());
        let loss = |x: &Tensor| {
            let l = vae.losses(
                &Input {
                    sparse: None,
                    lgamma_x1: None,
                    x: Some(x),
                    measured: Some(&measured),
                    measured_groups: None,
                    visible: None,
                    batch: None,
                    labels: None,
                },
                1.0,
                Pass::Mean,
            );
            (l.recon.double_value(&[]), l.kl.double_value(&[]))
        };
        let (a, b) = (loss(&x), loss(&x2));
        assert!(
            (a.0 - b.0).abs() < 1e-3 && (a.1 - b.1).abs() < 1e-5,
            "{likelihood}: {a:?} vs {b:?}"
        );
        // And measured genes do matter.
        let x3: Tensor = &x + &measured;
        assert!((loss(&x3).0 - a.0).abs() > 1e-2, "{likelihood}");
    }
}

/// The replay passes of `scripts/bench_parity.py` are deterministic (no random draw), a noise
/// shift moves the latent the decoder sees, and the fixed dropout pattern drops a tenth.
#[test]
fn trace_passes_are_deterministic() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(3);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let vae = Vae::new(&vs.root(), arch("nb"));
    let x = Tensor::randint(6, [8, 50], (Kind::Float, tch::Device::Cpu));
    let measured = Tensor::ones([8, 50], (Kind::Float, tch::Device::Cpu));
    let batch = Tensor::zeros([8, 0], (Kind::Float, tch::Device::Cpu));
    let input = masked_input(None, &x, &measured, &measured, &batch);
    let loss = |pass: Pass| vae.losses(&input, 1.0, pass).recon.double_value(&[]);
    TRACE_DROPOUT_STEP.store(4, std::sync::atomic::Ordering::Relaxed);
    let fixed = [
        loss(Pass::TrainFixed { tenths: 0 }),
        loss(Pass::TrainFixed { tenths: 0 }),
    ];
    let shifted = loss(Pass::TrainFixed { tenths: 10 });
    TRACE_DROPOUT_STEP.store(-1, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fixed[0], fixed[1]);
    assert_ne!(fixed[0], shifted);
    let random = [loss(Pass::Train), loss(Pass::Train)];
    assert_ne!(random[0], random[1]);
    let mask = fixed_dropout_mask(128, 128, 7, 0.1);
    let dropped = mask.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!((dropped - 0.1).abs() < 0.01, "{dropped}");
}

/// `population_norms` sets every BatchNorm layer's running statistics to the mean of the given
/// minibatches' statistics in a training pass: after one large minibatch, evaluation encodes it
/// as training does (the variance differs by n / (n - 1) only); after three, each running
/// statistic is the mean of those after each alone; with none, nothing changes.
#[test]
fn population_norms_are_the_minibatches_mean_statistics() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(3);
    let cpu = (Kind::Float, tch::Device::Cpu);
    let xs: Vec<Tensor> = (0..3).map(|i| Tensor::randint(4 + 3 * i, [2000, 50], cpu)).collect();
    let ones = Tensor::ones([2000, 50], cpu);
    let input = |x| Input {
        sparse: None,
        lgamma_x1: None,
        x: Some(x),
        measured: Some(&ones),
        measured_groups: None,
        visible: Some(&ones),
        batch: None,
        labels: None,
    };
    let mut a = arch("nb");
    a.dropout = 0.0;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let vae = Vae::new(&vs.root(), a);
    // The encoder's statistics, then the decoder's (whose input is a random draw).
    let stats = || -> Vec<Tensor> {
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
            .collect();
        v.sort_by_key(|(n, _)| (!n.starts_with("encoder"), n.clone()));
        v.into_iter().map(|(_, t)| t.copy()).collect()
    };
    let max_diff = |x: &[Tensor], y: &[Tensor]| {
        x.iter()
            .zip(y)
            .map(|(x, y)| f64::try_from((x - y).abs().max()).unwrap())
            .fold(0.0, f64::max)
    };
    let start = stats();
    assert_eq!(start.len(), 4, "encoder and decoder, mean and variance");
    vae.population_norms(std::iter::empty());
    assert_eq!(max_diff(&start, &stats()), 0.0);

    let alone: Vec<Vec<Tensor>> = xs
        .iter()
        .map(|x| {
            vae.population_norms([input(x)]);
            stats()
        })
        .collect();
    assert!(max_diff(&start, &alone[0]) > 0.1, "the statistics did not move");
    let (train_mu, eval_mu) =
        tch::no_grad(|| (vae.encode(&input(&xs[2]), true).0, vae.encode(&input(&xs[2]), false).0));
    let off = f64::try_from((&train_mu - &eval_mu).abs().max() / train_mu.abs().max()).unwrap();
    assert!(off < 2e-3, "evaluation encodes the batch {off} off training");

    vae.population_norms(xs.iter().map(input));
    let mean: Vec<Tensor> = (0..start.len())
        .map(|i| (&alone[0][i] + &alone[1][i] + &alone[2][i]) / 3.0)
        .collect();
    let now = stats();
    let off = max_diff(&mean[..2], &now[..2]);
    assert!(off < 1e-4, "encoder {off}");
    // The decoder's differ by the draws only.
    let off = max_diff(&mean[2..], &now[2..]);
    assert!(off < 0.1, "decoder {off}");
    assert!(max_diff(&alone[0], &alone[2]) > 0.1, "the minibatches should differ");
}

/// BatchNorm layers start as PyTorch's (and scvi-tools'): scale 1, shift 0. (tch's default
/// scale is uniform in [0, 1); with it the latents transferred labels worse per epoch.)
#[test]
fn batch_norm_starts_at_scale_one() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let mut a = arch("nb");
    a.classifier_labels = vec!["x".into(), "y".into()];
    let _vae = Vae::new(&vs.root(), a);
    let norms: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| n.contains("norm.weight") || n.contains("norm.bias"))
        .collect();
    // Encoder, decoder and classifier.
    assert_eq!(norms.len(), 6, "{:?}", norms.iter().map(|n| &n.0).collect::<Vec<_>>());
    for (name, t) in norms {
        let want = if name.ends_with("weight") { 1.0 } else { 0.0 };
        let off = f64::try_from((&t - want).abs().max()).unwrap();
        assert_eq!(off, 0.0, "{name}");
    }
}

/// The classifier head learns labels from the latent; unlabelled cells (-1) add nothing to
/// its loss, and a batch of only unlabelled cells has none (its weights get no gradient).
#[test]
fn classifier_learns_labels_and_ignores_unlabelled_cells() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(3);
    let mut a = arch("nb");
    a.masked_input = false;
    a.classifier_labels = vec!["low".into(), "high".into()];
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let vae = Vae::new(&vs.root(), a);
    let mut opt = crate::train::adam::Adam::new(&vs, 3e-3, 0.0, 1e-8);
    // Two cell types: counts concentrated on the first or the last 25 genes.
    let n = 64;
    let profile = Tensor::cat(
        &[
            Tensor::ones([n / 2, 25], (Kind::Float, Device::Cpu)) * 4.0,
            Tensor::ones([n / 2, 25], (Kind::Float, Device::Cpu)) * 0.2,
        ],
        1,
    );
    let x = Tensor::cat(&[profile.shallow_clone(), profile.flip([1])], 0).poisson();
    let truth: Vec<i64> = (0..n).map(|i| i64::from(i >= n / 2)).collect();
    // A quarter of the cells unlabelled.
    let given: Vec<i64> = truth
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 4 == 0 { -1 } else { t })
        .collect();
    let labels = Tensor::from_slice(&given);
    fn input<'a>(x: &'a Tensor, labels: Option<&'a Tensor>) -> Input<'a> {
        Input {
            sparse: None,
            lgamma_x1: None,
            x: Some(x),
            measured: None,
            measured_groups: None,
            visible: None,
            batch: None,
            labels,
        }
    }
    for _ in 0..150 {
        let l = vae.losses(&input(&x, Some(&labels)), 0.1, Pass::Train);
        let g = vae.backward(&l, opt.params());
        opt.step(&g);
    }
    let (mu, _) = tch::no_grad(|| vae.encode(&input(&x, None), false));
    let pred = Vec::<i64>::try_from(vae.classify(&mu).unwrap().argmax(1, false)).unwrap();
    let unlabelled_right = (0..n as usize).filter(|&i| i % 4 == 0 && pred[i] == truth[i]).count();
    assert_eq!(
        unlabelled_right,
        n as usize / 4,
        "the unlabelled cells' types: {pred:?}"
    );

    // The loss is the mean cross-entropy over the labelled cells alone.
    let l = tch::no_grad(|| vae.losses(&input(&x, Some(&labels)), 1.0, Pass::Mean));
    let probs = Vec::<f64>::try_from(vae.classify(&mu).unwrap().to_kind(Kind::Double).flatten(0, 1)).unwrap();
    let labelled: Vec<usize> = (0..n as usize).filter(|&i| given[i] >= 0).collect();
    let by_hand = -labelled
        .iter()
        .map(|&i| probs[i * 2 + given[i] as usize].ln())
        .sum::<f64>()
        / labelled.len() as f64;
    let ce = l.ce.as_ref().unwrap().double_value(&[]);
    assert!((ce - by_hand).abs() < 1e-5, "{ce} vs {by_hand}");
    let none = Tensor::full([n], -1, (Kind::Int64, Device::Cpu));
    let l = vae.losses(&input(&x, Some(&none)), 1.0, Pass::Train);
    assert!(l.ce.is_none());
    let names: Vec<String> = {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(n, _)| n).collect()
    };
    let grads = vae.backward(&l, opt.params());
    for (name, g) in names.iter().zip(&grads) {
        if name.starts_with("classifier") {
            assert!(!g.defined(), "{name} has a gradient from unlabelled cells");
        }
    }
}

/// On real minibatches (Kang PBMCs, 14,053 genes, raw counts), at initialisation and after
/// training steps, the CPU fast paths (first layer over the nonzeros, fused NB likelihood with
/// its fast exp/ln and lgamma sums) give the loss and gradients libtorch's autograd computes
/// densely: no bias in what training follows.
#[test]
fn fast_paths_match_autograd_on_real_kang_minibatches() {
    let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kang_sample.h5ad");
    let ds = scmz::data::Dataset::open(&path).unwrap();
    let g = ds.n_genes();
    tch::manual_seed(1);
    let mut a = arch("nb");
    a.n_genes = g;
    a.n_hidden = 128;
    a.n_latent = 10;
    a.masked_input = false;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let vae = Vae::new(&vs.root(), a);
    let mut opt = crate::train::adam::Adam::new(&vs, 1e-3, 1e-6, 0.01);
    let cov = crate::train::covariates::Covariates::default();
    let batches: Vec<crate::train::minibatch::Prepared> = (0..2)
        .map(|k| {
            let b = crate::train::loader::Batch {
                x: ds.read_rows(k * 128, (k + 1) * 128).unwrap(),
                rows: (k * 128..(k + 1) * 128).collect(),
            };
            crate::train::minibatch::prepare(&b, &cov, g)
        })
        .collect();
    let dense: Vec<Tensor> = batches.iter().map(|p| p.input().dense_x()).collect();
    let compare = |when: &str, params: &[Tensor]| {
        for (p, x) in batches.iter().zip(&dense) {
            let run = |fast: bool| {
                let mut input = p.input();
                if !fast {
                    input = Input {
                        sparse: None,
                        lgamma_x1: None,
                        x: Some(x),
                        ..input
                    };
                }
                tch::manual_seed(7);
                let l = vae.losses(&input, 0.3, Pass::Train);
                assert_eq!(l.sparse_first.is_some(), fast);
                (l.total.double_value(&[]), vae.backward(&l, params))
            };
            let ((fast_loss, fast), (slow_loss, slow)) = (run(true), run(false));
            assert!(
                (fast_loss - slow_loss).abs() < 1e-4 * slow_loss.abs(),
                "{when}: loss {fast_loss} vs {slow_loss}"
            );
            // A bias feeding BatchNorm has no gradient but rounding noise: errors are
            // measured against each parameter's gradient and, for those, the model's.
            let total = slow
                .iter()
                .map(|s| f64::try_from(s.to_kind(Kind::Double).norm()).unwrap().powi(2))
                .sum::<f64>()
                .sqrt();
            for (f, s) in fast.iter().zip(&slow) {
                let (f, s) = (f.to_kind(Kind::Double), s.to_kind(Kind::Double));
                let err = f64::try_from((&f - &s).norm()).unwrap();
                let norm = f64::try_from(s.norm()).unwrap();
                assert!(
                    err <= 1e-3 * norm + 1e-6 * total,
                    "{when}: gradient off by {err} of {norm} (all: {total})"
                );
                if norm > 1e-4 * total {
                    let cos =
                        f64::try_from((&f * &s).sum(Kind::Double)).unwrap() / (norm * f64::try_from(f.norm()).unwrap());
                    assert!(cos > 0.99999, "{when}: cosine {cos}");
                }
            }
        }
    };
    compare("at initialisation", opt.params());
    for _ in 0..20 {
        for p in &batches {
            tch::manual_seed(7);
            let l = vae.losses(&p.input(), 0.3, Pass::Train);
            let grads = vae.backward(&l, opt.params());
            opt.step(&grads);
        }
    }
    compare("after 40 steps", opt.params());
}
