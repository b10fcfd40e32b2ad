"""Trains the ToyWorld model (comfy_bridge/models.py TOYWORLD config) on procedurally rendered scenes (CPU or GPU).

    python -m attention_edit.toyworld.train --out runs/toyworld --minutes 120          # fresh
    python -m attention_edit.toyworld.train --out runs/toyworld --minutes 120 --resume # continue
    python -m attention_edit.toyworld.train --out runs/gpu --init toyworld/weights/toyworld.safetensors \
        --vae-minutes 0 --minutes 8 --batch 256 --n-data 64000 --n-latents 64000     # fine-tune (on a GPU if any)

The device is comfy.model_management's (``--cpu`` forces the CPU).

Phases (both resumable):
  1. ``vae``: the AutoencoderKL alone (L1 + MSE + tiny KL) for ``--vae-minutes``; then its latent scale is folded
     into quant_conv/post_quant_conv so that SD1.5's 0.18215 scaling gives unit-std latents, and the whole data set
     is encoded once (latent cache).
  2. ``unet``: UNet + text encoder jointly on cached latents: epsilon MSE on scaled_linear betas (0.00085..0.012,
     1000 steps, ComfyUI's SD15 schedule), AdamW, warmup, grad clip 1, 10% empty captions (for CFG), EMA weights.
     Only the token-embedding rows the captions use are trained (others get zero gradient).

Checkpoints (``ckpt.safetensors`` in --out, tensors + JSON metadata, no pickle) are written atomically (tmp file then
os.replace) every ``--ckpt-every`` seconds and on SIGINT/SIGTERM. Every ``--probe-every`` seconds the EMA model is
exported as fp16 (``toyworld_latest.safetensors``) and a faithfulness probe samples prompts through ComfyUI's sampling
and scores them with toyworld.judge (colour / shape / size / position accuracy), logged to train.log/probe.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

_STOP = {"flag": False}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# checkpoint io (safetensors + json metadata)
# ----------------------------------------------------------------------------------------------------------------

def save_ckpt(path: str, tensors: dict, meta: dict) -> None:
    from ..comfy_bridge.files import save_safetensors

    save_safetensors(path, tensors, {"state": json.dumps(meta)})


def load_ckpt(path: str):
    from ..comfy_bridge.files import read_safetensors

    tensors, meta = read_safetensors(path, "training checkpoint", check_finite=False)
    return tensors, json.loads(meta["state"])


def opt_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict:
    out = {}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"{prefix}/{i}/{k}"] = v
    return out


def opt_load(opt: torch.optim.Optimizer, tensors: dict, prefix: str) -> None:
    sd = opt.state_dict()
    state = {}
    for i, _ in enumerate(opt.param_groups[0]["params"]):
        st = {}
        for k in ("step", "exp_avg", "exp_avg_sq"):
            key = f"{prefix}/{i}/{k}"
            if key in tensors:
                st[k] = tensors[key]
        if st:
            state[i] = st
    sd["state"] = state
    opt.load_state_dict(sd)


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------

class Data:
    def __init__(self, n: int, seed: int):
        from . import scenes

        t = time.time()
        self.images, _, self.specs = scenes.make_dataset(n, seed=seed)
        self.n = n
        self.seed = seed
        log(f"rendered {n} scenes in {time.time() - t:.1f}s")

    def image_batch(self, idx) -> torch.Tensor:  # [B,3,H,W] in [-1,1]
        x = torch.from_numpy(self.images[idx]).float().div_(127.5).sub_(1.0)
        return x.permute(0, 3, 1, 2).contiguous()

    def caption(self, i: int, rng: random.Random) -> str:
        from . import scenes

        return scenes.caption_for(self.specs[i], rng, full=rng.random() >= 0.1)


class TokenCache:
    def __init__(self, clip):
        self.clip = clip
        self.cache = {}

    def ids(self, text: str) -> list:
        v = self.cache.get(text)
        if v is None:
            toks = self.clip.tokenize(text)
            v = [t[0] for t in toks["l"][0]]
            if len(self.cache) < 200_000:
                self.cache[text] = v
        return v

    def batch(self, texts) -> torch.Tensor:
        return torch.tensor([self.ids(t) for t in texts], dtype=torch.long)


def caption_token_ids(clip) -> list:
    """Every token id that any ToyWorld caption can use (plus start/end), from the vocabulary of the templates."""
    from . import scenes

    words = set()
    phrases = []
    for d in (scenes.POSITION_PHRASE, scenes.BACKGROUND_PHRASE):
        for v in d.values():
            phrases += v
    phrases += list(scenes.SHAPES) + list(scenes.COLOURS) + list(scenes.SIZES) + ["a", "an", "and"]
    for p in phrases:
        words.update(p.split())
    ids = set()
    tc = TokenCache(clip)
    for w in sorted(words):
        ids.update(tc.ids(w))
    ids.update(tc.ids(" ".join(sorted(words))))
    return sorted(ids)


# ----------------------------------------------------------------------------------------------------------------
# trainer
# ----------------------------------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, args):
        from ..comfy_bridge import host
        from ..comfy_bridge import models as unet_models
        from ..comfy_bridge.training import copy_layer_norm_inputs

        self.args = args
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.ckpt_path = os.path.join(self.out, "ckpt.safetensors")
        self.cfg = unet_models.config_from_any(args.config)
        self.device = host.torch_device()
        init_sd = None
        if getattr(args, "init", ""):
            self.cfg, init_sd, _ = unet_models.read_weights(args.init)
        self.mp, self.clip, self.vae = unet_models.build_unet(self.cfg, seed=args.seed, dtype=torch.float32)
        self.unet = self.mp.model.diffusion_model
        self.te = self.clip.cond_stage_model
        self._te_hooks = copy_layer_norm_inputs(self.te)  # ComfyUI's CLIP layers add residuals in place
        self.vae_model = self.vae.first_stage_model
        if init_sd is not None:
            self._load_init(init_sd)
        for m in (self.unet, self.te, self.vae_model):
            m.to(self.device)
        self.data = Data(args.n_data, args.seed)
        self.tokens = TokenCache(self.clip)
        self.phase = "vae"
        self.step = 0
        self.elapsed = {"vae": 0.0, "unet": 0.0}
        self.best = {}
        self.latents = None
        self.ema = {}
        if init_sd is not None:  # fine-tune from shipped weights: straight to the UNet phase (VAE kept as it is)
            self.phase = "unet"
            self.latents = self.encode_latents()
        self._init_phase_objects()

    def _load_init(self, sd):
        """Loads a ``unet_models.save_weights`` state dict (fp16 upcast to fp32) into the three parts."""
        parts = {"model.diffusion_model.": self.unet, "clip.": self.te, "vae.": self.vae_model}
        for prefix, module in parts.items():
            sub = {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)}
            missing, unexpected = module.load_state_dict(sub, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise ValueError(f"--init: {prefix} keys do not match the config: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
        log(f"initialised from {self.args.init}")

    @torch.no_grad()
    def encode_latents(self):
        """Encodes the first ``--n-latents`` scenes with the (already scale-folded) VAE encoder: [N,4,h,w]."""
        vm = self.vae_model
        n_lat = min(self.data.n, self.args.n_latents)
        t0 = time.time()
        out = []
        for s in range(0, n_lat, 256):
            x = self.data.image_batch(np.arange(s, min(n_lat, s + 256))).to(self.device)
            mean, _ = torch.chunk(vm.quant_conv(vm.encoder(x)), 2, dim=1)
            out.append(mean.float())
        log(f"encoded {n_lat} scenes in {time.time() - t0:.0f}s")
        return torch.cat(out)

    # ---- params
    def vae_params(self):
        return [p for _, p in sorted(self.vae_model.named_parameters())]

    def unet_named(self):
        out = [("unet." + k, p) for k, p in sorted(self.unet.named_parameters())]
        out += [("te." + k, p) for k, p in sorted(self.te.named_parameters()) if not k.endswith("logit_scale")
                and "text_projection" not in k]
        return out

    def _init_phase_objects(self):
        if self.phase == "vae":
            for p in self.vae_params():
                p.requires_grad_(True)
            self.opt = torch.optim.AdamW(self.vae_params(), lr=self.args.vae_lr, weight_decay=0.0, betas=(0.9, 0.99),
                                         foreach=True)
        else:
            for p in self.vae_model.parameters():
                p.requires_grad_(False)
            named = self.unet_named()
            for _, p in named:
                p.requires_grad_(True)
            self.opt = torch.optim.AdamW([p for _, p in named], lr=self.args.lr, weight_decay=0.0, betas=(0.9, 0.99),
                                         foreach=True)
            emb = self.te.clip_l.transformer.text_model.embeddings.token_embedding.weight
            used = torch.zeros(emb.shape[0], 1, device=emb.device)
            used[caption_token_ids(self.clip)] = 1.0
            self._emb_mask = used
            emb.register_hook(lambda g: g * self._emb_mask.to(g.dtype))
            if not self.ema:
                self.ema = {k: p.detach().clone() for k, p in named}
            else:
                self.ema = {k: v.to(self.device) for k, v in self.ema.items()}
            sig = self.mp.model.model_sampling.sigmas.float().cpu()
            ac = 1.0 / (1.0 + sig ** 2)  # ComfyUI's SD15 scaled_linear schedule
            self.alphas_cumprod = ac.to(self.device)
            if self.latents is not None:
                self.latents = self.latents.to(self.device)

    # ---- checkpoint
    def state_tensors(self):
        t = {}
        for k, v in self.vae_model.state_dict().items():
            t["vae/" + k] = v
        for k, v in self.unet.state_dict().items():
            t["unet/" + k] = v
        for k, v in self.te.state_dict().items():
            t["te/" + k] = v
        for k, v in self.ema.items():
            t["ema/" + k] = v
        t.update(opt_tensors(self.opt, "opt"))
        if self.latents is not None:
            t["latents"] = self.latents
        return t

    def save(self, reason=""):
        meta = {"phase": self.phase, "step": self.step, "elapsed": self.elapsed, "best": self.best,
                "config": self.cfg.to_dict(), "args": vars(self.args), "n_data": self.data.n, "seed": self.data.seed}
        t = time.time()
        save_ckpt(self.ckpt_path, self.state_tensors(), meta)
        log(f"checkpoint {reason} phase={self.phase} step={self.step} ({time.time() - t:.1f}s)")

    def load(self):
        tensors, meta = load_ckpt(self.ckpt_path)
        self.vae_model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae/")})
        self.unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet/")})
        self.te.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("te/")}, strict=False)
        self.phase, self.step, self.elapsed = meta["phase"], meta["step"], meta["elapsed"]
        self.best = meta.get("best", {})
        self.ema = {k[4:]: v.clone() for k, v in tensors.items() if k.startswith("ema/")}
        self.latents = tensors.get("latents")
        self._init_phase_objects()
        opt_load(self.opt, {k: v.to(self.device) for k, v in tensors.items() if k.startswith("opt/")}, "opt")
        log(f"resumed phase={self.phase} step={self.step} elapsed={self.elapsed}")

    # ---- VAE phase
    def lr_at(self, base, frac, warm_steps=100):
        w = min(1.0, (self.step + 1) / warm_steps)
        return base * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def vae_step(self):
        a = self.args
        rng = np.random.default_rng([a.seed, 1, self.step])
        idx = rng.integers(0, self.data.n, a.vae_batch)
        x = self.data.image_batch(idx)
        if a.vae_crop and a.vae_crop < x.shape[-1]:  # aligned random crops: the VAE is convolutional, 4x cheaper
            c = a.vae_crop
            offs = rng.integers(0, (x.shape[-1] - c) // 8 + 1, (len(idx), 2)) * 8
            x = torch.stack([x[i, :, oy:oy + c, ox:ox + c] for i, (oy, ox) in enumerate(offs)])
        x = x.to(self.device)
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + self.step)
        vm = self.vae_model
        h = vm.encoder(x)
        moments = vm.quant_conv(h)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g).to(mean.device)
        rec = vm.decoder(vm.post_quant_conv(z))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        mse = F.mse_loss(rec, x)
        loss = mse + 0.5 * F.l1_loss(rec, x) + a.kl_weight * kl
        for pg in self.opt.param_groups:
            pg["lr"] = self.lr_at(a.vae_lr, self.elapsed["vae"] / (a.vae_minutes * 60))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae_params(), 1.0)
        self.opt.step()
        psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
        return {"loss": loss.item(), "psnr": psnr, "kl": kl.item()}

    @torch.no_grad()
    def vae_eval(self, n=256):
        """PSNR (dB, [0,1] range) through comfy.sd.VAE.encode/decode on held-out scenes."""
        from . import scenes

        imgs = np.stack([scenes.sample_scene(10**9 + i).image for i in range(n)])
        x = torch.from_numpy(imgs).float() / 255.0
        lat = self.vae.encode(x)
        rec = self.vae.decode(lat).float()
        mse = ((rec - x) ** 2).mean().item()
        return 10 * math.log10(1.0 / max(mse, 1e-12)), lat

    @torch.no_grad()
    def finish_vae(self):
        """Folds the latent scale into the VAE (0.18215 * latent -> unit std), caches data latents."""
        vm = self.vae_model
        means = []
        n_lat = min(self.data.n, self.args.n_latents)
        t0 = time.time()
        for s in range(0, n_lat, 128):
            x = self.data.image_batch(np.arange(s, min(n_lat, s + 128))).to(self.device)
            mean, _ = torch.chunk(vm.quant_conv(vm.encoder(x)), 2, dim=1)
            means.append(mean)
        lat = torch.cat(means)
        log(f"encoded {n_lat} scenes in {time.time() - t0:.0f}s")
        std = lat.std().item()
        k = 1.0 / (0.18215 * std)
        c = self.cfg.latent_channels
        vm.quant_conv.weight[:c] *= k
        vm.quant_conv.bias[:c] *= k
        vm.quant_conv.bias[c:] += 2 * math.log(k)
        vm.post_quant_conv.weight /= k
        self.latents = (lat * k).float()
        psnr, _ = self.vae_eval()
        log(f"VAE done: latent std {std:.4f} -> scale {k:.3f}; scaled latent std*0.18215 = "
            f"{(self.latents.std() * 0.18215).item():.3f}; held-out PSNR via comfy.sd.VAE {psnr:.2f} dB")
        self.best["vae_psnr"] = psnr

    # ---- UNet phase
    def unet_step(self):
        a = self.args
        rng = np.random.default_rng([a.seed, 2, self.step])
        idx = rng.integers(0, len(self.latents), a.batch)
        prng = random.Random(f"{a.seed}:{self.step}")
        caps = [("" if prng.random() < a.uncond_prob else self.data.caption(int(i), prng)) for i in idx]
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + self.step + 77)
        dev = self.device
        x0 = self.latents[torch.as_tensor(idx, device=self.latents.device)] * 0.18215
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        if a.t_bias > 0:  # a share of the batch at high noise, where layout and attribute binding are decided
            hi = torch.randint(300, 1000, (len(idx),), generator=g)
            t = torch.where(torch.rand(len(idx), generator=g) < a.t_bias, hi, t)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        t = t.to(dev)
        ac = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        ids = self.tokens.batch(caps).to(dev)
        ctx = self.te.clip_l.transformer(ids, dtype=torch.float32)[0]
        eps = self.unet(xt, timesteps=t.float(), context=ctx)
        loss = F.mse_loss(eps.float(), noise)
        for pg in self.opt.param_groups:
            pg["lr"] = self.lr_at(a.lr, self.elapsed["unet"] / max(1.0, a.minutes * 60 - a.vae_minutes * 60),
                                  warm_steps=200)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        named = self.unet_named()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        self.opt.step()
        d = min(a.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_([self.ema[k] for k, _ in named], [p.detach() for _, p in named], 1 - d)
        return {"loss": loss.item()}

    def swap_ema(self):
        """Swaps live and EMA weights (call twice to restore)."""
        with torch.no_grad():
            for k, p in self.unet_named():
                tmp = p.detach().clone()
                p.copy_(self.ema[k])
                self.ema[k].copy_(tmp)

    @torch.no_grad()
    def load_decoder(self):
        """Picks up the decoder fine-tuned by a concurrent ``--decoder-finetune`` process (latents unchanged)."""
        path = os.path.join(self.out, DECODER_FILE)
        if self.phase != "unet" or not os.path.exists(path):
            return
        try:
            tensors, meta = load_ckpt(path)
            self.vae_model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae/")}, strict=False)
            self.best["decoder"] = meta.get("step")
            log(f"loaded fine-tuned decoder (step {meta.get('step')}, PSNR {meta.get('psnr')})")
        except Exception as exc:
            log(f"could not load {path}: {exc!r}")

    @torch.no_grad()
    def probe(self):
        """Exports EMA weights (fp16) and scores sampled prompts with the judge."""
        from ..comfy_bridge import models as unet_models

        self.load_decoder()
        self.swap_ema()
        try:
            latest = os.path.join(self.out, "toyworld_latest.safetensors")
            unet_models.save_weights(latest, self.mp, self.clip, self.vae,
                              extra_metadata={"step": self.step, "phase": self.phase})
            res = probe_faithfulness(self.mp, self.clip, self.vae, n=self.args.probe_n, seed=1234,
                                     grid_path=os.path.join(self.out, f"probe_{self.step:06d}.png"))
        finally:
            for m in (self.unet, self.te, self.vae_model):  # comfy's loader may have moved them
                m.to(self.device)
            self.swap_ema()
        res.update({"step": self.step, "minutes": round(self.elapsed["unet"] / 60, 2)})
        with open(os.path.join(self.out, "probe.jsonl"), "a") as f:
            f.write(json.dumps(res) + "\n")
        log("probe " + json.dumps(res))
        score = res.get("mean")
        if score is not None and score >= self.best.get("probe_mean", -1):
            self.best["probe_mean"] = score
            self.best["probe_step"] = self.step
            import shutil

            shutil.copyfile(latest, os.path.join(self.out, "toyworld_best.safetensors"))
            log(f"new best probe mean {score:.3f} -> toyworld_best.safetensors")

    # ---- loop
    def run(self):
        a = self.args
        last_ckpt = time.time()
        last_probe = time.time()
        last_log = time.time()
        hist = []
        while not _STOP["flag"]:
            if self.phase == "vae" and self.elapsed["vae"] >= a.vae_minutes * 60:
                self.finish_vae()
                self.phase = "unet"
                self.step = 0
                self._init_phase_objects()
                self.save("vae->unet")
                last_ckpt = time.time()
            total = self.elapsed["vae"] + self.elapsed["unet"]
            if total >= a.minutes * 60:
                log("time budget reached")
                break
            t0 = time.time()
            stats = self.vae_step() if self.phase == "vae" else self.unet_step()
            self.elapsed[self.phase] += time.time() - t0
            self.step += 1
            hist.append(stats)
            if time.time() - last_log > a.log_every:
                keys = hist[-1].keys()
                hist = [h for h in hist if h.keys() == keys]
                avg = {k: round(sum(h[k] for h in hist) / len(hist), 4) for k in keys}
                log(f"{self.phase} step {self.step} {avg} {self.elapsed[self.phase] / max(1, self.step):.3f}s/step "
                    f"lr {self.opt.param_groups[0]['lr']:.2e}")
                hist = []
                last_log = time.time()
            if time.time() - last_ckpt > a.ckpt_every:
                self.save("periodic")
                last_ckpt = time.time()
            if self.phase == "unet" and time.time() - last_probe > a.probe_every:
                try:
                    self.probe()
                except Exception as exc:  # the probe must never kill training
                    log(f"probe failed: {exc!r}")
                last_probe = time.time()
        self.save("stop" if _STOP["flag"] else "final")
        if self.phase == "unet" and not _STOP["flag"]:
            self.probe()


# ----------------------------------------------------------------------------------------------------------------
# decoder fine-tuning (runs beside the UNet phase: the encoder and so the latents stay fixed)
# ----------------------------------------------------------------------------------------------------------------

DECODER_FILE = "decoder.safetensors"


def decoder_finetune(args) -> None:
    """Trains post_quant_conv + decoder on (cached latent, image) pairs from the main checkpoint's frozen encoder;
    writes ``decoder.safetensors`` (atomic) every --ckpt-every seconds and on SIGTERM; resumable."""
    from ..comfy_bridge import models as unet_models
    from . import scenes

    ckpt = os.path.join(args.out, "ckpt.safetensors")
    tensors, meta = load_ckpt(ckpt)
    if meta["phase"] != "unet":
        raise SystemExit("the main run has not finished its VAE phase yet")
    cfg = unet_models.config_from_any(meta["config"])
    _, _, vae = unet_models.build_unet(cfg, state_dict={"vae." + k[4:]: v for k, v in tensors.items() if k.startswith("vae/")},
                                dtype=torch.float32)
    vm = vae.first_stage_model
    latents = tensors["latents"]
    del tensors
    out_path = os.path.join(args.out, DECODER_FILE)
    step, elapsed = 0, 0.0
    if os.path.exists(out_path):
        t2, m2 = load_ckpt(out_path)
        vm.load_state_dict({k[4:]: v for k, v in t2.items() if k.startswith("vae/")}, strict=False)
        step, elapsed = m2["step"], m2["elapsed"]
        log(f"decoder: resumed at step {step}")
    params = list(vm.post_quant_conv.parameters()) + list(vm.decoder.parameters())
    for p in vm.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.dec_lr, weight_decay=0.0, betas=(0.9, 0.99), foreach=True)
    n = len(latents)
    imgs, _, _ = scenes.make_dataset(n, seed=meta["seed"])
    x_all = torch.from_numpy(imgs).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2).contiguous()
    held = np.stack([scenes.sample_scene(10**9 + i).image for i in range(128)])
    held_x = torch.from_numpy(held).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        mean, _ = torch.chunk(vm.quant_conv(vm.encoder(held_x)), 2, dim=1)
    held_z = mean
    lat_std = latents.std().item()

    def held_psnr():
        with torch.no_grad():
            rec = vm.decoder(vm.post_quant_conv(held_z)).clamp(-1, 1)
            mse = ((rec - held_x) / 2).pow(2).mean().item()
        return 10 * math.log10(1.0 / max(mse, 1e-12))

    def save(reason):
        psnr = held_psnr()
        t = {"vae/post_quant_conv." + k: v for k, v in vm.post_quant_conv.state_dict().items()}
        t.update({"vae/decoder." + k: v for k, v in vm.decoder.state_dict().items()})
        save_ckpt(out_path, t, {"step": step, "elapsed": elapsed, "psnr": psnr})
        log(f"decoder checkpoint {reason} step {step} held-out PSNR {psnr:.2f} dB")

    log(f"decoder: start PSNR {held_psnr():.2f} dB, {n} latents")
    last_ckpt, last_log, hist = time.time(), time.time(), []
    while not _STOP["flag"] and elapsed < args.minutes * 60:
        t0 = time.time()
        rng = np.random.default_rng([args.seed, 3, step])
        idx = rng.integers(0, n, args.dec_batch)
        g = torch.Generator().manual_seed(args.seed * 7919 + step)
        z = latents[idx] + torch.randn(latents[idx].shape, generator=g) * (args.dec_noise * lat_std)
        x = x_all[idx]
        rec = vm.decoder(vm.post_quant_conv(z))
        mse = F.mse_loss(rec, x)
        loss = mse + 0.5 * F.l1_loss(rec, x)
        frac = elapsed / (args.minutes * 60)
        for pg in opt.param_groups:
            pg["lr"] = args.dec_lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        elapsed += time.time() - t0
        hist.append(10 * math.log10(4.0 / max(mse.item(), 1e-10)))
        if time.time() - last_log > args.log_every:
            log(f"decoder step {step} train PSNR {sum(hist) / len(hist):.2f} {elapsed / step:.2f}s/step "
                f"lr {opt.param_groups[0]['lr']:.2e}")
            hist, last_log = [], time.time()
        if time.time() - last_ckpt > args.ckpt_every:
            save("periodic")
            last_ckpt = time.time()
    save("stop" if _STOP["flag"] else "final")


def export_ckpt(out_dir: str, path: str, use_ema: bool = True) -> dict:
    """Writes the fp16 weights file (unet_models.save_weights format) of a training run: EMA UNet + text encoder from
    ``ckpt.safetensors`` and the VAE with the fine-tuned decoder (``decoder.safetensors``) when there is one."""
    from ..comfy_bridge import models as unet_models

    tensors, meta = load_ckpt(os.path.join(out_dir, "ckpt.safetensors"))
    if meta["phase"] != "unet":
        raise SystemExit("the run is still in its VAE phase: nothing to export yet")
    sd = {}
    for k, v in tensors.items():
        if k.startswith("vae/"):
            sd["vae." + k[4:]] = v
        elif k.startswith("unet/"):
            sd["model.diffusion_model." + k[5:]] = v
        elif k.startswith("te/"):
            sd["clip." + k[3:]] = v
    if use_ema:
        for k, v in tensors.items():
            if k.startswith("ema/unet."):
                sd["model.diffusion_model." + k[9:]] = v
            elif k.startswith("ema/te."):
                sd["clip." + k[7:]] = v
    dec = os.path.join(out_dir, DECODER_FILE)
    dmeta = {}
    if os.path.exists(dec):
        dt, dmeta = load_ckpt(dec)
        for k, v in dt.items():
            sd["vae." + k[4:]] = v
    mp, clip, vae = unet_models.build_unet(meta["config"], state_dict=sd, dtype=torch.float32)
    info = {"step": meta["step"], "unet_minutes": round(meta["elapsed"]["unet"] / 60, 1),
            "decoder_step": dmeta.get("step"), "decoder_psnr": dmeta.get("psnr"), "ema": use_ema}
    unet_models.save_weights(path, mp, clip, vae, extra_metadata={"training": info})
    log(f"exported {path}: {info}")
    return info


def split_weights(path: str, out_dir: str, max_mb: float = 15.0) -> list:
    """Splits a safetensors file into parts of at most ``max_mb`` MiB (whole tensors, same metadata in each), for
    transports with a per-file size limit; ``merge_weights`` puts them back together bit for bit."""
    from ..comfy_bridge.files import read_safetensors, save_safetensors

    sd, meta = read_safetensors(path, "weights file", check_finite=False)
    parts, cur, size = [], {}, 0
    for k in sorted(sd):
        nb = sd[k].numel() * sd[k].element_size()
        if cur and size + nb > max_mb * 2 ** 20:
            parts.append(cur)
            cur, size = {}, 0
        cur[k] = sd[k]
        size += nb
    parts.append(cur)
    os.makedirs(out_dir, exist_ok=True)
    names = []
    base = os.path.splitext(os.path.basename(path))[0]
    for i, part in enumerate(parts):
        name = os.path.join(out_dir, f"{base}.part{i}.safetensors")
        save_safetensors(name, part, meta)
        names.append(name)
    return names


def merge_weights(paths, out_path: str) -> None:
    """Inverse of ``split_weights``."""
    from ..comfy_bridge.files import read_safetensors, save_safetensors

    sd, meta = {}, {}
    for i, p in enumerate(paths):
        part, m = read_safetensors(p, "weights part", check_finite=False)
        sd.update(part)
        if i == 0:
            meta = m
    save_safetensors(out_path, sd, meta)


# ----------------------------------------------------------------------------------------------------------------
# faithfulness probe (also used by tests/bench helpers)
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def sample_images(mp, clip, vae, prompts, seed=0, steps=20, cfg=5.0, sampler="euler", scheduler="normal"):
    """Text-to-image through ComfyUI's own sampling; returns float images [B,64,64,3] in [0,1]."""
    from ..comfy_bridge.sampling import core_sample

    out = []
    uncond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    ds = getattr(vae, "downscale_ratio", 8)
    size = getattr(getattr(mp, "toy_config", None), "image_size", 64)
    for i, p in enumerate(prompts):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(p))
        latent = torch.zeros(1, 4, size // ds, size // ds)
        s = core_sample(mp, cond, uncond, latent, steps, cfg, sampler, scheduler, seed=seed + i)
        out.append(vae.decode(s).float().reshape(-1, size, size, 3)[:1])
    return torch.cat(out)


def probe_specs(n, seed=1234):
    from . import scenes

    rng = random.Random(seed)
    specs = []
    for _ in range(n):
        specs.append(scenes.spec_from_attrs(rng.choice(scenes.SHAPES), rng.choice(list(scenes.COLOURS)),
                                            rng.choice(scenes.SIZES), rng.choice(list(scenes.POSITIONS)),
                                            rng.choice(list(scenes.BACKGROUNDS))))
    return specs


@torch.no_grad()
def probe_faithfulness(mp, clip, vae, n=32, seed=1234, grid_path=None, steps=20, cfg=5.0):
    from . import scenes

    specs = probe_specs(n, seed)
    prompts = [scenes.caption_for(s) for s in specs]
    imgs = sample_images(mp, clip, vae, prompts, seed=seed, steps=steps, cfg=cfg)
    if grid_path:
        from PIL import Image

        u8 = (imgs.clamp(0, 1) * 255).round().byte().numpy()
        cols = 8
        rows = (len(u8) + cols - 1) // cols
        sheet = np.zeros((rows * 64, cols * 64, 3), np.uint8)
        for k, im in enumerate(u8):
            r, c = divmod(k, cols)
            sheet[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] = im
        Image.fromarray(sheet).save(grid_path)
    try:
        from . import judge
    except ImportError:
        return {"n": n, "judge": "missing"}
    attrs = ["colour", "shape", "size", "position"]
    hits = {k: 0 for k in attrs}
    for im, sp in zip(imgs, specs):
        found = judge.judge_image(im, background=sp.get("background"))
        want = sp["objects"][0]
        if found:
            best = max(found, key=lambda o: o["area"])
            for k in attrs:
                hits[k] += int(best[k] == want[k])
    res = {k: round(hits[k] / n, 3) for k in attrs}
    res["mean"] = round(sum(res.values()) / len(attrs), 3)
    res["n"] = n
    return res


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/toyworld")
    ap.add_argument("--minutes", type=float, default=120.0, help="total training time budget (both phases)")
    ap.add_argument("--vae-minutes", type=float, default=15.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default="", help="fine-tune from a weights file (unet_models.save_weights format, e.g. the shipped "
                                               "toyworld.safetensors): skips the VAE phase, keeps its VAE")
    ap.add_argument("--cpu", action="store_true",
                    help="train on the CPU even where comfy.model_management finds a GPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="toyworld")
    ap.add_argument("--n-data", type=int, default=24000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-latents", type=int, default=8000, help="scenes encoded once for the UNet phase")
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-crop", type=int, default=32, help="VAE trains on aligned random crops of this size (0: full)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--uncond-prob", type=float, default=0.1)
    ap.add_argument("--t-bias", type=float, default=0.4, help="share of timesteps drawn from [300, 1000) instead of [0, 1000)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--ckpt-every", type=float, default=180.0, help="seconds")
    ap.add_argument("--probe-every", type=float, default=600.0, help="seconds")
    ap.add_argument("--probe-n", type=int, default=32)
    ap.add_argument("--log-every", type=float, default=30.0, help="seconds")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is much faster than 2 when other processes share the 2 cores)")
    ap.add_argument("--decoder-finetune", action="store_true",
                    help="instead: fine-tune the VAE decoder beside a running UNet phase (--minutes of its own)")
    ap.add_argument("--dec-batch", type=int, default=8)
    ap.add_argument("--export", default="", help="instead: write the run's EMA weights (+ fine-tuned decoder) as fp16 "
                                                 "safetensors to this path, e.g. toyworld/weights/toyworld.safetensors")
    ap.add_argument("--dec-lr", type=float, default=5e-4)
    ap.add_argument("--dec-noise", type=float, default=0.03, help="latent noise (x latent std) for robustness")
    return ap.parse_args(argv)


def prepare_run(args) -> None:
    """What both ToyWorld trainers (this one and train_mmdit) do first: configure the ComfyUI host before its model
    code is imported (it reads the settings once; SDPA attention: differentiable and faster than sub-quadratic for
    training), TF32 on a GPU, ``args.threads`` torch threads, the seed, and SIGINT / SIGTERM handlers that make the
    loop checkpoint and stop."""
    from ..comfy_bridge import host

    host.configure(cpu=bool(args.cpu or not torch.cuda.is_available()), pytorch_attention=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:  # already set (a second run in one process)
        pass
    torch.manual_seed(args.seed)

    def _handler(signum, frame):
        log(f"signal {signum}: checkpointing and stopping")
        _STOP["flag"] = True

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def main(argv=None):
    args = parse_args(argv)
    prepare_run(args)
    if args.export:
        export_ckpt(args.out, args.export)
        return 0
    if args.decoder_finetune:
        decoder_finetune(args)
        return 0
    tr = Trainer(args)
    if args.resume and os.path.exists(tr.ckpt_path):
        tr.load()
    elif os.path.exists(tr.ckpt_path) and not args.resume:
        log(f"{tr.ckpt_path} exists; pass --resume to continue it (starting fresh, overwriting)")
    from ..comfy_bridge import models as unet_models

    log(f"params {unet_models.count_parameters(tr.mp, tr.clip, tr.vae)} args {vars(args)}")
    tr.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
