//! Objectives: the grammar (including where errors point), binding against the bundled model,
//! and values and gradients against hand computation on small tensors.

use deepvis_engine::{Flatten, Graph, Identity, Tensor};
use deepvis_models::Model;
use deepvis_render::objective::{parse, BatchObjective, Layer, NodeGrads, Objective};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::bundled("efficientnet_lite0").unwrap())
}

#[test]
fn grammar_accepts_and_round_trips() {
    let m = model();
    for src in [
        "_blocks.8:15",
        "neuron(_blocks.8:15)",
        "neuron(_blocks.8:15, 2, 3)",
        "layer(_blocks.12)",
        "dream(_blocks.12)",
        "position(_blocks.8, 3, 5)",
        "2 * position(_blocks.8, 13, 0) - _blocks.8:1",
        "class(285)",
        "class(\"Egyptian cat\")",
        "diversity(_blocks.8)",
        "channel(_blocks.8, 4)",
        "_blocks.8:3 - 0.5 * _blocks.8:7",
        "2*_blocks.8:3 + _blocks.9:1",
        "-(_blocks.8:3 + _blocks.8:4) * 1e-1",
        "_blocks.8:3 / 4",
        "_blocks.8:3 * _blocks.8:4 - -2",
        "_blocks.8:3 - (_blocks.8:4 - _blocks.8:5)",
    ] {
        let o = Objective::parse(src, m).unwrap_or_else(|e| panic!("{src}: {e}"));
        let shown = o.to_string();
        let again =
            Objective::parse(&shown, m).unwrap_or_else(|e| panic!("{src} shown as {shown}: {e}"));
        assert_eq!(o, again, "{src} shown as {shown}");
    }
    // Precedence: a - (b - c) keeps its parentheses, a - b + c needs none.
    let o = Objective::parse("_blocks.8:3 - (_blocks.8:4 - _blocks.8:5)", m).unwrap();
    assert_eq!(o.to_string(), "_blocks.8:3 - (_blocks.8:4 - _blocks.8:5)");
    let o = Objective::parse("2*_blocks.8:3 + _blocks.9:1", m).unwrap();
    assert_eq!(o.to_string(), "2 * _blocks.8:3 + _blocks.9:1");
    let o = Objective::parse("class(\"Egyptian cat\")", m).unwrap();
    assert!(matches!(o, Objective::Class { index: 285, .. }));
    let o = Objective::parse("position( _blocks.8 ,3,5 )", m).unwrap();
    assert_eq!(o.to_string(), "position(_blocks.8, 3, 5)");
    assert!(matches!(o, Objective::Position { at: (3, 5), .. }));
}

fn err_at(src: &str) -> (usize, usize, String) {
    let e = match parse(src) {
        Err(e) => e,
        Ok(ast) => ast.bind(model(), src).expect_err(src),
    };
    (e.span.start, e.span.end, e.to_string())
}

#[test]
fn errors_point_at_the_bad_token() {
    let (s, e, msg) = err_at("_blocks.8:3 + foo");
    assert_eq!((s, e), (14, 17), "{msg}");
    assert!(msg.contains("'foo'"));
    // The caret line sits under the token.
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines[1], "  _blocks.8:3 + foo");
    assert_eq!(lines[2], format!("  {}^^^", " ".repeat(14)));

    assert_eq!(err_at("_blocks.8:3 $ 2").0, 12);
    assert_eq!(err_at("neuron(_blocks.8:3, 1)").0, 21); // expected ',' and a row
    assert_eq!(err_at("class(\"Egyptian cat\"").0, 20); // missing ')'
    assert_eq!(err_at("_blocks.8:3 _blocks.8:4").0, 12); // missing operator
    assert_eq!(err_at("frob(_blocks.8)").0, 0); // unknown function
    assert_eq!(err_at("_blocks.8:x").0, 10); // channel not a number
    assert_eq!(err_at("(_blocks.8:3").0, 12); // unclosed parenthesis, at the end
    assert_eq!(err_at("").0, 0);
    assert!(err_at("\"abc").2.contains("unterminated"));
    assert!(err_at("_blocks.8:3 / _blocks.8:4").2.contains("constant"));
    // Bind errors.
    let (s, e, msg) = err_at("1 + _blocks.99:1");
    assert_eq!((s, e), (4, 14), "{msg}");
    assert!(msg.contains("unknown layer"));
    let (s, e, msg) = err_at("_blocks.8:500");
    assert_eq!((s, e), (10, 13), "{msg}");
    assert!(msg.contains("112 channels"), "{msg}");
    let (s, _, msg) = err_at("2 * class(\"no such thing at all\")");
    assert_eq!(s, 4, "{msg}");
    let (s, _, msg) = err_at("direction(_blocks.8, /nonexistent/v.txt)");
    assert_eq!(s, 0, "{msg}");
    assert!(msg.contains("cannot read"));
}

#[test]
fn position_errors_point_at_the_bad_token() {
    // _blocks.8 is 14×14 at the native 224 px: the column, then the row, out of range.
    let (s, e, msg) = err_at("position(_blocks.8, 14, 0)");
    assert_eq!((s, e), (20, 22), "{msg}");
    assert!(msg.contains("column 14") && msg.contains("14×14"), "{msg}");
    let (s, e, msg) = err_at("1 + position(_blocks.8, 0, 100)");
    assert_eq!((s, e), (27, 30), "{msg}");
    assert!(
        msg.contains("row 100") && msg.contains("rows 0..13"),
        "{msg}"
    );
    // A layer without positions: the caret is under the layer.
    let (s, e, msg) = err_at("position(_fc, 0, 0)");
    assert_eq!((s, e), (9, 12), "{msg}");
    assert!(msg.contains("no spatial positions"), "{msg}");
    // Wrong arity.
    let (s, _, msg) = err_at("position(_blocks.8, 3)");
    assert_eq!(s, 21, "{msg}");
    assert!(msg.contains("row y"), "{msg}");
    let (s, _, msg) = err_at("position(_blocks.8)");
    assert_eq!(s, 18, "{msg}");
    assert!(msg.contains("column x"), "{msg}");
    let (s, _, msg) = err_at("position(_blocks.8, 1, 2, 3)");
    assert_eq!(s, 24, "{msg}");
    assert!(msg.contains("expected ')'"), "{msg}");
    assert_eq!(err_at("direction(_blocks.8, v.txt, 3)").0, 29); // ',' and a row y
    assert_eq!(err_at("direction(_blocks.8, v.txt, 3, y)").0, 31); // row not a number
}

#[test]
fn direction_files() {
    let dir = std::env::temp_dir().join(format!("deepvis-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("v.json");
    let v: Vec<String> = (0..112).map(|i| format!("{}", i as f32 * 0.5)).collect();
    std::fs::write(&f, format!("[{}]", v.join(", "))).unwrap();
    let src = format!("direction(_blocks.8, \"{}\")", f.display());
    let o = Objective::parse(&src, model()).unwrap();
    match &o {
        Objective::Direction {
            vector, at: None, ..
        } => assert_eq!(vector[3], 1.5),
        other => panic!("{other:?}"),
    }
    // Lucid's direction_neuron: at one position, shown and parsed back the same.
    let src = format!("direction(_blocks.8, \"{}\", 2, 13)", f.display());
    let o = Objective::parse(&src, model()).unwrap();
    assert!(matches!(
        o,
        Objective::Direction {
            at: Some((2, 13)),
            caricature: false,
            ..
        }
    ));
    assert_eq!(o.to_string(), src);
    assert_eq!(Objective::parse(&o.to_string(), model()).unwrap(), o);
    let src = format!("direction(_blocks.8, \"{}\", 2, 14)", f.display());
    let e = Objective::parse(&src, model()).unwrap_err();
    assert_eq!(e.span.start, src.len() - 3, "{e}");
    assert!(e.message.contains("row 14"), "{e}");
    let short = dir.join("short.txt");
    std::fs::write(&short, "1 2 3").unwrap();
    let e = Objective::parse(
        &format!("direction(_blocks.8, \"{}\")", short.display()),
        model(),
    )
    .unwrap_err();
    assert!(e.message.contains("3 values"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A graph whose node 1 is the input itself, so traced values are the tensors we choose.
fn identity_graph() -> Graph {
    let mut g = Graph::new();
    g.then("a", Identity);
    g.then("flat", Flatten);
    g
}

fn layer(node: usize) -> Layer {
    Layer {
        node,
        name: if node == 1 { "a".into() } else { "flat".into() },
    }
}

#[test]
fn values_match_hand_computation() {
    let g = identity_graph();
    // Two images, 2 channels, 2×2: image b channel c position p = 10b + 4c + p (+1 for ch 1 → 5..8).
    let data: Vec<f32> = (0..2)
        .flat_map(|b| (0..8).map(move |i| (10 * b + i) as f32 * 0.1))
        .collect();
    let x = Tensor::new(vec![2, 2, 2, 2], data.clone()).unwrap();
    let trace = g.forward_multi(x, &[1, 2]).unwrap();
    let v = |o: &Objective| o.values(&trace, 2, None).unwrap();
    let ch1 = Objective::Channel {
        layer: layer(1),
        channel: 1,
    };
    assert_close(&v(&ch1), &[0.55, 1.55]);
    // Centre of a 2×2 map is (x=1, y=1): position 3.
    assert_close(
        &v(&Objective::Neuron {
            layer: layer(1),
            channel: 0,
            at: None,
        }),
        &[0.3, 1.3],
    );
    assert_close(
        &v(&Objective::Neuron {
            layer: layer(1),
            channel: 1,
            at: Some((0, 1)),
        }),
        &[0.6, 1.6],
    );
    let sq0: f32 = (0..8).map(|i| (i as f32 * 0.1).powi(2)).sum::<f32>() / 8.0;
    let sq1: f32 = (10..18).map(|i| (i as f32 * 0.1).powi(2)).sum::<f32>() / 8.0;
    assert_close(&v(&Objective::LayerSquares(layer(1))), &[sq0, sq1]);
    let dir = Objective::Direction {
        layer: layer(1),
        vector: vec![2.0, -1.0],
        source: "t".into(),
        at: None,
        caricature: false,
    };
    // mean over positions of 2·a0 − a1 = 2·mean(a0) − mean(a1).
    assert_close(&v(&dir), &[2.0 * 0.15 - 0.55, 2.0 * 1.15 - 1.55]);
    let class = Objective::Class {
        layer: layer(2),
        index: 5,
        name: None,
    };
    assert_close(&v(&class), &[0.5, 1.5]);
    let combo = 2.0 * ch1.clone() - Objective::Const(0.5) * dir.clone();
    assert_close(
        &v(&combo),
        &[
            2.0 * 0.55 - 0.5 * (0.3 - 0.55),
            2.0 * 1.55 - 0.5 * (2.3 - 1.55),
        ],
    );
    let prod = ch1.clone() * ch1.clone();
    assert_close(&v(&prod), &[0.55 * 0.55, 1.55 * 1.55]);
    // Diversity by hand: Gram matrices of each image, cosine, negated (n = 2 → one pair).
    let gram = |b: usize| {
        let a = &data[b * 8..b * 8 + 8];
        let mut gm = [0.0f64; 4];
        for i in 0..2 {
            for j in 0..2 {
                gm[i * 2 + j] = (0..4)
                    .map(|p| a[i * 4 + p] as f64 * a[j * 4 + p] as f64)
                    .sum();
            }
        }
        gm
    };
    let (g0, g1) = (gram(0), gram(1));
    let dot: f64 = g0.iter().zip(&g1).map(|(a, b)| a * b).sum();
    let n0: f64 = g0.iter().map(|a| a * a).sum::<f64>().sqrt();
    let n1: f64 = g1.iter().map(|a| a * a).sum::<f64>().sqrt();
    let cos = (dot / (n0 * n1)) as f32;
    assert_close(&v(&Objective::Diversity(layer(1))), &[-cos, -cos]);
    // Per-image selection: only the chosen image gets a value.
    assert_close(&ch1.values(&trace, 2, Some(1)).unwrap(), &[0.0, 1.55]);
}

#[test]
fn position_values_match_hand_computation() {
    let g = identity_graph();
    // Two images, 2 channels, 2×2 (W = 2): value = (10b + 4c + p) / 10 at position p = 2y + x.
    let data: Vec<f32> = (0..16)
        .map(|i| (10 * (i / 8) + i % 8) as f32 * 0.1)
        .collect();
    let trace = g
        .forward_multi(Tensor::new(vec![2, 2, 2, 2], data).unwrap(), &[1, 2])
        .unwrap();
    let v = |o: &Objective| o.values(&trace, 2, None);
    // Column 1, row 0: p = 1, channels hold p and p + 4.
    let pos = Objective::Position {
        layer: layer(1),
        at: (1, 0),
    };
    assert_close(
        &v(&pos).unwrap(),
        &[
            (0.1f32.powi(2) + 0.5f32.powi(2)) / 2.0,
            (1.1f32.powi(2) + 1.5f32.powi(2)) / 2.0,
        ],
    );
    // Column 0, row 1: p = 2; 2·a0 − a1.
    let dir = Objective::Direction {
        layer: layer(1),
        vector: vec![2.0, -1.0],
        source: "t".into(),
        at: Some((0, 1)),
        caricature: false,
    };
    assert_close(&v(&dir).unwrap(), &[2.0 * 0.2 - 0.6, 2.0 * 1.2 - 1.6]);
    assert_close(&pos.values(&trace, 2, Some(1)).unwrap(), &[0.0, 1.73]);
    // Outside the map at this size, or a layer without positions: errors that say so.
    let far = Objective::Position {
        layer: layer(1),
        at: (0, 2),
    };
    let msg = v(&far).unwrap_err().to_string();
    assert!(msg.contains("2×2") && msg.contains("position(a"), "{msg}");
    let mut grads = NodeGrads::default();
    assert!(far
        .accumulate_grad(&trace, 2, None, &[1.0, 1.0], &mut grads)
        .is_err());
    let flat = Objective::Direction {
        layer: layer(2),
        vector: vec![1.0; 8],
        source: "t".into(),
        at: Some((0, 0)),
        caricature: false,
    };
    let msg = v(&flat).unwrap_err().to_string();
    assert!(msg.contains("spatial positions"), "{msg}");
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

/// Σ over images of the batch objective, for finite differences.
fn total(g: &Graph, obj: &BatchObjective, x: &[f32], shape: &[usize]) -> f64 {
    let t = g
        .forward_multi(
            Tensor::new(shape.to_vec(), x.to_vec()).unwrap(),
            &obj.nodes(),
        )
        .unwrap();
    obj.evaluate(&t, shape[0], false)
        .unwrap()
        .0
        .iter()
        .map(|v| *v as f64)
        .sum()
}

fn check_grad(obj: BatchObjective, n: usize) {
    let g = identity_graph();
    let shape = [n, 3, 3, 4];
    let len: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x: Vec<f32> = (0..len).map(|_| rng.gen_range(0.1..1.0)).collect();
    let t = g
        .forward_multi(
            Tensor::new(shape.to_vec(), x.clone()).unwrap(),
            &obj.nodes(),
        )
        .unwrap();
    let (_, grads) = obj.evaluate(&t, n, true).unwrap();
    let grads = grads.unwrap();
    let gin = g.backward_multi(&t, grads.into_seeds()).unwrap();
    for i in 0..len {
        let eps = 1e-2f32;
        let mut xp = x.clone();
        xp[i] += eps;
        let mut xm = x.clone();
        xm[i] -= eps;
        let fd = (total(&g, &obj, &xp, &shape) - total(&g, &obj, &xm, &shape)) / (2.0 * eps as f64);
        let an = gin.data()[i] as f64;
        assert!(
            (fd - an).abs() < 2e-3 * (1.0 + fd.abs()),
            "{obj}: coordinate {i}: fd {fd} vs {an}"
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let ch = |c| Objective::Channel {
        layer: layer(1),
        channel: c,
    };
    let dream = Objective::LayerSquares(layer(1));
    let div = Objective::Diversity(layer(1));
    let neuron = Objective::Neuron {
        layer: layer(1),
        channel: 2,
        at: Some((3, 0)),
    };
    let dir = Objective::Direction {
        layer: layer(1),
        vector: vec![0.3, -1.0, 2.0],
        source: "t".into(),
        at: None,
        caricature: false,
    };
    let class = Objective::Class {
        layer: layer(2),
        index: 7,
        name: None,
    };
    // On a 4×3 (W×H) map, so a swapped x and y would fall off it or land elsewhere.
    let pos = |x, y| Objective::Position {
        layer: layer(1),
        at: (x, y),
    };
    let dir_at = Objective::Direction {
        layer: layer(1),
        vector: vec![0.7, 1.5, -0.4],
        source: "t".into(),
        at: Some((3, 1)),
        caricature: false,
    };
    let combo = 2.0 * ch(0) - Objective::Const(0.5) * dream.clone() + ch(1) * neuron.clone()
        - dir.clone()
        + 3.0 * div.clone()
        + -class.clone();
    check_grad(BatchObjective::Shared(combo), 3);
    check_grad(BatchObjective::Shared(pos(3, 2)), 2);
    check_grad(BatchObjective::Shared(dir_at.clone()), 2);
    check_grad(
        BatchObjective::Shared(pos(1, 0) * dir_at.clone() - 2.0 * pos(2, 1) + ch(2)),
        2,
    );
    check_grad(BatchObjective::PerImage(vec![pos(0, 2), dir_at]), 2);
    check_grad(BatchObjective::Shared(div.clone()), 4);
    // Per image: different objectives, one with the batch-wide diversity term.
    check_grad(
        BatchObjective::PerImage(vec![ch(0), neuron - ch(2), dir + 10.0 * div]),
        3,
    );
}

#[test]
fn per_image_gradients_stay_in_their_image() {
    let g = identity_graph();
    let x = Tensor::new(vec![2, 3, 2, 2], (0..24).map(|i| i as f32).collect()).unwrap();
    let obj = BatchObjective::PerImage(vec![
        Objective::Channel {
            layer: layer(1),
            channel: 0,
        },
        Objective::Channel {
            layer: layer(1),
            channel: 2,
        },
    ]);
    let t = g.forward_multi(x, &obj.nodes()).unwrap();
    let (values, grads) = obj.evaluate(&t, 2, true).unwrap();
    assert_eq!(values, vec![1.5, 12.0 + 8.0 + 1.5]);
    let grad = grads.unwrap().get(1).unwrap().data().to_vec();
    let mut want = vec![0.0; 24];
    want[0..4].fill(0.25);
    want[20..24].fill(0.25);
    assert_eq!(grad, want);
    assert!(obj.evaluate(&t, 3, false).is_err());
}

#[test]
fn channels_read_names_the_one_layer_and_its_channels() {
    let m = model();
    let read = |src: &str| Objective::parse(src, m).unwrap().channels_read();
    let node = |name: &str| m.layer(name).unwrap();
    assert_eq!(read("_blocks.8:5"), Some((node("_blocks.8"), vec![5])));
    assert_eq!(
        read("_blocks.8:9 - 0.5 * _blocks.8:5 + 2"),
        Some((node("_blocks.8"), vec![5, 9]))
    );
    assert_eq!(
        read("neuron(_blocks.8:3) + _blocks.8:3"),
        Some((node("_blocks.8"), vec![3]))
    );
    // Two layers, whole layers, or nothing read: the engine computes everything.
    assert_eq!(read("_blocks.8:5 + _blocks.9:5"), None);
    assert_eq!(read("dream(_blocks.8)"), None);
    assert_eq!(read("_blocks.8:5 + diversity(_blocks.8)"), None);
    assert_eq!(read("3"), None);
    // Per image: the union over the batch.
    let per_image = BatchObjective::PerImage(vec![
        Objective::channel(m, "_blocks.8", 7).unwrap(),
        Objective::channel(m, "_blocks.8", 2).unwrap(),
        Objective::channel(m, "_blocks.8", 7).unwrap(),
    ]);
    assert_eq!(
        per_image.channels_read(),
        Some((node("_blocks.8"), vec![2, 7]))
    );
    let mixed = BatchObjective::PerImage(vec![
        Objective::channel(m, "_blocks.8", 7).unwrap(),
        Objective::channel(m, "_blocks.9", 2).unwrap(),
    ]);
    assert_eq!(mixed.channels_read(), None);
}

/// Found by the fuzzer (crates/deepvis-fuzz): `((((…` overflowed the stack of the recursive
/// parser, and a class name with a newline made a two-line message.
#[test]
fn hostile_objectives_are_one_line_errors_not_stack_overflows() {
    let deep_parens = format!("{}1{}", "(".repeat(1_000_000), ")".repeat(1_000_000));
    let deep_minus = format!("{}_blocks.8:1", "-".repeat(1_000_000));
    let long_chain = format!("{}1", "_blocks.8:1 + ".repeat(100_000));
    let parens_100 = format!("{}1{}", "(".repeat(100), ")".repeat(100));
    let minus_100 = format!("{}_blocks.8:1", "-".repeat(100));
    let msgs: Vec<String> = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || {
            [deep_parens, deep_minus, long_chain, parens_100, minus_100]
                .iter()
                .map(|src| {
                    let e = parse(src).expect_err("refused");
                    let _ = e.to_string();
                    e.message
                })
                .collect()
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    for m in &msgs[..3] {
        assert_eq!(m, "the objective has more than 2000 tokens; shorten it");
    }
    for m in &msgs[3..] {
        assert_eq!(m, "nested more than 64 deep; simplify the objective");
    }
    // 64 levels are fine.
    let ok = format!("{}_blocks.8:1{}", "(".repeat(64), ")".repeat(64));
    assert!(parse(&ok).is_ok());

    let e = Objective::parse("class(\"gold\nfish\")", model()).unwrap_err();
    assert!(!e.message.contains('\n'), "{}", e.message);
    assert!(e.message.contains("gold\\nfish"), "{}", e.message);
}
