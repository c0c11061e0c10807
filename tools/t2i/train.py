"""Trains AcT Studio's demo text-to-image model ("act-shapes") from scratch on the CPU and
writes it as an ordinary diffusers folder (f16 safetensors).

    python tools/t2i/train.py --work /tmp/t2i-work --out models/act-shapes-t2i

Stages (each resumes from the work folder if it was already done; `--stage NAME` runs one):
  data     40 000 procedural 64 × 64 captioned pictures (tools/t2i/shapes.py), seed 1
  tokenizer a CLIP BPE vocabulary (vocab.json, merges.txt) learnt from the caption words
  vae      AutoencoderKL 64 × 64 × 3 ↔ 16 × 16 × 4 (batch 16), until its reconstructions keep the
           object's colour on ≥ 97 % of 512 check pictures (or --vae-minutes, 30; `--stage vae` on a
           finished VAE trains it further, up to the same total)
  latents  every picture's latent (posterior mean), and the scaling factor 1 / std
  unet     CLIPTextModel + UNet2DConditionModel trained together (ε prediction, SD's
           scaled-linear 1000-step schedule, 10 % empty captions for guidance, batch 32) for
           --unet-minutes (75)
  export   the diffusers folder in f16, MANIFEST.json (SHA-256 of every file, sizes, the
           training log) and a sample sheet

Seeds are fixed (data 1, check set 2, torch 0); two threads (torch.set_num_threads(2)).
Each stage prints how long it ran; the whole run's times go into MANIFEST.json.

Fine-tuning a model already made (`--init-from DIR`, a folder this program wrote): the VAE is
taken from DIR with its encoder kept and its decoder trained further for --vae-minutes, the
latents keep DIR's scaling factor, and the text encoder and UNet start from DIR's weights
(`--unet-lr` sets the peak learning rate of the same warm-up + cosine schedule). MANIFEST.json
then keeps DIR's own training record under "init_from". This is for changes to the picture set
that a model already made can learn in minutes rather than in a new 1.5-hour run.
"""

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

MAX_LEN = 16
N_TRAIN = 40_000


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- tokenizer


def bytes_to_unicode():
    """GPT-2 / CLIP's byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(words):
    """Merges (in rank order) after which every word is one token, learnt as BPE is: the most
    frequent adjacent pair first (ties: the smaller pair)."""
    seqs = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges = []
    while any(len(s) > 1 for s in seqs):
        pairs = Counter()
        for s in seqs:
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += 1
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i, s in enumerate(seqs):
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == best:
                    out.append(s[j] + s[j + 1])
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
    return merges


def write_tokenizer(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = learn_bpe(shapes.words())
    vocab += [a + b for a, b in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (d / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LEN,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "do_lower_case": True}, indent=1))
    return len(vocab)


def load_tokenizer(d: Path):
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(str(d))


def tokenize(tok, caps):
    return tok(caps, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids


# ---------------------------------------------------------------- models


def make_vae(scaling=1.0):
    from diffusers import AutoencoderKL
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=16, sample_size=64, scaling_factor=scaling, mid_block_add_attention=False)


def make_text_encoder(vocab_size, eos_id):
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LEN, hidden_act="quick_gelu",
        projection_dim=64, bos_token_id=vocab_size - 2, eos_token_id=eos_id, pad_token_id=eos_id)
    return CLIPTextModel(cfg)


def make_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=32)


def noise_schedule():
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon",
                         clip_sample=False, steps_offset=1)


def to_tensor(imgs):
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------- stages


def stage_data(work: Path):
    t = time.time()
    imgs, masks, caps, specs = shapes.make_set(N_TRAIN, seed=1)
    np.savez(work / "data.npz", imgs=imgs, masks=masks.astype(np.uint8))
    (work / "captions.json").write_text(json.dumps(caps))
    cimgs, cmasks, ccaps, cspecs = shapes.make_set(512, seed=2)
    np.savez(work / "check.npz", imgs=cimgs, masks=cmasks.astype(np.uint8))
    (work / "check.json").write_text(json.dumps([[c, *s] for c, s in zip(ccaps, cspecs)]))
    log(f"data: {N_TRAIN} + 512 pictures in {time.time() - t:.0f} s")


def recon_loss(rec, x, masks):
    """The VAE's reconstruction loss: L1 + L2 per pixel, the object's pixels (`masks`, [b, 64,
    64] in [0, 1]) counted 5×."""
    w = 1.0 + 4.0 * torch.from_numpy(masks)[:, None]
    return (w * ((rec - x).abs() + (rec - x) ** 2)).mean()


def colour_accuracy(vae, imgs, masks, specs):
    """Share of coloured check pictures whose reconstruction keeps the object's colour."""
    ok = n = 0
    with torch.no_grad():
        for i in range(0, len(imgs), 64):
            x = to_tensor(imgs[i:i + 64])
            rec = to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample)
            for j in range(len(rec)):
                spec = specs[i + j]
                if spec[5] == "sketch":
                    continue
                n += 1
                ok += shapes.colour_of(rec[j], masks[i + j]) == spec[1]
    return ok / max(n, 1)


def stage_vae(work: Path, minutes: float):
    torch.manual_seed(0)
    d = np.load(work / "data.npz")
    imgs, masks = d["imgs"], d["masks"].astype(np.float32)
    c = np.load(work / "check.npz")
    specs = json.loads((work / "check.json").read_text())
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    rng = np.random.default_rng(3)
    t0, step, acc = time.time(), 0, 0.0
    if (work / "vae.pt").exists():  # more training for a VAE that stopped on its time limit
        vae.load_state_dict(torch.load(work / "vae.pt"))
        done = json.loads((work / "vae.json").read_text())
        if "from" in done:
            sys.exit("train.py: this work folder's VAE is a fine-tune (--init-from); "
                     "rerun with the same --init-from, or use a fresh --work")
        step, t0 = done["steps"], t0 - done["seconds"]
        rng = np.random.default_rng(3 + step)
        for g in opt.param_groups:
            g["lr"] = 3e-4
        log(f"vae: resumed at step {step}")
    log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters")
    while True:
        idx = rng.integers(0, len(imgs), 16)
        x = to_tensor(imgs[idx])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = recon_loss(rec, x, masks[idx]) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"vae step {step} loss {loss.item():.4f}")
        if step % 500 == 0:
            vae.eval()
            acc = colour_accuracy(vae, c["imgs"], c["masks"].astype(np.float32), specs)
            vae.train()
            log(f"vae step {step}: colour kept on {acc:.1%} of check pictures")
            if acc >= 0.97 and step >= 2000 or time.time() - t0 > minutes * 60:
                break
            if step == 2500:
                for g in opt.param_groups:
                    g["lr"] = 3e-4
    vae.eval()
    torch.save(vae.state_dict(), work / "vae.pt")
    (work / "vae.json").write_text(json.dumps({"steps": step, "colour_accuracy": acc, "seconds": time.time() - t0}))
    log(f"vae: {step} steps in {time.time() - t0:.0f} s, colour kept {acc:.1%}")


def stage_vae_from(work: Path, src: Path, minutes: float):
    """The VAE of an exported folder (f16 weights → f32) with its decoder trained further for
    `minutes` on this run's pictures (batch 16, lr 3e-4, the loss of `stage_vae`). The encoder
    stays as it was, so every latent the folder's UNet learnt keeps its meaning; only what the
    decoder makes of them is taught anew (pictures the first VAE never saw)."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    t0 = time.time()
    vae = make_vae()
    vae.load_state_dict(AutoencoderKL.from_pretrained(str(src / "vae")).float().state_dict())
    d = np.load(work / "data.npz")
    imgs, masks = d["imgs"], d["masks"].astype(np.float32)
    c = np.load(work / "check.npz")
    cimgs, cmasks = c["imgs"], c["masks"].astype(np.float32)
    specs = json.loads((work / "check.json").read_text())
    vae.eval()
    before = colour_accuracy(vae, cimgs, cmasks, specs)
    log(f"vae: taken from {src}, colour kept {before:.1%}; training its decoder for {minutes} min")
    dec = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(dec, lr=3e-4, weight_decay=0.0)
    rng = np.random.default_rng(7)
    step = 0
    vae.decoder.train()
    while time.time() - t0 < minutes * 60:
        idx = rng.integers(0, len(imgs), 16)
        x = to_tensor(imgs[idx])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample
        loss = recon_loss(rec, x, masks[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec, 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"vae decoder step {step} loss {loss.item():.4f}")
    vae.eval()
    acc = colour_accuracy(vae, cimgs, cmasks, specs)
    torch.save(vae.state_dict(), work / "vae.pt")
    (work / "vae.json").write_text(json.dumps({
        "from": "the init_from folder's VAE, decoder trained further", "decoder_steps": step,
        "init_from": init_id(src),
        "colour_accuracy_before": before, "colour_accuracy": acc, "seconds": time.time() - t0}))
    log(f"vae: decoder {step} steps in {time.time() - t0:.0f} s, colour kept {before:.1%} → {acc:.1%}")


def stage_latents(work: Path, scale=None):
    t = time.time()
    vae = make_vae()
    vae.load_state_dict(torch.load(work / "vae.pt"))
    vae.eval()
    imgs = np.load(work / "data.npz")["imgs"]
    out = np.empty((len(imgs), 4, 16, 16), np.float32)
    with torch.no_grad():
        for i in range(0, len(imgs), 256):
            out[i:i + 256] = vae.encode(to_tensor(imgs[i:i + 256])).latent_dist.mean.numpy()
    scale_given = scale is not None
    scale = float(1.0 / out.std()) if scale is None else scale
    np.save(work / "latents.npy", out)
    (work / "latents.json").write_text(json.dumps({"scaling_factor": scale, "mean": float(out.mean()),
                                                   "scale_from_init": scale_given}))
    log(f"latents: std {out.std():.4f} → scaling factor {scale:.5f}, in {time.time() - t:.0f} s")


def stage_unet(work: Path, minutes: float, peak_lr: float = 1e-3, init_from: Path = None, command: str = ""):
    torch.manual_seed(0)
    tok = load_tokenizer(work / "tokenizer")
    caps = json.loads((work / "captions.json").read_text())
    ids = tokenize(tok, caps)
    empty = tokenize(tok, [""])[0]
    lat = torch.from_numpy(np.load(work / "latents.npy"))
    scale = json.loads((work / "latents.json").read_text())["scaling_factor"]
    lat = lat * scale
    te = make_text_encoder(len(tok), tok.eos_token_id)
    unet = make_unet()
    sched = noise_schedule()
    params = list(te.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=peak_lr, weight_decay=1e-2)
    state = {"step": 0, "seconds": 0.0, "losses": []}
    if init_from is not None and not (work / "unet-ckpt.pt").exists():
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(str(init_from / "unet")).float().state_dict())
        te.load_state_dict(CLIPTextModel.from_pretrained(str(init_from / "text_encoder")).float().state_dict())
        log(f"unet: text encoder and UNet start from {init_from}")
    if (work / "unet-ckpt.pt").exists():
        ck = torch.load(work / "unet-ckpt.pt")
        te.load_state_dict(ck["te"])
        unet.load_state_dict(ck["unet"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        if state.get("init_from") != (init_id(init_from) if init_from is not None else None):
            sys.exit("train.py: unet-ckpt.pt in this work folder was not trained from the same "
                     "--init-from (or was, and this run has none); use a fresh --work")
        log(f"unet: resumed at step {state['step']}")
    log(f"unet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, "
        f"text encoder {sum(p.numel() for p in te.parameters()) / 1e6:.2f} M")
    state["init_from"] = init_id(init_from) if init_from is not None else None
    runs = state.setdefault("runs", [])
    runs.append({"command": command, "peak_lr": peak_lr, "minutes": minutes, "from_step": state["step"]})
    rng = np.random.default_rng(4 + state["step"])
    total = minutes * 60
    t_start = time.time() - state["seconds"]

    def save():
        state["seconds"] = time.time() - t_start
        torch.save({"te": te.state_dict(), "unet": unet.state_dict(), "opt": opt.state_dict(), "state": state},
                   work / "unet-ckpt.tmp")
        os.replace(work / "unet-ckpt.tmp", work / "unet-ckpt.pt")

    acc_loss = []
    while time.time() - t_start < total:
        frac = (time.time() - t_start) / total
        lr = peak_lr * min(1.0, (state["step"] + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.from_numpy(rng.integers(0, len(lat), 32))
        x0 = lat[idx]
        b_ids = ids[idx].clone()
        drop = torch.from_numpy(rng.random(32) < 0.1)
        b_ids[drop] = empty
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (32,))
        xt = sched.add_noise(x0, noise, t)
        cond = te(b_ids)[0]
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["step"] += 1
        acc_loss.append(loss.item())
        if state["step"] % 100 == 0:
            m = float(np.mean(acc_loss))
            state["losses"].append((state["step"], m))
            acc_loss = []
            log(f"unet step {state['step']} loss {m:.4f} lr {lr:.2e} ({(time.time() - t_start) / 60:.1f} min)")
        if state["step"] % 500 == 0:
            save()
    save()
    log(f"unet: {state['step']} steps in {state['seconds']:.0f} s")


def write_concepts(d: Path):
    """The model's own image concepts (`act_studio_concepts.json`, read by AcT Studio): style
    induction (plain captions → the same + the style's words) and colour negation ("a red …"
    → "a …"), 48 caption pairs each, drawn from the training grammar without held-out pairs."""
    rng = np.random.default_rng(6)

    def plain(colour=None, shape=None):
        while True:
            c = colour or rng.choice(list(shapes.COLOURS))
            sh = shape or rng.choice(shapes.SHAPES)
            if (c, sh) not in shapes.HELD_OUT:
                break
        size = rng.choice([None, None, "small", "large"])
        pos = rng.choice([None, None, "on the left", "on the right", "at the top", "at the bottom"])
        return c, sh, size, pos

    concepts = []
    for style, name in [("neon", "neon"), ("pixel", "pixel_art"), ("sketch", "sketch")]:
        specs = [plain() for _ in range(48)]
        concept = {
            "name": f"style:{name}",
            "about": f"plain captions → the same captions + \"{shapes.STYLES[style]}\"",
            "source": [shapes.caption(*sp, None) for sp in specs],
            "target": [shapes.caption(*sp, style) for sp in specs],
        }
        if style == "pixel":
            # Blockiness is a local texture: fitted on every pixel, not on per-prompt means, where
            # the caption enters (cross-attention), with joint maps. Measured on the grey-default
            # model: per-neuron maps on the UNet norms made blockiness fall (0.353 → 0.241).
            concept["about"] = (f"plain captions → the same captions + \"{shapes.STYLES[style]}\"; fitted on "
                                "every pixel of the cross-attention outputs with one joint Gaussian map per "
                                "hook point (a local texture that per-prompt means dilute)")
            concept["pooling"] = "positions"
            concept["hooks"] = "unet-cross-attention"
            concept["method"] = "joint-gaussian"
        concepts.append(concept)
    for colour in shapes.COLOURS:
        specs = [plain(colour=colour) for _ in range(48)]
        concepts.append({
            "name": f"negate:{colour}",
            "about": f"\"a {colour} …\" → \"a …\" (drawn grey: an object whose caption names no colour "
                     "is grey); fitted on every "
                     "pixel of the cross-attention outputs, where the caption's colour enters the image, "
                     "with one joint Gaussian map per hook point (the colour lives in how the channels "
                     "move together)",
            "source": [shapes.caption(*sp, None) for sp in specs],
            "target": [shapes.caption(*sp, None, name_colour=False) for sp in specs],
            # The colour is local (the object's pixels) and comes in through cross-attention.
            "hooks": "unet-cross-attention",
            "pooling": "positions",
            # Per-neuron maps match each channel's marginal and leave the colour (AcT Studio's
            # joint-gaussian estimator moves the channels together).
            "method": "joint-gaussian",
        })
    (d / "act_studio_concepts.json").write_text(json.dumps({"concepts": concepts}, indent=1))


def sha256(p: Path):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage_export(work: Path, out: Path, init_from: Path = None, command: str = "tools/t2i/train.py"):
    from diffusers import DDIMScheduler
    t = time.time()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(work / "tokenizer", tmp / "tokenizer")
    tok = load_tokenizer(work / "tokenizer")
    lat = json.loads((work / "latents.json").read_text())
    vae = make_vae(lat["scaling_factor"])
    vae.load_state_dict(torch.load(work / "vae.pt"))
    ck = torch.load(work / "unet-ckpt.pt")
    te = make_text_encoder(len(tok), tok.eos_token_id)
    te.load_state_dict(ck["te"])
    unet = make_unet()
    unet.load_state_dict(ck["unet"])
    vae.half().save_pretrained(tmp / "vae", safe_serialization=True)
    unet.half().save_pretrained(tmp / "unet", safe_serialization=True)
    te.half().save_pretrained(tmp / "text_encoder", safe_serialization=True)
    s = noise_schedule()
    DDIMScheduler.from_config(s.config, set_alpha_to_one=False).save_pretrained(tmp / "scheduler")
    import diffusers
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "_act_studio_defaults": {"steps": 20, "guidance": 4.0},
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    write_concepts(tmp)
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    logs = {name: json.loads((work / f"{name}.json").read_text()) for name in ["vae", "latents"]}
    logs["unet"] = {"steps": ck["state"]["step"], "seconds": ck["state"]["seconds"],
                    "runs": ck["state"].get("runs", []),
                    "loss_every_100_steps": ck["state"]["losses"]}
    manifest = {
        "name": "act-shapes-t2i",
        "made_by": f"python {command} (tools/t2i/requirements.txt), CPU, 2 threads",
        "data": f"{N_TRAIN} procedural 64x64 pictures (tools/t2i/shapes.py, seed 1); "
                f"held-out colour-shape pairs: {sorted(shapes.HELD_OUT)}",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "training": logs,
        **({"init_from": init_from_record(init_from)} if init_from is not None else {}),
        "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"export: {out} ({size / 1e6:.1f} MB) in {time.time() - t:.0f} s")


def init_id(src: Path):
    """SHA-256 of a folder's MANIFEST.json: which model a fine-tune started from."""
    return sha256(src / "MANIFEST.json")


def check_work_for_init(work: Path, init: Path):
    """Exits when files already in `work` were not made from `init` (a fine-tune that would
    silently reuse a from-scratch VAE, latents or UNet checkpoint)."""
    vae = work / "vae.json"
    if vae.exists() and json.loads(vae.read_text()).get("init_from") != init_id(init):
        sys.exit(f"train.py: {work} holds a VAE not fine-tuned from {init}; use a fresh --work")
    lat = work / "latents.json"
    if lat.exists() and not json.loads(lat.read_text()).get("scale_from_init"):
        sys.exit(f"train.py: {work} holds latents scaled on their own, not by {init}; use a fresh --work")


def init_from_record(src: Path):
    """How the folder a fine-tune started from was made (its MANIFEST.json, less the files)."""
    m = json.loads((src / "MANIFEST.json").read_text())
    m.pop("files", None)
    return m


def sample_sheet(out: Path, dest: Path):
    """8 × 8 samples from the exported folder with diffusers' own pipeline (20 DDIM steps, CFG 4)."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    pipe = StableDiffusionPipeline.from_pretrained(str(out), torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(5)
    caps = [shapes.caption(*shapes.sample_spec(rng, allow_held_out=True)) for _ in range(64)]
    imgs = []
    for i in range(0, 64, 16):
        g = torch.Generator().manual_seed(i)
        imgs.extend(pipe(caps[i:i + 16], num_inference_steps=20, guidance_scale=4.0, height=64, width=64,
                     generator=g, output_type="np").images)
    sheet = Image.new("RGB", (512, 512))
    for i, im in enumerate(imgs):
        sheet.paste(Image.fromarray((im * 255).round().astype(np.uint8)), ((i % 8) * 64, (i // 8) * 64))
    sheet.save(dest)
    (dest.with_suffix(".txt")).write_text("\n".join(caps))
    log(f"sample sheet: {dest}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", choices=["all", "data", "tokenizer", "vae", "latents", "unet", "export", "sheet"],
                    default="all")
    ap.add_argument("--vae-minutes", type=float, default=30)
    ap.add_argument("--unet-minutes", type=float, default=75)
    ap.add_argument("--unet-lr", type=float, default=1e-3, help="peak learning rate of the UNet stage")
    ap.add_argument("--init-from", type=Path, help="fine-tune: start from this exported folder")
    a = ap.parse_args()
    # The command that makes the folder: this one, less a `--stage` that reran a part of it.
    argv = sys.argv[1:]
    for i, x in enumerate(argv):
        if x == "--stage":
            argv = argv[:i] + argv[i + 2:]
            break
        if x.startswith("--stage="):
            argv = argv[:i] + argv[i + 1:]
            break
    command = shlex.join(["tools/t2i/train.py", *argv])
    a.work.mkdir(parents=True, exist_ok=True)
    init = a.work / "init-from"  # a copy: --out may be the same folder, replaced on export
    if a.init_from is None:
        if init.exists():
            sys.exit(f"train.py: {a.work} is a fine-tune of the model copied to {init}; pass --init-from")
        init = None
    elif not (init / "MANIFEST.json").exists():
        shutil.copytree(a.init_from, init, dirs_exist_ok=True)
    elif init_id(init) != init_id(a.init_from) and \
            json.loads((a.init_from / "MANIFEST.json").read_text()).get("init_from") != init_from_record(init):
        # Neither the same model nor the one this work folder made from it.
        sys.exit(f"train.py: {a.work} fine-tunes another model than {a.init_from}; use a fresh --work")
    if init is not None:
        check_work_for_init(a.work, init)
    torch.set_num_threads(2)
    t = time.time()
    want = lambda s: a.stage in ("all", s)  # noqa: E731
    if want("data") and not (a.work / "data.npz").exists():
        stage_data(a.work)
    if want("tokenizer"):
        log(f"tokenizer: {write_tokenizer(a.work / 'tokenizer')} tokens")
        if init is not None:  # the text encoder's embedding rows are the init model's tokens
            for f in ["vocab.json", "merges.txt"]:
                if (a.work / "tokenizer" / f).read_bytes() != (init / "tokenizer" / f).read_bytes():
                    sys.exit(f"train.py: the caption words changed since {a.init_from} was made "
                             f"(tokenizer/{f} differs); a fine-tune cannot change the vocabulary")
    if init is not None and (a.stage == "vae" or want("vae") and not (a.work / "vae.pt").exists()):
        stage_vae_from(a.work, init, a.vae_minutes)
    elif a.stage == "vae" or a.stage == "all" and not (a.work / "vae.pt").exists():
        stage_vae(a.work, a.vae_minutes)
    if want("latents") and not (a.work / "latents.npy").exists():
        scale = None
        if init is not None:
            scale = json.loads((init / "vae" / "config.json").read_text())["scaling_factor"]
        stage_latents(a.work, scale)
    if want("unet"):
        stage_unet(a.work, a.unet_minutes, a.unet_lr, init, command)
    if want("export"):
        stage_export(a.work, a.out, init, command)
    if want("sheet"):
        sample_sheet(a.out, a.work / "sheet.png")
    log(f"total {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
