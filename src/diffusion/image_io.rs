//! Images in and out of the diffusion pipeline: VAE tensors to RGB images, PNG files that
//! carry the settings that made them (so an image can be reproduced or re-opened in the
//! app), and labelled contact sheets (grids, λ strips, side-by-side comparisons).
//!
//! # Settings in PNG files
//!
//! [`encode_png`] stores an [`ImageMeta`] in `tEXt` chunks:
//!
//! * `act_studio`: the JSON of the whole [`ImageMeta`]. This is the authoritative copy.
//!   `tEXt` is Latin-1 only, so every non-ASCII character of the JSON is written as a
//!   `\uXXXX` escape (a surrogate pair above U+FFFF): the chunk is pure ASCII and still
//!   valid JSON that decodes to the exact original strings.
//! * Human-readable copies for other tools (image viewers, `exiftool`…): `prompt`,
//!   `negative_prompt`, `seed`, `steps`, `guidance`, `size` (`WxH`), `scheduler`, `lambda`
//!   (`name=value;…`), `maps_sha256` (`name=hash;…`), `model` and `Software`
//!   (`act-studio <version>`). Characters outside Latin-1 become `?` in these.
//!
//! [`png_meta_from_bytes`] / [`read_png_meta`] read the `act_studio` key back from `tEXt`,
//! `zTXt` or `iTXt`, before or after the image data, and never panic on bad input.

mod font;
mod grid;

use std::fmt::Write as _;
use std::io::Cursor;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Deserializer, Serialize};

use crate::diffusion::{DiffusionError, Result};
use crate::transport::atomic_write;

pub use grid::{GridLabels, compose_grid, format_lambda, side_by_side, strip};

/// The `tEXt` keyword holding the JSON of [`ImageMeta`].
pub const META_KEY: &str = "act_studio";

/// Largest settings text we accept from a compressed chunk (guards against zip bombs).
const MAX_META_TEXT: usize = 8 << 20;

/// The 8-byte signature every PNG file starts with.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Converts a decoded VAE batch `[b, 3, H, W]` (any float dtype, any device, values about
/// `[-1, 1]`) into `b` RGB images: pixel = round(clamp((x + 1) / 2, 0, 1) · 255).
/// Non-finite values become 0.
pub fn tensor_to_images(x: &Tensor) -> Result<Vec<RgbImage>> {
    let dims = x.dims();
    let &[b, c, h, w] = dims else {
        return Err(DiffusionError::BadInput(format!(
            "expected an image batch of shape [b, 3, H, W], got {dims:?}"
        )));
    };
    if c != 3 {
        return Err(DiffusionError::BadInput(format!(
            "expected 3 colour channels in an image batch [b, 3, H, W], got shape {dims:?}"
        )));
    }
    let (w32, h32) = match (u32::try_from(w), u32::try_from(h)) {
        (Ok(w32), Ok(h32)) => (w32, h32),
        _ => {
            return Err(DiffusionError::BadInput(format!(
                "image of {w}×{h} pixels is too large"
            )));
        }
    };
    let values: Vec<f32> = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1()?;
    let plane = h * w;
    let mut out = Vec::with_capacity(b);
    for n in 0..b {
        let base = n * 3 * plane;
        let mut raw = Vec::with_capacity(3 * plane);
        for p in 0..plane {
            for ch in 0..3 {
                raw.push(to_byte(values[base + ch * plane + p]));
            }
        }
        let img = RgbImage::from_raw(w32, h32, raw)
            .ok_or_else(|| DiffusionError::Backend("image buffer size mismatch".into()))?;
        out.push(img);
    }
    Ok(out)
}

/// One channel value in about `[-1, 1]` to a byte.
fn to_byte(v: f32) -> u8 {
    if v.is_finite() {
        (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8
    } else {
        0
    }
}

/// Everything needed to reproduce (or re-open) a generated image, stored in its PNG.
///
/// Every field has a default, so older or partial metadata still reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageMeta {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (empty when none).
    pub negative_prompt: String,
    /// Seed of the initial noise.
    pub seed: u64,
    /// Number of denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[serde(deserialize_with = "f32_or_null")]
    pub guidance: f32,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Scheduler name.
    pub scheduler: String,
    /// λ per concept, in stack order.
    #[serde(deserialize_with = "lambdas_or_null")]
    pub lambdas: Vec<(String, f32)>,
    /// Concept → SHA-256 of its maps file data.
    pub maps_sha256: Vec<(String, String)>,
    /// Model folder name or id.
    pub model: String,
    /// Fingerprint of the model weights.
    pub model_fingerprint: String,
    /// Steps steered, `first..end` (`None`: every step).
    pub steer_window: Option<(usize, usize)>,
    /// Version of the app that made the image.
    pub app_version: String,
}

/// JSON writes non-finite floats as `null`; read those back as NaN instead of failing.
fn f32_or_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// As [`f32_or_null`], for the λ list.
fn lambdas_or_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<(String, f32)>, D::Error> {
    let v = Vec::<(String, Option<f32>)>::deserialize(d)?;
    Ok(v.into_iter().map(|(k, l)| (k, l.unwrap_or(f32::NAN))).collect())
}

/// The JSON of `meta` with every non-ASCII character escaped as `\uXXXX` (UTF-16 code
/// units): pure ASCII, hence valid Latin-1 for a `tEXt` chunk, and still valid JSON.
fn meta_json_ascii(meta: &ImageMeta) -> Result<String> {
    let json = serde_json::to_string(meta)
        .map_err(|e| DiffusionError::BadInput(format!("cannot write image settings as JSON: {e}")))?;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            // serde_json only emits non-ASCII inside strings, where \u escapes are valid.
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    Ok(out)
}

/// `text` made valid for a `tEXt` chunk: characters outside Latin-1 (and NUL) become `?`.
fn latin1_lossy(text: &str) -> String {
    text.chars()
        .map(|c| if c != '\0' && (c as u32) <= 0xFF { c } else { '?' })
        .collect()
}

/// The human-readable `(keyword, text)` pairs written next to the JSON.
fn readable_chunks(meta: &ImageMeta) -> Vec<(&'static str, String)> {
    let version = if meta.app_version.is_empty() {
        env!("CARGO_PKG_VERSION")
    } else {
        &meta.app_version
    };
    let lambdas: Vec<String> = meta.lambdas.iter().map(|(k, l)| format!("{k}={l}")).collect();
    let hashes: Vec<String> = meta.maps_sha256.iter().map(|(k, h)| format!("{k}={h}")).collect();
    vec![
        ("prompt", meta.prompt.clone()),
        ("negative_prompt", meta.negative_prompt.clone()),
        ("seed", meta.seed.to_string()),
        ("steps", meta.steps.to_string()),
        ("guidance", meta.guidance.to_string()),
        ("size", format!("{}x{}", meta.width, meta.height)),
        ("scheduler", meta.scheduler.clone()),
        ("lambda", lambdas.join(";")),
        ("maps_sha256", hashes.join(";")),
        ("model", meta.model.clone()),
        ("Software", format!("act-studio {version}")),
    ]
}

fn encode_error(e: png::EncodingError) -> DiffusionError {
    DiffusionError::BadInput(format!("cannot encode PNG: {e}"))
}

/// Encodes `img` as an 8-bit RGB PNG, with `meta` (when given) in `tEXt` chunks as
/// described in the [module docs](self). Without `meta` the PNG has no text chunks.
pub fn encode_png(img: &RgbImage, meta: Option<&ImageMeta>) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(DiffusionError::BadInput(format!(
            "cannot encode an empty {w}×{h} image as PNG"
        )));
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        if let Some(meta) = meta {
            enc.add_text_chunk(META_KEY.to_string(), meta_json_ascii(meta)?)
                .map_err(encode_error)?;
            for (key, text) in readable_chunks(meta) {
                enc.add_text_chunk(key.to_string(), latin1_lossy(&text))
                    .map_err(encode_error)?;
            }
        }
        let mut writer = enc.write_header().map_err(encode_error)?;
        writer.write_image_data(img.as_raw()).map_err(encode_error)?;
        writer.finish().map_err(encode_error)?;
    }
    Ok(bytes)
}

/// Writes `img` (with `meta`, when given) to `path` as a PNG, atomically.
pub fn save_png(path: &Path, img: &RgbImage, meta: Option<&ImageMeta>) -> Result<()> {
    let bytes = encode_png(img, meta)?;
    atomic_write(path, &bytes).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the AcT Studio settings stored in the PNG file at `path`.
pub fn read_png_meta(path: &Path) -> Result<ImageMeta> {
    let bytes = crate::transport::regular_file::read_regular(path).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    meta_from_named_bytes(&bytes, &path.display().to_string())
}

/// Reads the AcT Studio settings stored in PNG `bytes`.
pub fn png_meta_from_bytes(bytes: &[u8]) -> Result<ImageMeta> {
    meta_from_named_bytes(bytes, "this image")
}

/// The settings text under [`META_KEY`] in `info`, from `tEXt`, `iTXt` or `zTXt`.
fn find_meta_text(info: &png::Info<'_>) -> Option<std::result::Result<String, String>> {
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == META_KEY)
    {
        return Some(Ok(t.text.clone()));
    }
    if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == META_KEY) {
        let mut t = t.clone();
        return Some(
            t.decompress_text_with_limit(MAX_META_TEXT)
                .and_then(|()| t.get_text())
                .map_err(|e| e.to_string()),
        );
    }
    if let Some(t) = info.compressed_latin1_text.iter().find(|t| t.keyword == META_KEY) {
        let mut t = t.clone();
        return Some(
            t.decompress_text_with_limit(MAX_META_TEXT)
                .and_then(|()| t.get_text())
                .map_err(|e| e.to_string()),
        );
    }
    None
}

/// [`png_meta_from_bytes`], naming the source `name` in errors.
fn meta_from_named_bytes(bytes: &[u8], name: &str) -> Result<ImageMeta> {
    if !bytes.starts_with(&PNG_SIGNATURE) {
        return Err(DiffusionError::BadInput(format!("{name} is not a PNG file")));
    }
    let damaged =
        |e: png::DecodingError| DiffusionError::BadInput(format!("{name} is a damaged PNG file: {e}"));
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_ignore_text_chunk(false);
    let mut reader = decoder.read_info().map_err(damaged)?;
    let mut found = find_meta_text(reader.info());
    if found.is_none() {
        // Text chunks may also follow the image data: read to the end of the file.
        reader.finish().map_err(damaged)?;
        found = find_meta_text(reader.info());
    }
    let text = match found {
        Some(Ok(text)) => text,
        Some(Err(e)) => {
            return Err(DiffusionError::BadInput(format!(
                "{name}: the AcT Studio settings in it cannot be read: {e}"
            )));
        }
        None => {
            return Err(DiffusionError::BadInput(format!(
                "{name} has no AcT Studio settings (it was not saved by AcT Studio, or another program removed them)"
            )));
        }
    };
    serde_json::from_str(&text).map_err(|e| {
        DiffusionError::BadInput(format!("{name}: the AcT Studio settings in it are damaged: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn sample_meta() -> ImageMeta {
        ImageMeta {
            prompt: "a café with a \"λ\" sign 🦀\nsecond line\t\\ end".into(),
            negative_prompt: "blurry, 😀, ünïcödé".into(),
            seed: u64::MAX - 7,
            steps: 25,
            guidance: 7.5,
            width: 4,
            height: 3,
            scheduler: "euler_a".into(),
            lambdas: vec![("cat→dog".into(), 0.5), ("style".into(), -1.25)],
            maps_sha256: vec![
                ("cat→dog".into(), "ab".repeat(32)),
                ("style".into(), "cd".repeat(32)),
            ],
            model: "sd-turbo".into(),
            model_fingerprint: "fp:1234".into(),
            steer_window: Some((2, 20)),
            app_version: "9.9.9".into(),
        }
    }

    fn sample_image() -> RgbImage {
        RgbImage::from_fn(4, 3, |x, y| {
            Rgb([(x * 60) as u8, (y * 100) as u8, (x * 7 + y * 31) as u8])
        })
    }

    fn text_chunks(bytes: &[u8]) -> Vec<(String, String)> {
        let reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
        reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .collect()
    }

    #[test]
    fn metadata_and_pixels_round_trip() {
        let meta = sample_meta();
        let img = sample_image();
        let bytes = encode_png(&img, Some(&meta)).unwrap();
        assert_eq!(png_meta_from_bytes(&bytes).unwrap(), meta);
        let back = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8();
        assert_eq!(back, img);
    }

    #[test]
    fn json_chunk_is_ascii_and_readable_keys_are_present() {
        let meta = sample_meta();
        let bytes = encode_png(&sample_image(), Some(&meta)).unwrap();
        let chunks = text_chunks(&bytes);
        let get = |k: &str| chunks.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let json = get(META_KEY).unwrap();
        assert!(json.is_ascii());
        assert!(
            json.contains("\\u00e9") && json.contains("\\u03bb") && json.contains("\\ud83e\\udd80"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ImageMeta>(&json).unwrap(), meta);
        for k in [
            "prompt",
            "negative_prompt",
            "seed",
            "steps",
            "guidance",
            "size",
            "scheduler",
            "lambda",
            "maps_sha256",
            "model",
            "Software",
        ] {
            assert!(get(k).is_some(), "missing key {k}");
        }
        assert_eq!(
            get("prompt").unwrap(),
            "a café with a \"?\" sign ?\nsecond line\t\\ end"
        );
        assert_eq!(get("seed").unwrap(), (u64::MAX - 7).to_string());
        assert_eq!(get("steps").unwrap(), "25");
        assert_eq!(get("guidance").unwrap(), "7.5");
        assert_eq!(get("size").unwrap(), "4x3");
        assert_eq!(get("lambda").unwrap(), "cat?dog=0.5;style=-1.25");
        assert_eq!(get("Software").unwrap(), "act-studio 9.9.9");
    }

    #[test]
    fn save_and_read_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.png");
        let meta = sample_meta();
        save_png(&p, &sample_image(), Some(&meta)).unwrap();
        assert_eq!(read_png_meta(&p).unwrap(), meta);
        let e = read_png_meta(&dir.path().join("missing.png")).unwrap_err();
        assert!(matches!(e, DiffusionError::Io { .. }), "{e}");
        assert!(save_png(&dir.path().join("no/such/dir.png"), &sample_image(), None).is_err());
    }

    #[test]
    fn png_without_settings_is_a_clear_error() {
        let bytes = encode_png(&sample_image(), None).unwrap();
        assert!(text_chunks(&bytes).is_empty());
        let e = png_meta_from_bytes(&bytes).unwrap_err();
        assert!(e.to_string().contains("has no AcT Studio settings"), "{e}");
    }

    #[test]
    fn not_png_and_bad_json_are_clear_errors() {
        let e = png_meta_from_bytes(b"GIF89a....").unwrap_err();
        assert!(e.to_string().contains("not a PNG"), "{e}");
        let e = png_meta_from_bytes(b"").unwrap_err();
        assert!(e.to_string().contains("not a PNG"), "{e}");

        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, 1, 1);
            enc.set_color(png::ColorType::Rgb);
            enc.add_text_chunk(META_KEY.into(), "{\"prompt\": ".into())
                .unwrap();
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[1, 2, 3]).unwrap();
            w.finish().unwrap();
        }
        let e = png_meta_from_bytes(&bytes).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    /// Metadata written by another writer: partial JSON, compressed chunks, and a chunk
    /// placed after the image data.
    #[test]
    fn reads_partial_compressed_and_trailing_settings() {
        let partial = "{\"prompt\":\"only this\",\"guidance\":null,\"future_field\":1}";
        for kind in ["ztxt", "itxt"] {
            let mut bytes = Vec::new();
            {
                let mut enc = png::Encoder::new(&mut bytes, 1, 1);
                enc.set_color(png::ColorType::Rgb);
                if kind == "ztxt" {
                    enc.add_ztxt_chunk(META_KEY.into(), partial.into()).unwrap();
                } else {
                    enc.add_itxt_chunk(META_KEY.into(), partial.into()).unwrap();
                }
                let mut w = enc.write_header().unwrap();
                w.write_image_data(&[1, 2, 3]).unwrap();
                w.finish().unwrap();
            }
            let m = png_meta_from_bytes(&bytes).unwrap();
            assert_eq!(m.prompt, "only this");
            assert!(m.guidance.is_nan());
            assert_eq!(m.steps, 0);
            assert_eq!(m.steer_window, None);
        }
        // tEXt after IDAT: splice a chunk in just before IEND.
        let plain = encode_png(&sample_image(), None).unwrap();
        let iend = plain.len() - 12;
        let data = format!("{META_KEY}\0{partial}");
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = b"tEXt".to_vec();
        body.extend_from_slice(data.as_bytes());
        chunk.extend_from_slice(&body);
        chunk.extend_from_slice(&crc32fast_like(&body).to_be_bytes());
        let mut spliced = plain[..iend].to_vec();
        spliced.extend_from_slice(&chunk);
        spliced.extend_from_slice(&plain[iend..]);
        assert_eq!(png_meta_from_bytes(&spliced).unwrap().prompt, "only this");
    }

    /// CRC-32 (IEEE) as PNG uses it, bit by bit: enough for a test.
    fn crc32fast_like(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn non_finite_values_survive() {
        let meta = ImageMeta {
            guidance: f32::INFINITY,
            lambdas: vec![("x".into(), f32::NAN)],
            ..Default::default()
        };
        let bytes = encode_png(&sample_image(), Some(&meta)).unwrap();
        let back = png_meta_from_bytes(&bytes).unwrap();
        assert!(back.guidance.is_nan());
        assert!(back.lambdas[0].1.is_nan());
    }

    /// Truncations, bit flips and garbage: always an error or a value, never a panic.
    #[test]
    fn damaged_bytes_never_panic() {
        let good = encode_png(&sample_image(), Some(&sample_meta())).unwrap();
        for n in 0..good.len() {
            let _ = png_meta_from_bytes(&good[..n]);
        }
        // Deterministic pseudo-random corruption (xorshift).
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..2000 {
            let mut bad = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % bad.len();
                bad[i] ^= (next() % 255 + 1) as u8;
            }
            let _ = png_meta_from_bytes(&bad);
            // Garbage after a valid signature.
            let len = (next() % 200) as usize;
            let mut g = PNG_SIGNATURE.to_vec();
            g.extend((0..len).map(|_| next() as u8));
            let _ = png_meta_from_bytes(&g);
        }
        assert!(png_meta_from_bytes(&PNG_SIGNATURE).is_err());
    }

    #[test]
    fn empty_image_cannot_be_encoded() {
        assert!(encode_png(&RgbImage::new(0, 5), None).is_err());
    }

    #[test]
    fn tensor_to_images_known_values() {
        // b=2, 3 channels, H=1, W=2.
        let v: Vec<f32> = vec![
            -1.0,
            1.0, // image 0, R
            0.0,
            2.0, // G
            -3.0,
            0.5, // B
            f32::NAN,
            -0.999, // image 1, R
            0.001,
            0.996, // G
            -0.5,
            1.0, // B
        ];
        let t = Tensor::from_vec(v, (2, 3, 1, 2), &Device::Cpu).unwrap();
        let ims = tensor_to_images(&t).unwrap();
        assert_eq!(ims.len(), 2);
        assert_eq!(ims[0].dimensions(), (2, 1));
        assert_eq!(ims[0].as_raw(), &vec![0, 128, 0, 255, 255, 191]);
        assert_eq!(ims[1].as_raw(), &vec![0, 128, 64, 0, 254, 255]);
        // Other float dtypes give the same bytes.
        for dt in [DType::F16, DType::BF16, DType::F64] {
            let t = Tensor::from_vec(vec![-1.0f32, 0.0, 1.0], (1, 3, 1, 1), &Device::Cpu)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            assert_eq!(
                tensor_to_images(&t).unwrap()[0].as_raw(),
                &vec![0, 128, 255],
                "{dt:?}"
            );
        }
        // Non-contiguous input (a transposed view) is handled.
        let base = Tensor::from_vec(
            (0..12).map(|i| i as f32 / 6.0 - 1.0).collect::<Vec<_>>(),
            (1, 3, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let tr = base.transpose(2, 3).unwrap();
        let a = tensor_to_images(&tr).unwrap();
        let b = tensor_to_images(&tr.contiguous().unwrap()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, tensor_to_images(&base).unwrap());
    }

    #[test]
    fn tensor_to_images_rejects_other_shapes() {
        for shape in [vec![3usize, 2, 2], vec![1, 4, 2, 2], vec![1, 1, 3, 2, 2]] {
            let n: usize = shape.iter().product();
            let t = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(t.elem_count(), n);
            let e = tensor_to_images(&t).unwrap_err();
            assert!(e.to_string().contains("[b, 3, H, W]"), "{e}");
        }
    }
}
