"""The model families the pack knows: one record per family, in the style of ComfyUI's ``comfy/supported_models.py``.

Every question "which model is this, and what can the pack do with it?" is answered here, from one signal: the
model config ComfyUI attached to the MODEL when it loaded it (``model_patcher.model.model_config``, an instance of a
class of ``comfy.supported_models``). A record says how the family is detected, its prediction kind(s), its text
streams and tokenizer sections, how its pooled text vector reaches the model, which attention binder edits it, the
inversion methods that fit it and the node groups that accept it. The callers read the record:

* ``comfy_bridge.sampling``: the pooled-vector handling (``pooled``), the binder (``binder``), the inversion methods
  (``inversion_methods``) and what an inversion records (``key``, ``prediction``);
* ``comfy_bridge.training``: whether the ADM input is SDXL's (``pooled``);
* ``nodes``: :func:`require` with a node group, whose refusal names the family and what to use instead.

The one other probe is on the text side, where a node has a CLIP but no MODEL: ``attention.align.stream_of`` reads
the tokenizer (which tokens index the attention maps). Each record's ``sequence`` names what that probe must say for
the family's text encoder; tests/test_families.py checks the two agree on every registered family's test model.

Adding a family: one :class:`Family` record in :data:`FAMILIES` (with its ComfyUI config class names) and, when its
attention is neither a UNet's attn1 / attn2 nor an MM-DiT joint attention the joint binder reads, one binder.
Nothing here imports ComfyUI at import time; detection looks the config classes up by name, so a family whose
classes a host lacks is simply never detected there (``since`` names the ComfyUI version that has them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..inversion.core import DIFFUSION_METHODS, FLOW_MODEL_METHODS

__all__ = ["Family", "FAMILIES", "GROUPS", "family_of", "family_key", "families_in", "require", "short_name",
           "prediction_of", "prediction_type", "config_class_name"]

#: the node groups a family may be accepted by, as a refusal names them
GROUPS = {
    "edit": "image inversion and Prompt-to-Prompt editing (Invert Image, Invert Images (Batch), the Edit Sampler)",
    "train": "concept training (Train Textual Inversion, Train Custom Diffusion, Load / Export Custom Diffusion)",
    "imagic": "Imagic (Optimise Embedding, Fine-tune Model, Load Imagic)",
}


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring).

    key: the id an inversion file records ("sd1", ...; never changes); short: its name in messages ("SD1.x");
    description: what the family covers, for refusals; configs: names of ComfyUI model-config classes
    (``comfy.supported_models``) that are this family; subclasses: whether subclasses of those count (SD15: yes, its
    fine-tune configs; SD20: no, its unCLIP and upscaler subclasses are other models); excluded: subclasses that do
    not count; predictions: what its models predict ("eps", "v", "flow"); text_encoders: its text encoders, as a
    user knows them; tokenizers: the sections of ComfyUI's tokenizer output ("l", "g", "h", "t5xxl", ...);
    sequence: what indexes the attention maps' token axis ("clip": 77 CLIP positions, "t5": the T5 sequence,
    "clip+t5": 77 CLIP positions then the T5 sequence, in one joint sequence); pooled: how the pooled text vector
    reaches the model ("none", "adm": the start of SDXL's ADM input, "vector": the model's vector input y);
    binder: which binder edits its attention ("unet": attn1 / attn2 patches, comfy_bridge/attention.py; "joint":
    the MM-DiT joint-attention override, comfy_bridge/joint_attention.py); inversion_methods: Invert Image's
    methods that fit it; groups: the node groups that accept it; since: the first ComfyUI version with its classes
    that the pack knows of; instead: what a user can do with a node group that does not accept it; block_labels
    (joint binder): whether ComfyUI labels each attention call with its block (Flux: ``block_type`` /
    ``block_index``) or not (SD3: every joint call is one joint block, so only the block choices "all" and "double"
    apply); guidance: "cfg" (classifier-free guidance with an unconditional branch: the UNet families, SD3) or
    "embedded" (Flux.1: the guidance is an input of the model, sampled at cfg 1)."""

    key: str
    short: str
    description: str
    configs: tuple
    subclasses: bool = False
    excluded: tuple = ()
    predictions: tuple = ("eps",)
    text_encoders: tuple = ("CLIP-L",)
    tokenizers: tuple = ("l",)
    sequence: str = "clip"
    pooled: str = "none"
    binder: str = "unet"
    inversion_methods: tuple = DIFFUSION_METHODS
    groups: frozenset = field(default_factory=lambda: frozenset({"edit", "train", "imagic"}))
    since: str = "0.3.75"
    instead: str = ""
    block_labels: bool = True
    guidance: str = "cfg"

    @property
    def is_flow(self) -> bool:
        return "flow" in self.predictions

    @property
    def article(self) -> str:
        """"a" or "an" before the short name, as it is spoken ("an SD1.x", "a Flux.1", "an SDXL")."""
        return "an" if self.short.startswith(("SD", "A", "E", "I", "O", "U")) else "a"


_DIFFUSION_INSTEAD = ("use an SD1.x, SD2.x or SDXL checkpoint for that node (the ToyWorld Model Loader's 'toyworld "
                      "(shipped)' to try it)")

#: the registered families, in detection order
FAMILIES: dict = {f.key: f for f in (
    Family("sd1", "SD1.x",
           "SD1.x checkpoints (Stable Diffusion 1.4/1.5 and their fine-tunes: a UNet with 768-wide CLIP-L "
           "cross-attention)",
           configs=("SD15",), subclasses=True),
    Family("sd2", "SD2.x",
           "SD2.x checkpoints (Stable Diffusion 2.0/2.1, 512 epsilon and 768 v-prediction: OpenCLIP-H, 1024-wide "
           "cross-attention)",
           configs=("SD20",), predictions=("eps", "v"), text_encoders=("OpenCLIP-H",), tokenizers=("h",)),
    Family("sdxl", "SDXL",
           "SDXL checkpoints (SDXL 1.0 base and its fine-tunes such as Pony, Illustrious, NoobAI, Juggernaut, "
           "epsilon or v-prediction: CLIP-L + OpenCLIP-bigG, 2048-wide cross-attention)",
           configs=("SDXL",), subclasses=True, excluded=("SDXL_instructpix2pix",), predictions=("eps", "v"),
           text_encoders=("CLIP-L", "OpenCLIP-bigG"), tokenizers=("l", "g"), pooled="adm"),
    Family("flux", "Flux.1",
           "Flux.1 models (dev and schnell and their fine-tunes: MM-DiT with T5 joint attention, rectified flow)",
           configs=("Flux", "FluxSchnell"), predictions=("flow",), text_encoders=("CLIP-L (pooled)", "T5-XXL"),
           tokenizers=("l", "t5xxl"), sequence="t5", pooled="vector", binder="joint",
           inversion_methods=FLOW_MODEL_METHODS, groups=frozenset({"edit"}), instead=_DIFFUSION_INSTEAD,
           guidance="embedded"),
    Family("sd3", "SD3",
           "SD3 / SD3.5 models (Medium, Large, Large Turbo: MM-DiT over [CLIP-L + CLIP-G ; T5-XXL] text tokens, "
           "rectified flow)",
           configs=("SD3",), predictions=("flow",), text_encoders=("CLIP-L", "OpenCLIP-bigG", "T5-XXL"),
           tokenizers=("l", "g", "t5xxl"), sequence="clip+t5", pooled="vector", binder="joint",
           inversion_methods=FLOW_MODEL_METHODS, groups=frozenset({"edit"}), instead=_DIFFUSION_INSTEAD,
           block_labels=False),
)}


def config_class_name(obj) -> Optional[str]:
    """The class name of the ComfyUI model config of a MODEL (ModelPatcher) or of its BaseModel, None when it has
    none."""
    base = getattr(obj, "model", obj)
    cfg = getattr(base, "model_config", None)
    return None if cfg is None else type(cfg).__name__


def _config_of(obj):
    base = getattr(obj, "model", obj)
    return getattr(base, "model_config", None)


def _matches(family: Family, cfg) -> bool:
    import comfy.supported_models as sm

    if type(cfg).__name__ in family.configs:
        return True
    if not family.subclasses:
        return False
    excluded = tuple(c for c in (getattr(sm, n, None) for n in family.excluded) if isinstance(c, type))
    if excluded and isinstance(cfg, excluded):
        return False
    bases = tuple(c for c in (getattr(sm, n, None) for n in family.configs) if isinstance(c, type))
    return bool(bases) and isinstance(cfg, bases)


def family_of(obj) -> Optional[Family]:
    """The :class:`Family` of a MODEL (a ModelPatcher) or of its BaseModel, from the model config ComfyUI detected
    when loading it; None for a model of no registered family (SD3 before its record, SDXL refiners, unCLIP, video
    models, ...)."""
    cfg = _config_of(obj)
    if cfg is None:
        return None
    for fam in FAMILIES.values():
        if _matches(fam, cfg):
            return fam
    return None


def family_key(obj) -> str:
    """The family's key for a MODEL ("sd1", "sd2", "sdxl", "flux", ...), or for a model of no registered family
    the name of ComfyUI's model config class ("SDXLRefiner", "SD21UnclipH", ...), or of the model object when it
    has none. What an inversion records."""
    fam = family_of(obj)
    if fam is not None:
        return fam.key
    name = config_class_name(obj)
    if name is not None:
        return name
    base = getattr(obj, "model", None)
    return type(base if base is not None else obj).__name__


def short_name(key: str) -> str:
    """The short name of a family key (or the key itself when it is not registered)."""
    fam = FAMILIES.get(key)
    return fam.short if fam is not None else key


def families_in(group: str) -> tuple:
    """The keys of the families a node group accepts, in registry order."""
    if group not in GROUPS:
        raise ValueError(f"unknown node group {group!r}; one of {tuple(GROUPS)}")
    return tuple(k for k, f in FAMILIES.items() if group in f.groups)


def _and(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def require(node: str, model_patcher, group: str) -> Family:
    """The MODEL's :class:`Family` when node group ``group`` (:data:`GROUPS`) accepts it, else a ValueError that
    names the node, the family as ComfyUI detected it, what the node works with and what to use instead. Checked
    before any work starts."""
    accepted = families_in(group)
    fam = family_of(model_patcher)
    if fam is not None and fam.key in accepted:
        return fam
    what = _and(FAMILIES[k].description for k in accepted)
    if fam is not None:
        instead = fam.instead or "use a checkpoint of a family it supports"
        raise ValueError(f"{node}: this MODEL is {fam.article} {fam.short} model (as ComfyUI detected it); "
                         f"{GROUPS[group].split(' (')[0]} does not support {fam.short} in this version: it works with "
                         f"{what}. For {fam.short}, {instead}")
    shown = family_key(model_patcher)
    known = _and(f.short for f in FAMILIES.values())
    raise ValueError(f"{node}: this MODEL is {shown} (ComfyUI's model config), which the pack does not support: it "
                     f"knows {known}, and this node works with {what}. Load a checkpoint of a supported family, or "
                     "the pack's ToyWorld Model Loader to try the workflow")


def prediction_of(ms) -> str:
    """What a ComfyUI model_sampling object predicts: "flow" (CONST: x = (1 - sigma) x0 + sigma eps), "v"
    (V_PREDICTION), "eps" (EPS), by class name along its MRO (so ComfyUI's combined classes such as
    ModelSamplingDiscreteFlow count), else the class name."""
    names = [c.__name__ for c in type(ms).__mro__]
    if "CONST" in names:
        return "flow"
    if "V_PREDICTION" in names:
        return "v"
    if "EPS" in names:
        return "eps"
    return type(ms).__name__


def prediction_type(model_patcher) -> str:
    """:func:`prediction_of` the MODEL's model_sampling (a patch another node set, e.g. ModelSamplingDiscrete,
    counts): for messages and inversion records."""
    return prediction_of(model_patcher.get_model_object("model_sampling"))
