//! A straightforward GPT-2 reference written with candle tensor ops, following Hugging Face's
//! `modeling_gpt2.py` (candle-transformers 0.11.1 has no GPT-2: its `bigcode` model uses
//! `Linear` weights and a different fused-qkv layout). Whole sequence at once, no cache, Conv1D
//! weights used as stored (`x · W + b`), candle's `layer_norm` and tanh-approximated `gelu`.

use std::collections::HashMap;

use candle_core::{D, DType, Device, IndexOp, Tensor};

/// Per layer, the activations at the five hook points (`[t, d]` each), and the logits of every
/// position (`[t, vocab]`).
pub struct Gpt2Run {
    pub layers: Vec<[Vec<f32>; 5]>,
    pub logits: Vec<Vec<f32>>,
}

fn ok<T>(r: candle_core::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

pub fn run(w: &HashMap<String, Tensor>, ids: &[u32], n_layer: usize, n_head: usize, eps: f64) -> Gpt2Run {
    let pre = if w.contains_key("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let get = |s: &str| {
        w.get(&format!("{pre}{s}"))
            .unwrap_or_else(|| panic!("no {s}"))
            .clone()
    };
    let dev = Device::Cpu;
    let t = ids.len();
    let wte = get("wte.weight");
    let d = ok(wte.dim(1));
    let hd = d / n_head;
    let ids_t = ok(Tensor::new(ids, &dev));
    let pos = ok(Tensor::arange(0u32, t as u32, &dev));
    let mut x = ok(ok(wte.index_select(&ids_t, 0)) + ok(get("wpe.weight").index_select(&pos, 0)));
    let ln = |x: &Tensor, s: &str| {
        ok(candle_nn::ops::layer_norm(
            x,
            &get(&format!("{s}.weight")),
            &get(&format!("{s}.bias")),
            eps as f32,
        ))
    };
    let conv = |x: &Tensor, s: &str| {
        ok(ok(x.matmul(&get(&format!("{s}.weight")))).broadcast_add(&get(&format!("{s}.bias"))))
    };
    let rows = |x: &Tensor| ok(ok(x.flatten_all()).to_vec1::<f32>());
    let mask: Vec<u8> = (0..t)
        .flat_map(|i| (0..t).map(move |j| u8::from(j > i)))
        .collect();
    let mask = ok(Tensor::from_vec(mask, (t, t), &dev));
    let mut layers = Vec::new();
    for i in 0..n_layer {
        let p = |s: &str| format!("h.{i}.{s}");
        let h = ln(&x, &p("ln_1"));
        let qkv = conv(&h, &p("attn.c_attn"));
        let heads = |k: usize| {
            ok(ok(ok(qkv.narrow(1, k * d, d)).reshape((t, n_head, hd))).transpose(0, 1)).contiguous()
        };
        let (q, k, v) = (ok(heads(0)), ok(heads(1)), ok(heads(2)));
        let att = ok(ok(q.matmul(&ok(k.t()))) / (hd as f64).sqrt());
        let neg = ok(ok(Tensor::new(f32::NEG_INFINITY, &dev)).broadcast_as(att.shape()));
        let att = ok(ok(mask.broadcast_as(att.shape())).where_cond(&neg, &att));
        let att = ok(candle_nn::ops::softmax(&att, D::Minus1));
        let y = ok(ok(ok(att.matmul(&v)).transpose(0, 1)).reshape((t, d)));
        let a = conv(&y, &p("attn.c_proj"));
        x = ok(&x + &a);
        let g = ln(&x, &p("ln_2"));
        let f = ok(conv(&g, &p("mlp.c_fc")).gelu());
        let m = conv(&f, &p("mlp.c_proj"));
        x = ok(&x + &m);
        layers.push([rows(&h), rows(&a), rows(&g), rows(&m), rows(&x)]);
    }
    let hf = ln(&x, "ln_f");
    let logits = ok(hf.matmul(&ok(wte.t())));
    assert_eq!(logits.dtype(), DType::F32);
    let logits = (0..t).map(|r| rows(&ok(logits.i(r)))).collect();
    Gpt2Run { layers, logits }
}
