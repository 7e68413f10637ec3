//! `auto` precision: bf16 exactly where the CPU runs it and the model's bf16 output stays near
//! float32's. One test in its own binary: the precision is process-wide.

use deepvis_engine::{bf16_supported, precision, Precision};
use deepvis_models::Model;
use deepvis_render::precision::{bf16_error, choose_precision, PrecisionChoice, BF16_TOLERANCE};

#[test]
fn auto_takes_bf16_where_it_runs_and_holds() {
    let model = Model::bundled("efficientnet_lite0").unwrap();
    let chosen = choose_precision(&model, PrecisionChoice::Auto).unwrap();
    assert_eq!(chosen.note, None);
    if bf16_supported() {
        assert_eq!(chosen.precision, Precision::Bf16);
        assert_eq!(precision(), Precision::Bf16);
        // The check compared two different computations: bf16 rounds, so the outputs differ,
        // but by far less than the tolerance on a trained model.
        let e = chosen.bf16_error.unwrap();
        assert!(e > 1e-5 && e < 0.05, "bf16 error {e}");
        // It leaves float32 in effect, and measures the same on the same model and image.
        assert_eq!(bf16_error(&model).unwrap(), e);
        assert_eq!(precision(), Precision::F32);
        assert_eq!(
            choose_precision(&model, PrecisionChoice::Bf16)
                .unwrap()
                .precision,
            Precision::Bf16
        );
    } else {
        assert_eq!(chosen.precision, Precision::F32);
        assert_eq!(chosen.bf16_error, None);
        let fallback = choose_precision(&model, PrecisionChoice::Bf16).unwrap();
        assert_eq!(fallback.precision, Precision::F32);
        assert!(fallback.note.unwrap().contains("AVX512-BF16"));
    }
    let f = choose_precision(&model, PrecisionChoice::F32).unwrap();
    assert_eq!((f.precision, precision()), (Precision::F32, Precision::F32));
    assert_eq!(PrecisionChoice::parse("Auto"), Some(PrecisionChoice::Auto));
    assert_eq!(
        PrecisionChoice::parse("bfloat16"),
        Some(PrecisionChoice::Bf16)
    );
    assert_eq!(PrecisionChoice::parse("f64"), None);
}
