"""Trains the ToyWorld MM-DiT: a Flux.1-architecture model (ComfyUI's own Flux classes, config
``comfy_bridge.flux_models.TOYWORLD_MMDIT``) on the ToyWorld scenes with rectified flow, on the latents of the SHIPPED
ToyWorld VAE, so that the editing benchmark can put an MM-DiT beside the SD1.x-architecture ToyWorld UNet.

    python -m attention_edit.toyworld.train_mmdit --out runs/toyworld_mmdit --minutes 90 --threads 2 \
        --no-pooled --free-pads 0.5                       # fresh: the shipped model's recipe (T5 at 32 tokens)
    python -m attention_edit.toyworld.train_mmdit --out runs/toyworld_mmdit --minutes 120 --threads 2 \
        --no-pooled --free-pads 0.5 --resume              # continue (the same config; another one is refused)
    python -m attention_edit.toyworld.train_mmdit --out runs/toyworld_mmdit --export tw_mmdit.safetensors
    python -m attention_edit.toyworld.train_mmdit --out runs/more --init toyworld/weights/toyworld_mmdit.safetensors \
        --no-pooled --minutes 95 --lr 5e-4                  # continue the shipped weights (fresh optimiser)

    from attention_edit.toyworld.shipped import load_toyworld_mmdit
    model, clip, vae = load_toyworld_mmdit("tw_mmdit.safetensors")    # MODEL / CLIP / VAE as ComfyUI's loaders give

Model (decisions and why)
-------------------------
* Transformer: ``comfy.ldm.flux.model.Flux`` through ComfyUI's ``FluxSchnell`` model config: hidden 128, 4 heads of
  32 (RoPE axes 8 + 12 + 12 over (index, row, column), summing to the head width), 3 double-stream + 3 single-stream
  blocks, MLP ratio 4: 2.65 M parameters (text encoders: CLIP-L 0.11 M + T5 0.33 M besides their token tables,
  49408 x 64 = 3.16 M and 32128 x 128 = 4.11 M, of which 30 and 31 rows are used and trained). in/out channels 4: the ToyWorld VAE's 8x8x4 latent is patchified 2x2 into
  16 image tokens of 16 features; the text stream is the T5 sequence, 32 tokens (``--t5-length``, below), so every
  block sees 48 tokens (about 0.4 s per batch of 32 on two CPU threads).
* No guidance embedding (schnell-like): Flux.1-dev's guidance input is distilled from a teacher's classifier-free
  guidance; without a teacher, a guidance value drawn at random during training would carry no signal and be
  learnt as noise. The model is trained for plain conditional sampling at CFG 1 (what the pack's rectified-flow
  inversion and editing use for Flux) and, with 10% empty captions, also supports ordinary CFG (probed at 3).
  FluxSchnell's model sampling: ComfyUI's ModelSamplingDiscreteFlow with shift 1 and multiplier 1 (sigma = t).
* Latent format: SD1.5's (``FluxConfig.latent_format = "sd15"``: 4 channels, 0.18215 scale), so ComfyUI's
  process_latent_in/out, empty-latent handling and VAE nodes treat the model exactly as the ToyWorld UNet; the VAE
  is the shipped ``toyworld/weights/toyworld.safetensors`` one, frozen (its scale is folded so that 0.18215 x latent
  has unit standard deviation).
* Text: ComfyUI's ``FluxClipModel`` with the real tokenizers: a narrow T5 (width 128, 2 layers, 4 heads of 32, gated
  FF 256; the 32128-row vocabulary is kept, only the rows ToyWorld captions use are trained) gives the sequence, a
  narrow CLIP-L (width 64, 2 layers) the pooled vector (``y``, Flux's vector input). Both are trained jointly with
  the transformer (only the used token rows: the other rows get zero gradient and, with Adam and no weight decay,
  never move).
* Words through attention (``--no-pooled``): Flux's vector input reads the pooled CLIP-L vector into the modulation
  of every token. Trained with it, this small model took the whole caption from that vector: its image -> text
  attention stayed flat (on the object 1.00x its area share, bench_toyworld.py --only maps, against 1.4-2x for the
  UNet's cross-attention), so Prompt-to-Prompt had nothing to control and local blend nothing to locate, unlike
  Flux.1, whose pooled vector is a weak global signal beside T5 in attention. ``--no-pooled`` keeps that input's
  weight at zero, so captions reach the model only as T5 tokens in joint attention; the shipped model was trained
  with it from the start.
* The T5 sequence length (``--t5-length``, FluxConfig.t5_min_length; 32 in the ``toyworld_mmdit`` config): ComfyUI
  pads Flux's T5 sequence to 256 unless the text encoder's tokenizer is built with another ``t5xxl_min_length``
  (its own tokenizer setting, what core T5TokenizerOptions sets); the loader builds this model's with the length
  of its file's config, and the pack's edit glue encodes and aligns at that length. At 256 (the model shipped
  before; 6500 steps over about 2.5 CPU hours), 240 of the 272 tokens every block sees were pads and the model
  never learnt its words: text-to-image faithfulness at chance (colour 18%), every edit 0%. At 32 a step costs
  about a fifth as much and the same recipe follows its words (see the README's side-by-side figures).
* The T5 pads (``--free-pads P``): ComfyUI runs Flux's T5 without a padding mask, so each pad attends to the caption
  and carries it, and a small model can read the caption from them instead of from its words. ``--free-pads``
  gives a share P of each batch the empty caption's pad outputs, so that there the caption can only be read from
  its word tokens; sampling is unchanged. The shipped model was trained with P 0.5.
* Initialisation: the seeded torch-default init of ``build_flux``, then adaLN-Zero (Peebles & Xie 2023, "Scalable
  Diffusion Models with Transformers"): the modulation projections of every block and of the final layer and the
  final linear start at zero, so every block starts as the identity (gates 0) and the output as 0.

Objective
---------
Rectified flow as in SD3 (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image
Synthesis"): x_sigma = (1 - sigma) x0 + sigma eps (the convention of inversion/flow.py and ComfyUI's CONST
sampling), target velocity v = eps - x0, loss = MSE(v_pred, v) averaged over latent elements. Noise levels: a
uniform draw u is mapped through the logit-normal distribution of SD3 (u = sigmoid(n), n ~ N(0, 1): most weight on
the middle levels, where the flow is hardest to predict) for 80% of the batch and kept uniform for 20% (so the ends,
where the first sampling steps decide layout and position, are not starved: logit-normal alone puts 1.4% above
0.9), then through the model's own sampling object: sigma = model_sampling.sigma(u * multiplier), clamped to
[1e-3, 1] (x0 -> v needs sigma > 0). The prediction goes through ComfyUI's ``BaseModel.apply_model`` (exactly the
sampling-time model: timestep conversion, conditioning casts, CONST's x0 = x - sigma * v_out), and
v_pred = (x_sigma - x0_pred) / sigma. 10% empty captions (for CFG), 10% partial captions (size or position left
out) as the ToyWorld UNet had.

Training: batch 32, AdamW (lr 1e-3, betas 0.9 / 0.99, no weight decay; the QK RMS norms of Flux's attention and
adaLN-Zero keep a small transformer stable at this rate), linear warm-up over 100 steps then cosine to 10% of the
learning rate over the WALL-CLOCK budget ``--minutes`` (everything counts: set-up, steps, checkpoints, probes; the
last probe and export are fitted inside it), gradient clipping at 1, EMA of the weights (decay min(0.999,
(1 + step) / (10 + step))), seeded data order, captions, noise and levels per step (a resumed run draws what an
uninterrupted one would have). Data: ``--n-data`` (8000) ToyWorld scenes (toyworld/train.py ``Data``; captions
re-drawn from the templates at every use), encoded once by the shipped VAE's encoder (mean of the posterior, toyworld/train.py ``Trainer.encode_latents``) and cached in
``latents.safetensors``.

Files in ``--out`` (all safetensors + JSON metadata, no pickle; written atomically: temp file, then os.replace):
``ckpt.safetensors`` (weights, EMA, Adam state, step, elapsed) every ``--ckpt-every`` seconds and on SIGINT/SIGTERM;
``toyworld_mmdit_latest.safetensors`` / ``toyworld_mmdit_best.safetensors`` (EMA export, fp16) at every probe;
``train.log`` (a copy of stdout), ``probe.jsonl``, ``probe_<step>.png`` (8-column grid of the CFG-1 samples).
Probe (every ``--probe-every`` seconds and at the end): EMA weights, ``--probe-n`` one-object captions
(toyworld/train.py ``probe_specs``) sampled with ComfyUI's own sampler (comfy.sample: euler, simple, 20 steps) at
CFG 1 and at CFG 3, decoded by the ToyWorld VAE and scored by toyworld/judge.py (colour / shape / size / position of
the largest object); plus the velocity loss of the EMA model on 128 held-out scenes at fixed noise (``val_loss``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch

from .shipped import MMDIT_FORMAT, TOYWORLD_MMDIT_WEIGHTS, TOYWORLD_WEIGHTS, load_toyworld_mmdit  # noqa: F401
from .train import _STOP, Data, Trainer, caption_token_ids, load_ckpt, log, opt_load, opt_tensors, prepare_run, \
    probe_specs, sample_images, save_ckpt

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the frozen VAE of the MM-DiT (TOYWORLD_WEIGHTS: the shipped ToyWorld weights' AutoencoderKL), the export format,
# where the exported weights are shipped, and their loader live in toyworld/shipped.py (the loader node and the
# benchmarks import that module, never this trainer)
FORMAT = MMDIT_FORMAT
WEIGHTS = TOYWORLD_MMDIT_WEIGHTS
LATENT_SCALE = 0.18215  # SD1.5's latent scale (comfy.latent_formats.SD15), folded into the ToyWorld VAE


# ----------------------------------------------------------------------------------------------------------------
# text: ComfyUI's Flux tokenizer (CLIP-L ids for the pooled vector, T5 ids for the sequence), batched encoding
# ----------------------------------------------------------------------------------------------------------------

class FluxTokens:
    """Caption -> (CLIP-L ids [77], T5 ids [256]) from ComfyUI's FluxTokenizer (``clip.tokenize``), cached."""

    def __init__(self, clip):
        self.clip = clip
        self.cache = {}

    def ids(self, text: str):
        v = self.cache.get(text)
        if v is None:
            toks = self.clip.tokenize(text)
            v = ([t[0] for t in toks["l"][0]], [t[0] for t in toks["t5xxl"][0]])
            if len(self.cache) < 200_000:
                self.cache[text] = v
        return v

    def batch(self, texts):
        pairs = [self.ids(t) for t in texts]
        return [p[0] for p in pairs], [p[1] for p in pairs]


class _T5View:
    """What toyworld/train.py ``caption_token_ids`` reads from a CLIP (``tokenize(text)["l"]``), answered with the T5
    tokens: the same vocabulary walk gives the T5 rows the captions use."""

    def __init__(self, clip):
        self.clip = clip

    def tokenize(self, text):
        return {"l": self.clip.tokenize(text)["t5xxl"]}


def encode_text(te, l_ids, t5_ids):
    """FluxClipModel's two encoders on a batch, as ``encode_token_weights`` runs them for one prompt (all weights 1):
    returns (T5 sequence [B, 256, t5_width], CLIP-L pooled vector [B, clip_width])."""
    ctx = te.t5xxl(t5_ids)[0]
    pooled = te.clip_l(l_ids)[1]
    return ctx, pooled


def _copy_input(module, args):
    if args and torch.is_tensor(args[0]) and args[0].requires_grad:
        return (args[0].clone(),) + tuple(args[1:])
    return None


def copy_norm_inputs(*modules) -> list:
    """ComfyUI's Flux blocks (``img += ...``, ``x += ...``), CLIP layers and T5 layers add residuals in place, which
    overwrites the input a normalisation layer saved for backward; every LayerNorm / T5LayerNorm gets a copy (same
    values) through a forward pre-hook. Returns the hook handles."""
    out = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm) or type(m).__name__ == "T5LayerNorm":
                out.append(m.register_forward_pre_hook(_copy_input))
    return out


@torch.no_grad()
def adaln_zero(flux) -> None:
    """adaLN-Zero: zero the modulation projections (double blocks' img_mod / txt_mod, single blocks' modulation,
    the final layer's adaLN) and the final linear of a comfy.ldm.flux.model.Flux."""
    for name, p in flux.named_parameters():
        if (".img_mod.lin." in name or ".txt_mod.lin." in name or ".modulation.lin." in name
                or name.startswith("final_layer.adaLN_modulation") or name.startswith("final_layer.linear")):
            p.zero_()


# ----------------------------------------------------------------------------------------------------------------
# weights file (export) and loader
# ----------------------------------------------------------------------------------------------------------------

def save_mmdit_weights(path, tensors: dict, cfg_dict: dict, info: dict, dtype=torch.float16) -> None:
    """One safetensors file: ``model.diffusion_model.*`` (Flux transformer) + ``clip.*`` (FluxClipModel state dict),
    floating tensors as ``dtype``; metadata: format, config (FluxConfig as JSON), vae (what to pair it with),
    training (JSON)."""
    from ..comfy_bridge.files import save_safetensors

    out = {}
    for k, v in tensors.items():
        v = v.detach().to("cpu")
        out[k] = (v.to(dtype) if v.is_floating_point() and dtype is not None else v).contiguous()
    meta = {"format": FORMAT, "config": json.dumps(cfg_dict), "training": json.dumps(info),
            "vae": "toyworld/weights/toyworld.safetensors (the ToyWorld VAE, SD1.5 latent format)"}
    save_safetensors(str(path), out, meta)


# ----------------------------------------------------------------------------------------------------------------
# trainer
# ----------------------------------------------------------------------------------------------------------------

class MMDiTTrainer:
    def __init__(self, args, t_start: float):
        from ..comfy_bridge import flux_models as fm
        from ..comfy_bridge import host
        from ..comfy_bridge import models as unet_models

        self.args = args
        self.t_start = t_start
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.ckpt_path = os.path.join(self.out, "ckpt.safetensors")
        self.device = host.torch_device()
        self.cfg = fm.flux_config_from_any(args.config)
        if getattr(args, "t5_length", None):
            self.cfg = dataclasses.replace(self.cfg, t5_min_length=int(args.t5_length))
        self.mp, self.clip, _ = fm.build_flux(self.cfg, seed=args.seed, dtype=torch.float32)
        self.flux = self.mp.model.diffusion_model
        self.model = self.mp.model  # comfy.model_base.Flux: apply_model, model_sampling, latent_format
        self.te = self.clip.cond_stage_model
        adaln_zero(self.flux)
        _, _, self.vae = unet_models.load_weights(args.vae, dtype=torch.float32)
        self.vae_model = self.vae.first_stage_model
        for p in self.vae_model.parameters():
            p.requires_grad_(False)
        self._hooks = copy_norm_inputs(self.flux, self.te)
        for m in (self.flux, self.te, self.vae_model):
            m.to(self.device)
        self.tokens = FluxTokens(self.clip)
        self.step = 0
        self.step0 = 0  # --init: the file's step (the warm-up restarts there)
        self.elapsed = 0.0  # wall seconds of all sessions (set-up, steps, checkpoints, probes)
        self.best = {}
        self.session_t0 = t_start
        self.elapsed_at_session_start = 0.0
        self._data_and_latents()
        self.named = self.trainable()
        for _, p in self.named:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW([p for _, p in self.named], lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99),
                                     foreach=True)
        self._mask_token_rows()
        self.ema = {k: p.detach().clone() for k, p in self.named}
        self.pooled_off()
        self.ms = self.model.model_sampling

    # ---- data
    def _data_and_latents(self):
        """Renders ``--n-data`` scenes (train.py Data: images + specs for the captions) and encodes them with the
        frozen ToyWorld VAE once (train.py Trainer.encode_latents), cached in latents.safetensors; also 128
        held-out scenes for the validation loss. Latents are unscaled (x SD1.5's 0.18215 -> unit std)."""
        from ..comfy_bridge.files import read_safetensors, save_safetensors
        from . import scenes

        a = self.args
        self.data = Data(a.n_data, a.seed)
        path = os.path.join(self.out, "latents.safetensors")
        key = {"n": a.n_data, "seed": a.seed, "vae": os.path.abspath(a.vae), "vae_size": os.path.getsize(a.vae)}
        lat = None
        if os.path.exists(path):
            t, m = read_safetensors(path, "latent cache", check_finite=False)
            if json.loads(m.get("key", "{}")) == key:
                lat, held = t["latents"], t["held"]
                log(f"latent cache {path}: {tuple(lat.shape)}")
        if lat is None:
            self.args.n_latents = a.n_data  # what Trainer.encode_latents reads
            lat = Trainer.encode_latents(self).cpu()
            imgs = np.stack([scenes.sample_scene(10 ** 9 + i).image for i in range(128)])
            held = self._encode(torch.from_numpy(imgs).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2))
            save_safetensors(path, {"latents": lat, "held": held}, {"key": json.dumps(key)})
        self.held_specs = [scenes.sample_scene(10 ** 9 + i).spec for i in range(128)]
        self.data.images = None  # the captions need only the specs
        self.latents = lat.float().to(self.device)
        self.held = held.float().to(self.device)
        log(f"latents {tuple(self.latents.shape)}: std x {LATENT_SCALE} = {(self.latents.std() * LATENT_SCALE).item():.3f}")

    @torch.no_grad()
    def _encode(self, x):
        vm = self.vae_model
        mean, _ = torch.chunk(vm.quant_conv(vm.encoder(x.to(self.device))), 2, dim=1)
        return mean.float().cpu()

    # ---- parameters
    def trainable(self):
        out = [("tr." + k, p) for k, p in sorted(self.flux.named_parameters())]
        out += [("te." + k, p) for k, p in sorted(self.te.named_parameters())
                if not k.endswith("logit_scale") and "text_projection" not in k]
        return out

    def _mask_token_rows(self):
        """Only the token rows ToyWorld captions use are trained (both vocabularies); checked against the
        tokens of 2000 sampled captions (rows they use that the vocabulary walk missed are added)."""
        rows = {"l": set(caption_token_ids(self.clip)), "t5xxl": set(caption_token_ids(_T5View(self.clip)))}
        rng = random.Random(12345)
        extra = {"l": 0, "t5xxl": 0}
        for _ in range(2000):
            i = rng.randrange(self.data.n)
            l_ids, t5_ids = self.tokens.ids(self.data.caption(i, rng))
            if self.cfg.t5_min_length and len(t5_ids) > self.cfg.t5_min_length:
                raise ValueError(f"--t5-length {self.cfg.t5_min_length} is shorter than a ToyWorld caption's "
                                 f"{len(t5_ids)} T5 tokens (with the end token); pass at least 25")
            for key, ids in (("l", l_ids), ("t5xxl", t5_ids)):
                new = set(ids) - rows[key]
                extra[key] += len(new)
                rows[key] |= new
        self._masks = []
        for key, enc in (("l", self.te.clip_l), ("t5xxl", self.te.t5xxl)):
            emb = enc.transformer.get_input_embeddings().weight
            mask = torch.zeros(emb.shape[0], 1, device=emb.device)
            mask[sorted(rows[key])] = 1.0
            self._masks.append(mask)
            emb.register_hook(lambda g, m=mask: g * m.to(g.dtype))
        self.trained_rows = {k: len(v) for k, v in rows.items()}
        log(f"trained token rows: CLIP-L {self.trained_rows['l']}, T5 {self.trained_rows['t5xxl']} "
            f"(added from sampled captions: {extra})")

    # ---- the objective
    def levels(self, n, g):
        """Noise levels [n]: u logit-normal(0, 1) (SD3) for (1 - sigma_uniform) of the batch, uniform for the rest,
        through the model's sampling object (schnell: sigma = u), clamped to [1e-3, 1]."""
        u = torch.sigmoid(torch.randn(n, generator=g))
        uni = torch.rand(n, generator=g)
        u = torch.where(torch.rand(n, generator=g) < self.args.sigma_uniform, uni, u)
        sigma = self.ms.sigma(u * float(getattr(self.ms, "multiplier", 1.0)))
        return torch.as_tensor(sigma, dtype=torch.float32).clamp(1e-3, 1.0)

    #: T5's pad token id (ComfyUI's T5XXLModel special_tokens)
    T5_PAD = 0

    def caption_free_pads(self, ctx, t5_ids, free):
        """--free-pads: for the captions marked in ``free`` [B] (bool), the T5 outputs at pad positions are replaced
        by those of the empty caption at the same positions. ComfyUI runs Flux's T5 without a padding mask, so every
        pad token attends to the caption and carries a summary of it; a small model learns to read the caption from
        the ~245 pads (image rows spread their text attention evenly over words and pads) and its image->text maps
        are flat. With caption-free pads on part of the batch, the caption can only be read from its word tokens
        there, so the model must bind words through joint attention (what Prompt-to-Prompt controls); sampling is
        unchanged (ComfyUI's own encoder output)."""
        ids = torch.as_tensor(t5_ids, device=ctx.device)
        empty = self.te.t5xxl([self.tokens.ids("")[1]])[0].to(ctx.dtype)      # [1, 256, width]
        pads = (ids == self.T5_PAD) & free.to(ctx.device)[:, None]
        return torch.where(pads[..., None], empty.expand_as(ctx), ctx)

    def velocity_loss(self, x0, eps, sigma, l_ids, t5_ids, reduce=True, free=None):
        """MSE(v_pred, eps - x0) with x_sigma = (1 - sigma) x0 + sigma eps; x0, eps [B, 4, 8, 8] in the model's
        space (0.18215 x VAE latent), sigma [B]. v_pred = (x_sigma - apply_model(x_sigma, sigma)) / sigma.
        ``free`` [B] bool: captions whose T5 pads are made caption-free (``caption_free_pads``)."""
        from ..comfy_bridge.flux_models import flux_training_mode

        s = sigma.to(self.device).view(-1, 1, 1, 1)
        x = (1.0 - s) * x0 + s * eps
        ctx, pooled = encode_text(self.te, l_ids, t5_ids)
        if free is not None and bool(free.any()):
            ctx = self.caption_free_pads(ctx, t5_ids, free)
        with flux_training_mode():
            x0_pred = self.model.apply_model(x, sigma.to(self.device), c_crossattn=ctx, y=pooled)
        v_pred = (x - x0_pred.float()) / s
        err = (v_pred - (eps - x0)).pow(2)
        return err.mean() if reduce else err.mean(dim=(1, 2, 3))

    def train_step(self):
        a = self.args
        rng = np.random.default_rng([a.seed, 2, self.step])
        idx = rng.integers(0, len(self.latents), a.batch)
        prng = random.Random(f"{a.seed}:{self.step}")
        caps = [("" if prng.random() < a.uncond_prob else self.data.caption(int(i), prng)) for i in idx]
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + self.step + 77)
        x0 = self.latents[torch.as_tensor(idx, device=self.latents.device)] * LATENT_SCALE
        eps = torch.randn(x0.shape, generator=g).to(self.device)
        sigma = self.levels(len(idx), g)
        l_ids, t5_ids = self.tokens.batch(caps)
        free = None
        if a.free_pads > 0:
            free = torch.rand(len(idx), generator=g) < a.free_pads
        loss = self.velocity_loss(x0, eps, sigma, l_ids, t5_ids, free=free)
        warm = min(1.0, (self.step - self.step0 + 1) / a.warmup)  # --init: warm-up again (fresh Adam)
        frac = min(1.0, self.elapsed_now() / (a.minutes * 60))
        lr = a.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for pg in self.opt.param_groups:
            pg["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in self.named], 1.0)
        self.opt.step()
        d = min(a.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_([self.ema[k] for k, _ in self.named], [p.detach() for _, p in self.named], 1 - d)
        self.pooled_off()
        self.step += 1
        return {"loss": loss.item(), "grad_norm": float(gn)}

    #: the weight that reads Flux's vector input y (the CLIP-L pooled vector) into the modulation vector
    POOLED_WEIGHT = "tr.vector_in.in_layer.weight"

    def pooled_off(self):
        """--no-pooled: keeps the weight that reads the pooled CLIP-L vector at zero (live and EMA), so the caption
        reaches the transformer only through the T5 tokens of joint attention (the vector input keeps its
        constant bias). Without it the small model learns the caption from the pooled vector, through the
        modulation of every token, and its image -> text attention stays flat: nothing for Prompt-to-Prompt to
        control or for local blend to locate (bench_toyworld.py --only maps measures it). In Flux.1 the pooled
        vector is a weak global signal and words are bound through attention; this makes the toy model the same."""
        if not getattr(self.args, "no_pooled", False):
            return
        with torch.no_grad():
            for k, p in self.named:
                if k == self.POOLED_WEIGHT:
                    p.zero_()
                    self.ema[k].zero_()

    def elapsed_now(self) -> float:
        return self.elapsed_at_session_start + (time.time() - self.session_t0)

    # ---- checkpoint
    def save(self, reason=""):
        t = time.time()
        self.elapsed = self.elapsed_now()
        tensors = {"tr/" + k: v for k, v in self.flux.state_dict().items()}
        tensors.update({"te/" + k: v for k, v in self.te.state_dict().items()})
        tensors.update({"ema/" + k: v for k, v in self.ema.items()})
        tensors.update(opt_tensors(self.opt, "opt"))
        meta = {"step": self.step, "elapsed": self.elapsed, "best": self.best, "config": self.cfg.to_dict(),
                "args": vars(self.args), "trained_rows": self.trained_rows}
        save_ckpt(self.ckpt_path, tensors, meta)
        log(f"checkpoint {reason} step={self.step} elapsed={self.elapsed / 60:.1f} min ({time.time() - t:.1f}s)")

    def same_config(self, config) -> bool:
        """Whether a run's or file's stored config (a dict or its JSON) is this trainer's, after filling in the
        fields it predates (comfy_bridge.flux_models.flux_config_from_any)."""
        from ..comfy_bridge import flux_models as fm

        return fm.flux_config_from_any(config).to_dict() == self.cfg.to_dict()

    def load(self):
        tensors, meta = load_ckpt(self.ckpt_path)
        if "config" in meta and not self.same_config(meta["config"]):
            raise ValueError(f"--resume {self.ckpt_path}: the run's config {json.dumps(meta['config'])} differs from "
                             f"this command's {json.dumps(self.cfg.to_dict())}; pass the run's --config and "
                             "--t5-length again")
        self.flux.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("tr/")})
        self.te.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("te/")}, strict=False)
        self.ema = {k[4:]: v.clone().to(self.device) for k, v in tensors.items() if k.startswith("ema/")}
        opt_load(self.opt, {k: v.to(self.device) for k, v in tensors.items() if k.startswith("opt/")}, "opt")
        self.step, self.best = meta["step"], meta.get("best", {})
        self.pooled_off()
        # this session's set-up so far counts too
        self.elapsed_at_session_start = meta["elapsed"] + (time.time() - self.t_start)
        self.session_t0 = time.time()
        log(f"resumed step={self.step} elapsed={meta['elapsed'] / 60:.1f} min (+{time.time() - self.t_start:.0f}s "
            f"set-up)")

    def init_from(self, path: str):
        """--init: starts from an exported weights file (``--export`` / the shipped fp16 one): transformer and text
        encoder weights, and the EMA, are set from it; the optimiser starts fresh (an export has no Adam state) and
        the step count continues from the file's ``training`` metadata. Raises ValueError for a file that is not a
        ToyWorld MM-DiT export or whose config differs from ``--config``."""
        from ..comfy_bridge.files import read_safetensors

        sd, meta = read_safetensors(str(path), "ToyWorld MM-DiT weights file (--init)")
        if meta.get("format") != FORMAT:
            raise ValueError(f"--init {path}: not a ToyWorld MM-DiT weights file (format {meta.get('format')!r}); pass "
                             "one written by --export, e.g. toyworld/weights/toyworld_mmdit.safetensors")
        if not self.same_config(meta["config"]):
            raise ValueError(f"--init {path}: its config {meta['config']} differs from --config "
                             f"{json.dumps(self.cfg.to_dict())}; pass the file's config as --config")
        tr = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
        te = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
        with torch.no_grad():
            for k, p in self.named:
                src = tr.get(k[3:]) if k.startswith("tr.") else te.get(k[3:])
                if src is None:
                    raise ValueError(f"--init {path}: no tensor for {k}")
                p.copy_(src.to(p.dtype))
                self.ema[k].copy_(p)
        self.pooled_off()
        info = json.loads(meta.get("training", "{}"))
        self.step = self.step0 = int(info.get("step", 0))
        log(f"initialised from {path} (step {self.step}, {info.get('minutes')} min; fresh optimiser)")

    # ---- EMA export and probe
    def swap_ema(self):
        """Swaps live and EMA weights (call twice to restore)."""
        with torch.no_grad():
            for k, p in self.named:
                tmp = p.detach().clone()
                p.copy_(self.ema[k])
                self.ema[k].copy_(tmp)

    def module_tensors(self) -> dict:
        out = {"model.diffusion_model." + k: v for k, v in self.flux.state_dict().items()}
        out.update({"clip." + k: v for k, v in self.te.state_dict().items() if not k.endswith("position_ids")})
        return out

    @torch.no_grad()
    def val_loss(self) -> float:
        """Velocity MSE of the current weights on the 128 held-out scenes, fixed noise / levels / captions."""
        g = torch.Generator().manual_seed(4242)
        x0 = self.held * LATENT_SCALE
        eps = torch.randn(x0.shape, generator=g).to(self.device)
        sigma = torch.rand(len(x0), generator=g).clamp(1e-3, 1.0)
        from . import scenes

        caps = [scenes.caption_for(s) for s in self.held_specs]
        tot = 0.0
        for s in range(0, len(x0), 32):
            l_ids, t5_ids = self.tokens.batch(caps[s:s + 32])
            tot += self.velocity_loss(x0[s:s + 32], eps[s:s + 32], sigma[s:s + 32], l_ids, t5_ids,
                                      reduce=False).sum().item()
        return tot / len(x0)

    @torch.no_grad()
    def probe(self):
        t0 = time.time()
        self.swap_ema()
        try:
            latest = os.path.join(self.out, "toyworld_mmdit_latest.safetensors")
            info = {"step": self.step, "minutes": round(self.elapsed_now() / 60, 2), "ema": True}
            save_mmdit_weights(latest, self.module_tensors(), self.cfg.to_dict(), info)
            res = {"val_loss": round(self.val_loss(), 4)}
            for cfg_scale, tag in ((1.0, ""), (self.args.probe_cfg, "cfg%g_" % self.args.probe_cfg)):
                if cfg_scale <= 0:
                    continue
                grid = os.path.join(self.out, f"probe_{self.step:06d}.png") if not tag else None
                r = probe_mmdit(self.mp, self.clip, self.vae, n=self.args.probe_n, cfg=cfg_scale, grid_path=grid)
                res.update({tag + k: v for k, v in r.items() if k != "n"})
        finally:
            for m in (self.flux, self.te, self.vae_model):  # comfy's loader may have moved them
                m.to(self.device)
            self.swap_ema()
        res.update({"step": self.step, "minutes": round(self.elapsed_now() / 60, 2), "n": self.args.probe_n,
                    "probe_s": round(time.time() - t0, 1)})
        with open(os.path.join(self.out, "probe.jsonl"), "a") as f:
            f.write(json.dumps(res) + "\n")
        log("probe " + json.dumps(res))
        self.last_probe_s = time.time() - t0
        self.best["last_probe_step"] = self.step
        score = res.get("mean")
        if score is not None and score >= self.best.get("probe_mean", -1):
            self.best.update({"probe_mean": score, "probe_step": self.step})
            shutil.copyfile(latest, os.path.join(self.out, "toyworld_mmdit_best.safetensors"))
            log(f"new best probe mean (cfg 1) {score:.3f} -> toyworld_mmdit_best.safetensors")

    # ---- loop
    def run(self):
        a = self.args
        budget = a.minutes * 60
        # estimate until the first probe has run (about a second per sampled image on one CPU thread)
        self.last_probe_s = 10.0 + a.probe_n * (2 if a.probe_cfg > 0 else 1)
        last_ckpt = last_probe = last_log = time.time()
        hist = []
        while not _STOP["flag"]:
            # keep room for the final checkpoint + probe inside the budget
            if self.elapsed_now() + self.last_probe_s + 15 >= budget:
                log("time budget reached")
                break
            hist.append(self.train_step())
            if time.time() - last_log > a.log_every:
                avg = {k: round(sum(h[k] for h in hist) / len(hist), 4) for k in hist[0]}
                log(f"step {self.step} {avg} {self.elapsed_now() / 60:.1f}/{a.minutes:g} min "
                    f"lr {self.opt.param_groups[0]['lr']:.2e}")
                hist, last_log = [], time.time()
            if time.time() - last_ckpt > a.ckpt_every:
                self.save("periodic")
                last_ckpt = time.time()
            if time.time() - last_probe > a.probe_every:
                try:
                    self.probe()
                except Exception as exc:  # the probe must never kill training
                    log(f"probe failed: {exc!r}")
                last_probe = time.time()
        stopped = _STOP["flag"]
        self.save("stop" if stopped else "final")
        if not stopped and self.step > 0 and self.best.get("last_probe_step") != self.step:
            self.probe()
            self.save("after final probe")


# ----------------------------------------------------------------------------------------------------------------
# probe (sampling through ComfyUI, judged)
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def probe_mmdit(mp, clip, vae, n=32, seed=1234, cfg=1.0, steps=20, grid_path=None) -> dict:
    """Samples ``n`` one-object captions (train.py probe_specs: random shape, colour, size, position, background)
    with ComfyUI's sampler (euler, simple, ``steps``, ``cfg``; seed + i per image), decodes with ``vae`` and scores
    the largest judged object against the caption (toyworld.judge): accuracy per attribute and their mean."""
    from . import judge, scenes

    specs = probe_specs(n, seed)
    prompts = [scenes.caption_for(s) for s in specs]
    imgs = sample_images(mp, clip, vae, prompts, seed=seed, steps=steps, cfg=cfg, sampler="euler", scheduler="simple")
    if grid_path:
        from PIL import Image

        u8 = (imgs.clamp(0, 1) * 255).round().byte().numpy()
        rows = (len(u8) + 7) // 8
        sheet = np.zeros((rows * 64, 8 * 64, 3), np.uint8)
        for k, im in enumerate(u8):
            r, c = divmod(k, 8)
            sheet[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] = im
        Image.fromarray(sheet).save(grid_path)
    attrs = ["colour", "shape", "size", "position"]
    hits = {k: 0 for k in attrs}
    for im, sp in zip(imgs, specs):
        found = judge.judge_image(im, background=sp.get("background"))
        if found:
            best = max(found, key=lambda o: o["area"])
            for k in attrs:
                hits[k] += int(best[k] == sp["objects"][0][k])
    res = {k: round(hits[k] / n, 3) for k in attrs}
    res["mean"] = round(sum(res.values()) / len(attrs), 3)
    res["n"] = n
    return res


def export_ckpt(out_dir: str, path: str, use_ema: bool = True) -> dict:
    """Writes the run's (EMA) transformer + text encoder from ``ckpt.safetensors`` as one fp16 weights file
    (``save_mmdit_weights``; ``load_toyworld_mmdit`` reads it)."""
    tensors, meta = load_ckpt(os.path.join(out_dir, "ckpt.safetensors"))
    sd = {}
    for k, v in tensors.items():
        if k.startswith("tr/"):
            sd["model.diffusion_model." + k[3:]] = v
        elif k.startswith("te/") and not k.endswith("position_ids"):
            sd["clip." + k[3:]] = v
    if use_ema:
        for k, v in tensors.items():
            if k.startswith("ema/tr."):
                sd["model.diffusion_model." + k[7:]] = v
            elif k.startswith("ema/te."):
                sd["clip." + k[7:]] = v
    info = {"step": meta["step"], "minutes": round(meta["elapsed"] / 60, 1), "ema": use_ema, "best": meta.get("best")}
    save_mmdit_weights(path, sd, meta["config"], info)
    log(f"exported {path}: {info}")
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/toyworld_mmdit")
    ap.add_argument("--minutes", type=float, default=70.0,
                    help="total wall-clock budget of the run (all sessions: set-up, steps, checkpoints, probes)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default="", help="start a new run from an exported weights file (e.g. the shipped "
                                              "toyworld/weights/toyworld_mmdit.safetensors); fresh optimiser")
    ap.add_argument("--export", default="", help="instead: write the run's EMA weights (fp16) to this path")
    ap.add_argument("--cpu", action="store_true", help="train on the CPU even where ComfyUI finds a GPU")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="toyworld_mmdit", help="a FLUX_CONFIGS name or a FluxConfig as JSON")
    ap.add_argument("--t5-length", type=int, default=0,
                    help="the T5 sequence length (ComfyUI's t5xxl_min_length tokenizer setting, kept in the config "
                         "and the exported file; 0: the config's, 32 for toyworld_mmdit); at least 25, the "
                         "longest ToyWorld caption's 24 tokens and the end token")
    ap.add_argument("--vae", default=TOYWORLD_WEIGHTS, help="weights file whose (frozen) VAE makes the latents")
    ap.add_argument("--n-data", type=int, default=8000, help="scenes rendered and encoded once (as the ToyWorld "
                                                             "UNet's latent cache)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100, help="steps")
    ap.add_argument("--uncond-prob", type=float, default=0.1)
    ap.add_argument("--sigma-uniform", type=float, default=0.2,
                    help="share of the batch whose noise level is uniform instead of logit-normal")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--no-pooled", action="store_true",
                    help="keep the pooled CLIP-L vector's input weight at zero: the caption reaches the model only "
                         "through T5 tokens in joint attention (as Flux.1 binds words); also on --resume of a run "
                         "trained with it, or to fine-tune a run trained without it")

    ap.add_argument("--free-pads", type=float, default=0.0,
                    help="share of the batch whose T5 pad outputs are replaced by the empty caption's, so the "
                         "caption must be read from its word tokens (binds words through attention); 0: off")
    ap.add_argument("--ckpt-every", type=float, default=180.0, help="seconds")
    ap.add_argument("--probe-every", type=float, default=600.0, help="seconds")
    ap.add_argument("--probe-n", type=int, default=32)
    ap.add_argument("--probe-cfg", type=float, default=3.0, help="second probe's CFG scale (0: only CFG 1)")
    ap.add_argument("--log-every", type=float, default=30.0, help="seconds")
    args = ap.parse_args(argv)
    if not 0.0 <= args.free_pads <= 1.0:
        ap.error(f"--free-pads {args.free_pads:g}: a share of the batch, between 0 (off) and 1 (every caption)")
    if args.t5_length < 0:
        ap.error(f"--t5-length {args.t5_length}: a number of T5 tokens, at least 25 (0: the config's length)")
    return args


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
            st.flush()

    def flush(self):
        for st in self.streams:
            st.flush()


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    prepare_run(args)
    if args.export:
        export_ckpt(args.out, args.export)
        return 0
    os.makedirs(args.out, exist_ok=True)
    sys.stdout = _Tee(sys.__stdout__, open(os.path.join(args.out, "train.log"), "a"))
    tr = MMDiTTrainer(args, t_start)
    if args.resume and os.path.exists(tr.ckpt_path):
        tr.load()
    elif os.path.exists(tr.ckpt_path):
        log(f"{tr.ckpt_path} exists; pass --resume to continue it (starting fresh, overwriting)")
    if args.init and args.resume and os.path.exists(tr.ckpt_path):
        log(f"--init {args.init} not used: --resume continues {tr.ckpt_path}")
    elif args.init:
        tr.init_from(args.init)
    from ..comfy_bridge.flux_models import count_flux_parameters

    log(f"config {json.dumps(tr.cfg.to_dict())}")
    log(f"params {count_flux_parameters(tr.mp, tr.clip)} args {vars(args)}")
    tr.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
