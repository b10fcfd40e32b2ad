"""Inversion of real images: DDIM inversion, null-text inversion and negative-prompt inversion.

The loops take a ``Denoiser`` (inversion/protocol.py) and plain tensors; ``invert`` runs them through a
``LoopRunner`` (comfy_bridge/sampling.py runs them inside ComfyUI's sampler) and returns an ``Inversion``, the value
nodes pass on so that one inversion serves many edits. Nothing here imports ComfyUI.

Sources:
  * DDIM inversion: Song et al., DDIM (2021), Eq. 12 run backwards; Mokady et al., "Null-text Inversion for
    Editing Real Images using Guided Diffusion Models" (2022), sec. 3.1, and the reference notebook
    google/prompt-to-prompt null_text_w_ptp.ipynb (NullInversion.ddim_loop): conditional embedding only.
  * Null-text inversion: Mokady et al. sec. 3.2 / Algorithm 1 and NullInversion.null_optimization: per step,
    Adam on the unconditional embedding, warm start from the previous step's optimum, the conditional branch
    computed once per step, early stop when the loss drops below epsilon + slope * step.
  * Negative-prompt inversion: Miyake et al. (arXiv 2305.16807): DDIM inversion, then the source prompt's
    embedding is used as the "unconditional" one at every step (cure-lab/PnPInversion NegativePromptInversion).
  * Direct Inversion (PnP Inversion): Ju et al., "PnP Inversion: Boosting Diffusion-based Editing with 3 Lines of
    Code" (ICLR 2024, arXiv 2310.01506), Algorithm 1: DDIM inversion keeps its whole trajectory z*_0 ... z*_T, and
    while editing the source branch is put back on it after every step, z^src_{t-1} <- z^src_{t-1} +
    (z*_{t-1} - z^src_{t-1}), so the source row reproduces the photo with no optimisation while the edited rows
    are left to the attention controller (cure-lab/PnPInversion DirectInversion.offset_calculate and
    p2p_guidance_forward.direct_inversion_p2p_guidance_diffusion_step, which add the same offset computed in a
    separate pass). :class:`Inversion` keeps the trajectory as ``path``; inversion/replay.py applies it. On a
    rectified-flow model the same idea is the stored inversion path of :func:`inversion.flow.flow_inversion_loop`:
    the source row's step is corrected onto it (its velocity replaced by the path's own over the interval).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .ddim import ddim_step, to_vp
from .flow import FLOW_METHODS, flow_inversion_loop
from .protocol import Denoiser, LoopRunner, embedding_of

#: Direct Inversion (PnP Inversion): the inversion path kept and the edit's source row put back on it every step;
#: it serves diffusion models (a DDIM inversion's trajectory) and rectified-flow models (the flow inversion's path)
DIRECT = "direct"
#: the inversion methods of diffusion (DDPM-trained, CFG) models
DIFFUSION_METHODS = ("null_text", "negative_prompt", "ddim", DIRECT)
#: the rectified-flow methods (inversion/flow.py: Flux and other flow models), and direct
FLOW_MODEL_METHODS = FLOW_METHODS + (DIRECT,)
#: every method: the diffusion ones, then the rectified-flow solvers
METHODS = DIFFUSION_METHODS + FLOW_METHODS
#: the ODE solver of Direct Inversion on a rectified-flow model: FireFlow's midpoint step (second order at about one
#: model evaluation per step; bench/bench_flow_inversion.py: RF-Solver's accuracy at Euler's cost)
DIRECT_FLOW_SOLVER = "fireflow"
#: below this many steps an inversion is coarse (the references invert at 50; see :func:`inversion_advice`)
FEW_STEPS = 10


def inversion_advice(steps: int, guidance_scale: float, method: str) -> list:
    """Plain-language notes for settings where inversion is not meaningful (empty list when none apply):

    * fewer than :data:`FEW_STEPS` steps: DDIM inversion assumes the noise prediction barely changes between two
      neighbouring levels (Mokady et al. 2022, sec. 3.1), which fails for large steps; distilled few-step models
      (SDXL Turbo / Lightning, LCM: 1-8 steps) are trained to sample in few steps, not to invert, so the photo comes
      back loosely, and null-text optimisation can only partly make up for it;
    * null_text at CFG 1: the unconditional embedding does not enter the guided prediction (uncond + 1 (cond -
      uncond) = cond), so the optimisation cannot change anything; DDIM inversion gives the same result faster."""
    notes = []
    if int(steps) < FEW_STEPS:
        notes.append(
            f"inversion at {int(steps)} steps is coarse: inversion (DDIM or Euler) is accurate only when consecutive "
            f"noise levels are close (the references use 50 steps). Distilled few-step models (SDXL Turbo / Lightning, "
            f"LCM) sample well at 1-8 steps but were not trained to invert: expect a loose reconstruction and "
            f"edits that drift; invert with at least {FEW_STEPS} steps (better 50) where the model allows")
    if method == "null_text" and float(guidance_scale) <= 1.0:
        notes.append("null-text inversion at CFG 1 cannot change anything (the unconditional embedding does not "
                     "enter the result at CFG 1); use method 'ddim' (same result, faster) or a CFG above 1")
    return notes


@dataclass
class Inversion:
    """One inverted image (the AE_INVERSION value).

    x_T:            [1, C, H, W] the inverted latent, in ComfyUI's LATENT scale.
    sigmas:         [N + 1] descending replay schedule (VE sigmas; the last is usually 0).
    source_prompt:  the prompt the image was inverted with.
    source_cond:    ComfyUI CONDITIONING of the source prompt ([[emb [1, 77, D], extras]]).
    uncond:         N tensors [1, 77, D]: the unconditional embedding to use at each replay step (the
                    optimised null-text embeddings; the source embedding for negative-prompt inversion; the
                    empty prompt's embedding for plain DDIM inversion); [1, 78, D] on SDXL, whose last row holds
                    the pooled vector (the runner's ``embedding``).
    family:         the model family inverted with ("sd1", "sd2", "sdxl"; "" when not recorded).
    prediction:     "eps" or "v" ("" when not recorded).
    guidance_scale: the CFG scale the inversion was made for (null-text is optimised for it).
    method:         'null_text', 'negative_prompt', 'ddim' or 'direct'; for flow models 'rf_euler', 'rf_solver',
                    'fireflow' or 'direct' (inversion/flow.py: uncond is then empty, the model's guidance being part
                    of source_cond (Flux), or for a flow model with classifier-free guidance (SD3) at a
                    guidance_scale other than 1 the empty prompt's embedding at every step).
    losses:         per step, the null-text inner losses (empty lists for the other methods).
    latent:         [1, C, H, W] the encoded input (LATENT scale), kept to measure the reconstruction.
    solver:         the rectified-flow ODE solver the inversion was made with and the replay uses ('rf_euler',
                    'rf_solver', 'fireflow'); "" for a diffusion model (DDIM).
    path:           method 'direct' only: [N + 1, C, H, W] the inversion path in the model's latent scale (what the
                    loops see: ComfyUI's process_latent_in of LATENT), ordered like the replay schedule: path[i] is
                    the latent at sigmas[i], path[0] = x_T, path[N] = the encoded photo. The replay's source row is
                    put back on path[i + 1] after step i (Ju et al. 2023, Algorithm 1). None for the other methods.
    """

    x_T: torch.Tensor
    sigmas: torch.Tensor
    source_prompt: str
    source_cond: list
    uncond: list
    guidance_scale: float
    method: str
    latent: torch.Tensor
    losses: list = field(default_factory=list)
    scheduler: str = ""
    family: str = ""
    prediction: str = ""
    solver: str = ""
    path: Optional[torch.Tensor] = None

    def __post_init__(self):
        if not self.solver and self.method in FLOW_METHODS:
            self.solver = self.method

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def is_flow(self) -> bool:
        """True for an inversion of a rectified-flow model (Flux): its replay walks the flow ODE with ``solver``."""
        return bool(self.solver)

    def check_compatible(self, steps: Optional[int] = None, latent_shape=None) -> None:
        """Raises ValueError when an edit asks for another step count or image size than was inverted."""
        if steps is not None and steps != self.steps:
            raise ValueError(f"this inversion was made with {self.steps} steps but the edit asks for {steps}; "
                             f"re-run the inversion with {steps} steps or edit with {self.steps}")
        if latent_shape is not None and tuple(latent_shape[-2:]) != tuple(self.x_T.shape[-2:]):
            hw = tuple(self.x_T.shape[-2:])
            raise ValueError(f"this inversion is of a {hw[1] * 8}x{hw[0] * 8} image (latent {hw}) but the edit "
                             f"is for latent {tuple(latent_shape[-2:])}; invert the image at the size you edit")


def v_eps_at_source(eps_b: torch.Tensor, x_a: torch.Tensor, s_a: float, s_b: float) -> torch.Tensor:
    """The noise a v-prediction model's output means at the *source* level of a DDIM inversion step.

    The model was evaluated on x_a at the target level b (t_b); ComfyUI's denoised output read at b gives
    eps_b = sqrt(abar_b) v + sqrt(1 - abar_b) x_VP, where x_VP = x_a / sqrt(1 + s_a^2) is x_a in VP form and
    abar = 1 / (1 + sigma^2). diffusers' DDIMInverseScheduler (prediction_type="v_prediction", its ``step``) turns
    the same v into the noise with level a's alpha: eps_a = sqrt(abar_a) v + sqrt(1 - abar_a) x_VP; this returns
    eps_a. (For an epsilon model the output is the noise itself, read the same at either level.) On the tiny SD2.x
    v model this reconstructs better than reading it at b (tests/test_diffusers_agreement.py prints both).
    x_a, eps_b: [B, C, H, W]; s_a, s_b: the VE sigmas of the two levels (s_b > 0)."""
    ab_a, ab_b = 1.0 / (1.0 + s_a ** 2), 1.0 / (1.0 + s_b ** 2)
    x_vp = x_a * ab_a ** 0.5
    v = (eps_b - (1.0 - ab_b) ** 0.5 * x_vp) / ab_b ** 0.5
    return ab_a ** 0.5 * v + (1.0 - ab_a) ** 0.5 * x_vp


def ddim_inversion_loop(den: Denoiser, x0: torch.Tensor, sigmas: torch.Tensor, cond_emb: torch.Tensor,
                        progress: Optional[Callable[[int, int], None]] = None) -> list:
    """DDIM inversion with the conditional embedding only (guidance 1), stepping like the reference.

    x0: [B, C, H, W] clean latents (processed scale); cond_emb: [B, T, D] or [1, T, D]; sigmas: [N + 1]
    descending replay schedule.
    Returns the trajectory [x at sigmas[N], x at sigmas[N-1], ..., x at sigmas[0]] (N + 1 tensors); the last
    is x_T. For a v-prediction model the noise is read at level a from the model's v (:func:`v_eps_at_source`,
    as diffusers' DDIMInverseScheduler with prediction_type="v_prediction"). As in the reference
    (null_text_w_ptp.ipynb ``next_step``; diffusers ``DDIMInverseScheduler``), the
    step from level a to the next level b uses the noise predicted for the *current* sample at the *target*
    timestep, eps(x_a, t_b); in ComfyUI's VE form the model input is rescaled so that its VP input is x_a's:
    x_in = x_a * sqrt((1 + s_b^2) / (1 + s_a^2)). Then x_b = x_a + eps * (s_b - s_a). Level 0 (the clean latent)
    is taken as the model's smallest sigma, like the reference's final_alpha_cumprod = alphas_cumprod[0].
    """
    N = len(sigmas) - 1
    xs = [x0]
    x = x0
    for k in range(N, 0, -1):
        den.check_interrupt()
        s_a = max(float(sigmas[k]), den.sigma_min)
        s_b = float(sigmas[k - 1])
        x_in = x * ((1.0 + s_b ** 2) / (1.0 + s_a ** 2)) ** 0.5
        c, _ = den.denoise(x_in, s_b, cond_emb, None)
        eps = (x_in - c) / s_b
        if getattr(den, "prediction", "eps") == "v":
            eps = v_eps_at_source(eps, x, s_a, s_b)
        x = x + eps * (s_b - s_a)
        xs.append(x)
        if progress:
            progress(N - k + 1, N)
    return xs


#: the null-text loop's modes: "fast" (the pack's default: PyTorch's fused attention kernel on the inner passes,
#: forward and backward) and "reference" (the host's attention kernel, ComfyUI's CPU default sub-quadratic one).
#: Both run the public notebook's loop (Mokady et al. Algorithm 1) and neither computes a weight gradient. The two
#: kernels round differently, and up to 10 Adam steps per level carry that on: the embeddings can end visibly apart
#: (bench/bench_inversion.py, 50 steps, against the reference loop at its best: up to 0.057 on scikit-image's cat, at
#: the same Adam steps and reconstruction error) and an early-stop test that falls within rounding of its bound can
#: end a step one Adam step sooner or later
NULL_TEXT_MODES = {"fast": dict(kernel="sdpa"), "reference": dict(kernel="host")}


def null_text_loop(den: Denoiser, trajectory: list, sigmas: torch.Tensor, cond_emb: torch.Tensor,
                   uncond_init: torch.Tensor, guidance_scale: float, num_inner_steps: int = 10,
                   early_stop_epsilon: float = 1e-5, learning_rate: float = 1e-2,
                   progress: Optional[Callable[[int, int], None]] = None, kernel: str = "sdpa",
                   optimise_pooled: bool = True):
    """Null-text optimisation (Mokady et al. 2022, Algorithm 1) of B images at once. Returns (null embeddings:
    N tensors [B, T, D], one per step; losses: per image, per step the losses of its Adam steps, in order).

    trajectory: DDIM-inversion latents [B, C, H, W], trajectory[0] clean ... trajectory[N] = x_T (model scale);
    cond_emb: [B, T, D] (or [1, T, D] shared) source-prompt embeddings; uncond_init: [1, T, D] or [B, T, D]. At step
    i (sigma_i -> sigma_{i+1}) each image's embedding starts from its step i-1 optimum (warm start), Adam with
    lr = learning_rate * (1 - i / (2N)) (the reference's 1e-2 * (1 - i/100) at N = 50) runs up to
    ``num_inner_steps`` iterations on MSE(DDIM_cfg(x_i), trajectory[N-i-1]) in VP scale, and stops early as soon as
    loss < early_stop_epsilon + 1e-3 * i / N (the reference's epsilon + i * 2e-5 at N = 50; the check follows the
    optimiser step, as in the reference); then one CFG pass with the optimised embedding advances the latent. The
    conditional branch is evaluated once per step.

    Several images are one batch, and each row runs the one-image loop: its own embedding tensor and its own Adam
    (Adam is elementwise; the UNet never mixes batch rows, so the gradient of the summed per-row losses with respect
    to a row's embedding is that row's gradient), its own early stop (a row that stopped leaves the batch for the
    rest of the step). In exact arithmetic that is inverting the images one by one; in floating point a batch's
    kernels round differently, so a row's embeddings can drift from its one-image run (bench/bench_inversion.py, 4
    inputs at 50 steps: the same Adam steps, embeddings up to 0.057 apart, the same reconstruction error), and an
    early-stop test within rounding of its bound can go the other way, after which that row's later steps start
    from another embedding.

    Its cost is the reference loop's at its best (bench/bench_inversion.py measures it against that loop written out
    with frozen weights and fused attention: 1.04x on ToyWorld, 50 steps, 1 CPU thread; README: Figures, null-text
    speed). What makes it cheaper than the notebook as published:
      * gradients only for the null embedding: the model's weights never require grad (the public notebook leaves
        the UNet's weights requiring grad, so every backward also computes and accumulates their gradients);
        always on;
      * ``kernel``: the attention kernel of these passes; "sdpa" (PyTorch's fused scaled_dot_product_attention,
        forward and backward) instead of ComfyUI's CPU default sub-quadratic attention;
      * several images as one batch (``invert_batch``; node Invert Images (Batch)): a pass over B rows costs far
        less than B passes where the model is small for the device (the four inputs of bench_inversion.py: 2.15x
        the reference loop run on each in turn), and no more per row where it is large.
    Far faster still is not to optimise: Direct Inversion (method 'direct') keeps the DDIM path instead (13x in the
    same benchmark, and the edit's source row is then exact).
    SDXL: the embedding is the whole negative conditioning, both encoders' token sequence and (the denoiser's
    ``pooled_rows`` last row) the pooled vector; ``optimise_pooled`` False keeps that row at its initial value (its
    gradient is masked to zero, so Adam leaves it exactly unchanged). bench/bench_inversion.py --family sdxl
    measures both; the README says which is the default and why.

    Measured and left out (the README has the figures): checking the early stop before the Adam step and advancing
    with that evaluation (saves one CFG pass per step; about 1% faster, reconstruction error up to 8% higher);
    starting each step from the better of the previous optimum and the source prompt's embedding (negative-prompt
    inversion's estimate) and a line search over Adam's step: both cut the Adam steps several-fold and lower the
    reconstruction error, but the embeddings move away from the reference's and word swaps of the ToyWorld
    benchmark succeed far less often (38% against 67%).
    """
    N = len(sigmas) - 1
    x = trajectory[N]
    B = x.shape[0]
    cond_emb = cond_emb.expand(B, *cond_emb.shape[1:]) if cond_emb.shape[0] == 1 else cond_emb
    if cond_emb.shape[0] != B or uncond_init.shape[0] not in (1, B):
        raise ValueError(f"null_text_loop: {B} latents but {cond_emb.shape[0]} source embeddings and "
                         f"{uncond_init.shape[0]} initial null embeddings; give one each (or one shared)")
    rows = [uncond_init[min(r, uncond_init.shape[0] - 1)][None].detach().clone() for r in range(B)]
    nulls, losses = [], [[] for _ in range(B)]
    den = den.with_kernel(kernel)
    for i in range(N):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        target = to_vp(trajectory[N - i - 1], s_next)
        threshold = early_stop_epsilon + 1e-3 * i / N
        with torch.no_grad():
            c, _ = den.denoise(x, s, cond_emb, None)
        leaves = [r.detach().clone().requires_grad_(True) for r in rows]
        if getattr(den, "pooled_rows", 0) and not optimise_pooled:
            keep = torch.ones_like(rows[0])
            keep[:, -den.pooled_rows:] = 0
            for leaf in leaves:
                leaf.register_hook(lambda g, keep=keep: g * keep)
        lr = learning_rate * (1.0 - i / (2.0 * N))
        opts = [torch.optim.Adam([leaf], lr=lr) for leaf in leaves]
        step_losses: list = [[] for _ in range(B)]
        active = list(range(B))
        for _ in range(num_inner_steps):
            den.check_interrupt()
            if len(active) == B:
                xa, ca, ta = x, c, target
            else:
                idx = torch.tensor(active, device=x.device)
                xa, ca, ta = x[idx], c[idx], target[idx]
            _, u = den.denoise(xa, s, None, torch.cat([leaves[r] for r in active]))
            x_prev = ddim_step(xa, den.cfg(ca, u, xa, s, guidance_scale), s, s_next)
            row_loss = F.mse_loss(to_vp(x_prev, s_next), ta, reduction="none").flatten(1).mean(1)
            for r in active:
                opts[r].zero_grad(set_to_none=True)
            row_loss.sum().backward()
            values = row_loss.detach().tolist()
            still = []
            for r, v in zip(active, values):
                opts[r].step()
                step_losses[r].append(v)
                if v >= threshold:
                    still.append(r)
            active = still
            if not active:
                break
        for r in range(B):
            losses[r].append(step_losses[r])
        rows = [leaf.detach() for leaf in leaves]
        uncond = torch.cat(rows)
        nulls.append(uncond.clone())
        with torch.no_grad():
            _, u = den.denoise(x, s, None, uncond)
            x = ddim_step(x, den.cfg(c, u, x, s, guidance_scale), s, s_next)
        if progress:
            progress(i + 1, N)
    return nulls, losses


def invert(runner: LoopRunner, latent: torch.Tensor, source_cond: list, empty_cond: list, sigmas: torch.Tensor,
           method: str = "null_text", guidance_scale: float = 7.5, num_inner_steps: int = 10,
           early_stop_epsilon: float = 1e-5, learning_rate: float = 1e-2, source_prompt: str = "",
           scheduler: str = "", progress: Optional[Callable[[int, int], None]] = None,
           null_text_mode: str = "fast", optimise_pooled: bool = True, flow_guidance: bool = False) -> Inversion:
    """Inverts one image. runner: runs the loops in the host's sampler with the model to invert with
    (comfy_bridge.sampling.runner(model, source_cond)); latent: [1, C, H, W] (LATENT scale, from VAEEncode);
    source_cond / empty_cond: CONDITIONING of the source prompt and of the empty prompt ([[emb [1, T, D], extras]]);
    sigmas: [N + 1] descending schedule. null_text_mode: "fast" (the default: PyTorch's fused attention kernel) or
    "reference" (the host's kernel); both run the public notebook's loop step for step (:func:`null_text_loop`).

    Raises ValueError for an unknown method or mode, a batch of several images (:func:`invert_batch` inverts a
    batch), or a schedule of fewer than 1 step. Progress is reported through ``progress(done, total)``;
    interruption (ComfyUI /interrupt) is checked at every UNet call and every null-text inner step.
    """
    if latent.ndim != 4 or latent.shape[0] != 1:
        raise ValueError(f"invert one image at a time: got a latent batch of shape {tuple(latent.shape)}; "
                         "split the batch (e.g. with 'Latent From Batch') and invert each image, or use "
                         "'Invert Images (Batch)'")
    return invert_batch(runner, latent, [source_cond], empty_cond, sigmas, method, guidance_scale, num_inner_steps,
                        early_stop_epsilon, learning_rate, [source_prompt], scheduler, progress, null_text_mode,
                        optimise_pooled, flow_guidance)[0]


def invert_batch(runner: LoopRunner, latent: torch.Tensor, source_conds: list, empty_cond: list,
                 sigmas: torch.Tensor, method: str = "null_text", guidance_scale: float = 7.5,
                 num_inner_steps: int = 10, early_stop_epsilon: float = 1e-5, learning_rate: float = 1e-2,
                 source_prompts: Optional[list] = None, scheduler: str = "",
                 progress: Optional[Callable[[int, int], None]] = None, null_text_mode: str = "fast",
                 optimise_pooled: bool = True, flow_guidance: bool = False) -> list:
    """Inverts B images as one batch; returns B ``Inversion`` values, each made by the loop :func:`invert` runs for
    that image alone, only faster: the same steps and, up to floating-point rounding and where it moves an early stop,
    the same Adam iterations and embeddings (:func:`null_text_loop` has the measured differences).

    flow_guidance: a rectified-flow model sampled with classifier-free guidance (SD3): the inversion still walks the
    conditional velocity, and with ``guidance_scale`` != 1 it records the empty prompt's embedding as every step's
    unconditional embedding, so the replay guides as the model is sampled (inversion/flow.py). False (Flux, whose
    guidance is an embedding): no unconditional embeddings.

    latent: [B, C, H, W] (LATENT scale); source_conds: B CONDITIONINGs (one per image; their embeddings must have
    the same token count T); source_prompts: B prompts (recorded in the inversions); the rest as :func:`invert`.
    Raises ValueError for an unknown method or mode, a number of conditionings other than B, embeddings of
    different lengths, or a schedule of fewer than 1 step.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {METHODS}")
    if null_text_mode not in NULL_TEXT_MODES:
        raise ValueError(f"unknown null-text mode {null_text_mode!r}; choose one of {list(NULL_TEXT_MODES)}")
    if latent.ndim != 4 or latent.shape[0] < 1:
        raise ValueError(f"expected a latent batch [B, C, H, W], got shape {tuple(latent.shape)}")
    B = latent.shape[0]
    prompts = list(source_prompts) if source_prompts is not None else [""] * len(source_conds)
    if len(source_conds) != B or len(prompts) != B:
        raise ValueError(f"{B} images but {len(source_conds)} source prompts; give one source prompt per image")
    if len(sigmas) < 2:
        raise ValueError("the schedule needs at least one step")
    emb_of = embedding_of(runner)
    embs = [emb_of(c).detach() for c in source_conds]
    if len({tuple(e.shape[1:]) for e in embs}) > 1:
        lens = ", ".join(str(e.shape[1]) for e in embs)
        raise ValueError(f"the source prompts encode to different lengths ({lens} tokens): ComfyUI encodes a prompt "
                         "in chunks of 77 tokens, so keep every prompt of a batch within the same number of chunks "
                         "(75 word pieces each), or invert the long one on its own")
    sigmas = sigmas.float()
    cond_emb = torch.cat(embs)
    empty_emb = emb_of(empty_cond).detach()
    result = {}

    def loop(den: Denoiser, x, sig):
        s = sig.to(x.device)
        N = len(s) - 1
        ce, ee = cond_emb.to(x.device, x.dtype), empty_emb.to(x.device, x.dtype)
        flow = getattr(den, "prediction", "eps") == "flow"
        if method in FLOW_METHODS or (flow and method == DIRECT):
            # rectified flow (inversion/flow.py): no unconditional branch, nothing to optimise; direct keeps the path
            solver = DIRECT_FLOW_SOLVER if method == DIRECT else method
            with torch.no_grad():
                out = flow_inversion_loop(den, x, s, ce, solver, progress=progress, keep_path=method == DIRECT)
            x_T, levels = out if method == DIRECT else (out, None)
            guided = flow_guidance and float(guidance_scale) != 1.0
            result.update(uncond=[[ee.detach().cpu()] * N if guided else [] for _ in range(B)],
                          losses=[[] for _ in range(B)], solver=solver)
            if levels is not None:  # ascending (photo ... x_T): the replay order is the reverse
                result["path"] = [torch.cat([p[r:r + 1] for p in reversed(levels)]).detach().cpu() for r in range(B)]
            return x_T
        total = N * (2 if method == "null_text" else 1)
        with torch.no_grad():
            traj = ddim_inversion_loop(den, x, s, ce, progress=(lambda d, n: progress(d, total)) if progress else None)
        result["solver"] = ""
        if method == "null_text":
            with torch.inference_mode(False), torch.enable_grad():
                den.enable_grad()
                traj = [t.clone() for t in traj]
                nulls, losses = null_text_loop(
                    den, traj, s, ce.clone(), ee.clone(), guidance_scale, num_inner_steps, early_stop_epsilon,
                    learning_rate, progress=(lambda d, n: progress(N + d, total)) if progress else None,
                    optimise_pooled=optimise_pooled, **NULL_TEXT_MODES[null_text_mode])
            nulls = [u.detach().cpu() for u in nulls]
            result["uncond"] = [[u[r:r + 1] for u in nulls] for r in range(B)]
            result["losses"] = losses
        elif method == "negative_prompt":
            result["uncond"] = [[ce[r:r + 1].detach().cpu()] * N for r in range(B)]
            result["losses"] = [[] for _ in range(B)]
        else:  # ddim and direct: the empty prompt as the unconditional embedding (the reference's for both)
            result["uncond"] = [[ee.detach().cpu()] * N for _ in range(B)]
            result["losses"] = [[] for _ in range(B)]
            if method == DIRECT:  # traj is photo ... x_T; the replay order is the reverse
                result["path"] = [torch.cat([t[r:r + 1] for t in reversed(traj)]).detach().cpu() for r in range(B)]
        return traj[-1]

    with torch.inference_mode(False):
        x_T = runner.run(loop, latent.detach().clone(), sigmas.clone()).detach().cpu()
    return [Inversion(x_T=x_T[r:r + 1].clone(), sigmas=sigmas.cpu(), source_prompt=prompts[r],
                      source_cond=source_conds[r], uncond=result["uncond"][r], guidance_scale=float(guidance_scale),
                      method=method, latent=latent[r:r + 1].detach().cpu(), losses=result["losses"][r],
                      scheduler=scheduler, solver=result["solver"],
                      path=result["path"][r] if "path" in result else None) for r in range(B)]
