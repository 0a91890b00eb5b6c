"""Train clipdex's tiny open_clip model on generated pictures of coloured shapes.

    python training/train_tiny.py --out clipdex/data/tiny-shapes

A second, smaller model for the tests (a library holding two models' vectors)::

    python training/train_tiny.py --out tests/data/tiny-b --seed 7 --embed-dim 32 --width 64 \
        --text-width 32 --layers 2 --images 6000 --steps 700

Writes ``open_clip_config.json`` and ``open_clip_model.safetensors`` (fp16) in the layout
of open_clip's hub repositories, so the result loads with ``--model local-dir:DIR``.
The loss is CLIP's symmetric contrastive loss with soft targets: a caption that names
only a shape ("a circle") is a positive for every circle in the batch, so the model
learns colour and shape words separately as well as together. On 2 CPU cores the
default run takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from clipdex.imaging import fit_square
from clipdex.synthetic import (
    COLOR_TEMPLATES,
    COLORS,
    FULL_TEMPLATES,
    SHAPE_TEMPLATES,
    SHAPES,
    iter_training,
)

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 3, "width": 96, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": list(MEAN),
        "std": list(STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def make_captions() -> tuple[list[str], list[tuple[str | None, str | None]]]:
    """Every caption with the (colour, shape) it names; None means 'any'."""
    texts, attrs = [], []
    for c in COLORS:
        for s in SHAPES:
            for t in FULL_TEMPLATES:
                texts.append(t.format(c=c, s=s))
                attrs.append((c, s))
    for s in SHAPES:
        for t in SHAPE_TEMPLATES:
            texts.append(t.format(s=s))
            attrs.append((None, s))
    for c in COLORS:
        for t in COLOR_TEMPLATES:
            texts.append(t.format(c=c))
            attrs.append((c, None))
    return texts, attrs


def make_images(n: int, size: int, seed: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    rng = random.Random(seed)
    gen = iter_training(rng)
    arrays, labels = [], []
    for _ in range(n):
        im, sample = next(gen)
        arrays.append(fit_square(im, size))
        labels.append((sample.color, sample.shape))
    return torch.from_numpy(np.stack(arrays)), labels


def normalise(batch: torch.Tensor) -> torch.Tensor:
    x = batch.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("clipdex/data/tiny-shapes"))
    ap.add_argument("--images", type=int, default=24000)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=192)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-dim", type=int, default=CONFIG["model_cfg"]["embed_dim"], help="embedding length")
    ap.add_argument("--width", type=int, default=CONFIG["model_cfg"]["vision_cfg"]["width"],
                    help="image tower width (a multiple of 32)")
    ap.add_argument("--text-width", type=int, default=CONFIG["model_cfg"]["text_cfg"]["width"],
                    help="text tower width (a multiple of 16; the token table dominates the file size)")
    ap.add_argument("--layers", type=int, default=CONFIG["model_cfg"]["vision_cfg"]["layers"],
                    help="image tower layers")
    args = ap.parse_args()
    CONFIG["model_cfg"]["embed_dim"] = args.embed_dim
    CONFIG["model_cfg"]["vision_cfg"].update(width=args.width, layers=args.layers)
    CONFIG["model_cfg"]["text_cfg"].update(width=args.text_width, heads=max(1, args.text_width // 32))

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    size = CONFIG["model_cfg"]["vision_cfg"]["image_size"]
    t0 = time.time()
    images, labels = make_images(args.images, size, args.seed)
    print(f"generated {len(labels)} pictures in {time.time() - t0:.0f}s", flush=True)

    texts, attrs = make_captions()
    by_kind: dict[str, list[int]] = {"full": [], "shape": [], "color": []}
    for i, (c, s) in enumerate(attrs):
        by_kind["full" if c and s else "shape" if s else "color"].append(i)

    model = open_clip.CLIP(**CONFIG["model_cfg"])
    tokenizer = open_clip.SimpleTokenizer(context_length=CONFIG["model_cfg"]["text_cfg"]["context_length"])
    tokens = tokenizer(texts)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.08)

    t0 = time.time()
    model.train()
    for step in range(args.steps):
        idx = rng.sample(range(len(labels)), args.batch)
        img_attrs = [labels[i] for i in idx]
        cap_ids = []
        for c, s in img_attrs:
            r = rng.random()
            if r < 0.7:
                cap_ids.append(
                    rng.choice([i for i in by_kind["full"] if attrs[i] == (c, s)])
                )
            elif r < 0.85:
                cap_ids.append(rng.choice([i for i in by_kind["shape"] if attrs[i][1] == s]))
            else:
                cap_ids.append(rng.choice([i for i in by_kind["color"] if attrs[i][0] == c]))
        match = torch.tensor(
            [
                [
                    float((attrs[j][0] in (None, c)) and (attrs[j][1] in (None, s)))
                    for j in cap_ids
                ]
                for c, s in img_attrs
            ]
        )
        img_f = F.normalize(model.encode_image(normalise(images[idx])), dim=-1)
        txt_f = F.normalize(model.encode_text(tokens[cap_ids]), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T
        loss_i = -(F.log_softmax(logits, 1) * (match / match.sum(1, keepdim=True))).sum(1).mean()
        loss_t = -(F.log_softmax(logits.T, 1) * (match.T / match.T.sum(1, keepdim=True))).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                  f"{time.time() - t0:.0f}s", flush=True)

    model.eval()
    test_images, test_labels = make_images(960, size, args.seed + 1)
    classes = [(c, s) for c in COLORS for s in SHAPES]
    with torch.no_grad():
        img_f = F.normalize(model.encode_image(normalise(test_images)), dim=-1)
        prompts = tokenizer([f"a photo of a {c} {s}." for c, s in classes])
        txt_f = F.normalize(model.encode_text(prompts), dim=-1)
        pred = (img_f @ txt_f.T).argmax(1)
    acc = np.mean([classes[p] == lab for p, lab in zip(pred.tolist(), test_labels)])
    print(f"held-out zero-shot accuracy over {len(classes)} classes: {acc:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "open_clip_model.safetensors"))
    (args.out / "open_clip_config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
