"""Records diffusers' own output on the demo text-to-image model for tests/shapes_model.rs.

    python tools/t2i/make_reference.py models/act-shapes-t2i tests/fixtures/act_shapes/reference.safetensors

For each case (prompt, seed): diffusers' StableDiffusionPipeline loaded in float32 from the
folder's f16 weights, its DDIM scheduler, 20 steps, guidance 4, 64 × 64, a CPU generator
seeded with the seed; stores the final latents (`output_type="latent"`) and the decoded image
(`output_type="np"`, [64, 64, 3] in [0, 1]). The metadata holds the cases, the versions and
the SHA-256 of the folder's unet weights (the test checks it is the same model).
"""

import hashlib
import json
import sys
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

CASES = [("a red triangle", 3), ("a large blue square on the left, neon style", 11), ("a small cross, pencil sketch", 5)]
STEPS, GUIDANCE = 20, 4.0


def main():
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(2)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    tensors = {}
    for i, (prompt, seed) in enumerate(CASES):
        kw = dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=64, width=64)
        lat = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **kw).images
        img = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images
        tensors[f"case{i}.latents"] = lat.contiguous()
        tensors[f"case{i}.image"] = torch.from_numpy(img[0]).contiguous()
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    meta = {
        "cases": json.dumps(CASES),
        "steps": str(STEPS),
        "guidance": str(GUIDANCE),
        "unet_sha256": hashlib.sha256(unet.read_bytes()).hexdigest(),
        "versions": json.dumps({"torch": torch.__version__, "diffusers": diffusers.__version__,
                                "transformers": transformers.__version__}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
