//! Times the parts of a step that are not the network: parametrization and transforms.
use deepvis_render::param::ParamKind;
use deepvis_render::transform::{lucid_standard, Pipeline};
use rand::SeedableRng;
use std::time::Instant;

fn main() {
    let (n, s) = (4, 128);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for kind in [ParamKind::FOURIER, ParamKind::Maco, ParamKind::Pixel] {
        let mut p = kind.build(n, s, s, &mut rng);
        let mut img = vec![0.0; n * 3 * s * s];
        let mut g = vec![0.0; p.params().len()];
        let t = Instant::now();
        for _ in 0..20 {
            p.forward(&mut img);
            p.backward(&img.clone(), &mut g);
        }
        eprintln!(
            "{kind}: {:.2} ms per forward+backward of {n}",
            t.elapsed().as_secs_f64() * 50.0
        );
    }
    let img = vec![0.5; n * 3 * s * s];
    for t in lucid_standard() {
        let mut pl = Pipeline::new(vec![t.clone()]);
        let t0 = Instant::now();
        for _ in 0..20 {
            let (oh, ow) = pl.forward(&img, n, s, s, &mut rng);
            let go = vec![1.0; n * 3 * oh * ow];
            let mut gi = vec![0.0; img.len()];
            pl.backward(&go, &mut gi);
        }
        eprintln!("{t}: {:.2} ms", t0.elapsed().as_secs_f64() * 50.0);
    }
    let mut pl = Pipeline::new(lucid_standard());
    let t = Instant::now();
    for _ in 0..20 {
        let (oh, ow) = pl.forward(&img, n, s, s, &mut rng);
        let go = vec![1.0; n * 3 * oh * ow];
        let mut gi = vec![0.0; img.len()];
        pl.backward(&go, &mut gi);
    }
    eprintln!(
        "lucid transforms: {:.2} ms per forward+backward of {n}",
        t.elapsed().as_secs_f64() * 50.0
    );
}
