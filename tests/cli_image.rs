//! `fit-image`, `imagine` and `strip` end to end on a tiny random-weight SD folder.

mod common;
mod sd_common;

use std::path::Path;

use act_studio::diffusion::image_io::read_png_meta;
use common::{run_cli as act, text};
use sd_common::tiny_sd::{write_tiny_sd15, write_tiny_sdxl};

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[test]
fn fit_imagine_strip_and_settings_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-sd");
    write_tiny_sd15(&model, 11).unwrap();
    let (src, tgt) = (tmp.path().join("plain.txt"), tmp.path().join("painted.txt"));
    std::fs::write(&src, "a cat\na dog on a hill\na red boat\na small house\n").unwrap();
    std::fs::write(&tgt, "a cat, oil painting\na dog on a hill, oil painting\na red boat, oil painting\na small house, oil painting\n").unwrap();
    let maps = tmp.path().join("painted.safetensors");
    let out = act(&[
        "fit-image",
        "--model",
        s(&model),
        "--source",
        s(&src),
        "--target",
        s(&tgt),
        "--out",
        s(&maps),
        "--steps",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = act(&["maps-info", s(&maps)]);
    assert!(
        text(&info.stdout).contains("unet.conv_norm_out"),
        "{}",
        text(&info.stdout)
    );

    let a = tmp.path().join("a.png");
    let common_args = [
        "--model",
        s(&model),
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "2",
        "--seed",
        "7",
    ];
    let mut args = vec![
        "imagine",
        "--prompt",
        "a cat on a mat",
        "--maps",
        s(&maps),
        "--lambda",
        "painted=0.8",
        "--scheduler",
        "dpm++2m-karras",
    ];
    args.extend(common_args);
    args.extend(["--out", s(&a)]);
    let out = act(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta = read_png_meta(&a).unwrap();
    assert_eq!(meta.prompt, "a cat on a mat");
    assert_eq!(meta.scheduler, "dpm++2m-karras");
    assert_eq!((meta.seed, meta.steps, meta.width), (7, 2, 32));
    assert_eq!(meta.lambdas, vec![("painted".to_string(), 0.8)]);
    assert_eq!(meta.maps_sha256.len(), 1);

    // The same settings read back from the PNG reproduce the image exactly.
    let b = tmp.path().join("b.png");
    let out = act(&[
        "imagine",
        "--model",
        s(&model),
        "--settings-from",
        s(&a),
        "--maps",
        s(&maps),
        "--out",
        s(&b),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (ia, ib) = (
        image::open(&a).unwrap().to_rgb8(),
        image::open(&b).unwrap().to_rgb8(),
    );
    assert_eq!(ia, ib, "settings from the PNG must reproduce it");

    // A strip: λ = 0 column equals a plain unsteered image.
    let strip = tmp.path().join("strip.png");
    let mut args = vec![
        "strip",
        "--prompt",
        "a cat on a mat",
        "--maps",
        s(&maps),
        "--lambdas",
        "0,1",
    ];
    args.extend(common_args);
    args.extend(["--out", s(&strip)]);
    let out = act(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sheet = image::open(&strip).unwrap().to_rgb8();
    assert!(sheet.width() >= 64 && sheet.height() >= 32);
    let plain = tmp.path().join("plain.png");
    let mut args = vec!["imagine", "--prompt", "a cat on a mat"];
    args.extend(common_args);
    args.extend(["--out", s(&plain)]);
    assert!(act(&args).status.success());
    let p = image::open(&plain).unwrap().to_rgb8();
    // Find the λ = 0 tile in the sheet: the first 32×32 block whose pixels all match.
    let found = (0..=sheet.height() - 32).any(|y| {
        (0..=sheet.width() - 32)
            .any(|x| (0..32).all(|j| (0..32).all(|i| sheet.get_pixel(x + i, y + j) == p.get_pixel(i, j))))
    });
    assert!(found, "the λ = 0 tile must equal the unsteered image");

    // Simultaneous estimation, a few prompts per pass.
    let sim = tmp.path().join("sim.safetensors");
    let out = act(&[
        "fit-image",
        "--model",
        s(&model),
        "--source",
        s(&src),
        "--target",
        s(&tgt),
        "--simultaneous",
        "--chunk",
        "3",
        "--out",
        s(&sim),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&act(&["maps-info", s(&sim)]).stdout).contains("simultaneous"));

    let list = act(&["fit-image", "--list", "--model", s(&model)]);
    assert!(text(&list.stdout).contains("style:impressionism"));
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let out = act(&[
        "imagine",
        "--model",
        s(&tmp.path().join("nope")),
        "--prompt",
        "x",
        "--out",
        s(&tmp.path().join("x.png")),
    ]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("nope") && !e.contains("panicked"), "{e}");

    // Maps fitted on an SDXL folder refused on an SD 1.5 folder.
    let (sd, xl) = (tmp.path().join("sd"), tmp.path().join("xl"));
    write_tiny_sd15(&sd, 1).unwrap();
    write_tiny_sdxl(&xl, 2).unwrap();
    let maps = tmp.path().join("xl.safetensors");
    let out = act(&[
        "fit-image",
        "--model",
        s(&xl),
        "--concept",
        "negate:cat",
        "--limit",
        "3",
        "--hooks",
        "unet-groupnorms",
        "--out",
        s(&maps),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = act(&[
        "imagine",
        "--model",
        s(&sd),
        "--prompt",
        "x",
        "--maps",
        s(&maps),
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "1",
        "--out",
        s(&tmp.path().join("y.png")),
    ]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("sdxl") && e.contains("sd1") && !e.contains("panicked"),
        "{e}"
    );
    assert!(!tmp.path().join("y.png").exists());

    // Bad sizes, steps, windows and a PNG without settings.
    for extra in [["--width", "33"], ["--steps", "0"], ["--steer-steps", "3:1"]] {
        let mut args = vec!["imagine", "--model", s(&sd), "--prompt", "x", "--out", "z.png"];
        args.extend(extra);
        let out = act(&args);
        assert!(!out.status.success(), "{extra:?}");
        assert!(!text(&out.stderr).contains("panicked"));
    }
    let junk = tmp.path().join("junk.png");
    image::RgbImage::new(4, 4).save(&junk).unwrap();
    let out = act(&[
        "imagine",
        "--model",
        s(&sd),
        "--settings-from",
        s(&junk),
        "--out",
        s(&tmp.path().join("w.png")),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("settings"), "{}", text(&out.stderr));
}
