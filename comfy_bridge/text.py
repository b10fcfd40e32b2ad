"""Text encoders: prompt encoding, the CLIP tokenizer and its embeddings, in-memory embeddings for new words.

* :func:`encode` - a CONDITIONING of a prompt (``CLIP.tokenize`` + ``encode_from_tokens_scheduled``);
* :func:`sd_tokenizers` - the SDTokenizer(s) inside a CLIP (CLIP-L for SD1.x; CLIP-L and CLIP-G for SDXL);
* :func:`vocab_of`, :func:`check_new_token`, :func:`embedding_width`, :func:`token_rows` - the vocabulary and the
  token-embedding matrix (for initialising new words);
* :func:`clip_with_embeddings` - a CLIP clone whose tokenizer knows more embeddings (a trained concept's modifier
  token, a textual inversion that is being trained). They are written as ordinary embedding files into a private
  folder added to the clone's ``embedding_directory``, so ComfyUI's own loader (``load_embed``, what
  ``embedding:name`` uses) reads them: no private tokenizer method is replaced, and the file names are plain
  aliases (ComfyUI 0.33 cuts embedding names at the first ``<`` or ``[``, so ``embedding:<v1>`` cannot name a file
  there). Bare words such as ``<v1>`` in prompts are rewritten to ``embedding:<alias>`` on the clone only;
* :class:`PromptEncoder` - encodes prompts with trainable vectors spliced in where a placeholder stands, so
  training sees exactly the conditioning ComfyUI computes later for ``embedding:<name>``;
* :func:`route_tokenizer` - ComfyUI's CLIP-L tokenizer for the web route (no model needed).
"""
from __future__ import annotations

import atexit
import copy
import hashlib
import os
import re
import shutil
import tempfile
from typing import Iterable, Optional

import torch

__all__ = ["encode", "sd_tokenizers", "vocab_of", "check_new_token", "embedding_width", "token_rows",
           "clip_with_embeddings", "PromptEncoder", "route_tokenizer", "conditioning_options", "encoders",
           "split_vectors", "join_vectors", "flux_tokenizer", "with_guidance"]


#: ComfyUI's tokenizer option that sets the shortest T5 sequence of a Flux / SD3 text encoder (the T5 tokenizer's
#: ``min_length``, 256 for Flux; read by ``SDTokenizer.tokenize_with_weights`` in ComfyUI 0.3.75 and 0.33)
T5_MIN_LENGTH_OPTION = "t5xxl_min_length"


def encode(clip, prompt: str, t5_length: Optional[int] = None):
    """CONDITIONING of ``prompt`` ([[emb [1, T, D], {"pooled_output": ...}]]), as CLIP Text Encode makes it.

    ``t5_length``: for a text encoder with T5 (Flux), pad the T5 sequence to this many tokens (ComfyUI pads to 256
    by default and makes a longer prompt as long as it is); CLIP-only encoders ignore it. Same result as CLIP Text
    Encode when it is None or 256 on Flux."""
    if t5_length:
        return clip.encode_from_tokens_scheduled(
            clip.tokenize(prompt, tokenizer_options={T5_MIN_LENGTH_OPTION: int(t5_length)}))
    return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))


def conditioning_options(cond) -> dict:
    return dict(cond[0][1] or {})


def route_tokenizer():
    """The real CLIP-L tokenizer ComfyUI ships (comfy/sd1_tokenizer), without a text encoder."""
    import comfy.sd1_clip

    return comfy.sd1_clip.SDTokenizer()


def flux_tokenizer():
    """ComfyUI's Flux tokenizer (CLIP-L + T5-XXL sentencepiece), without a text encoder."""
    import comfy.text_encoders.flux

    return comfy.text_encoders.flux.FluxTokenizer()


def with_guidance(cond, guidance: float):
    """A copy of a CONDITIONING with Flux's guidance-embedding value set (what core FluxGuidance does)."""
    return [[c[0], {**(c[1] or {}), "guidance": float(guidance)}] for c in cond]


def sd_tokenizers(clip) -> list:
    """[(attribute name, SDTokenizer)] inside ``clip.tokenizer`` (SD1Tokenizer: its ``clip`` attribute names the
    one; SDXL: clip_l and clip_g). ValueError for a text encoder without CLIP tokenizers."""
    outer = getattr(clip, "tokenizer", clip)
    found = []
    key = getattr(outer, "clip", None)
    if isinstance(key, str) and _is_sd_tokenizer(getattr(outer, key, None)):
        found.append((key, getattr(outer, key)))
    for k, v in sorted(vars(outer).items()):
        if _is_sd_tokenizer(v) and all(v is not f[1] for f in found):
            found.append((k, v))
    if not found:
        raise ValueError("this CLIP has no CLIP-style tokenizer (an SD1.x text encoder is needed)")
    return found


def _is_sd_tokenizer(obj) -> bool:
    return obj is not None and hasattr(obj, "tokenize_with_weights") and hasattr(obj, "tokenizer") and \
        hasattr(obj, "embedding_directory")


def _inner(clip):
    return sd_tokenizers(clip)[0][1]


def vocab_of(clip) -> dict:
    """The CLIP tokenizer's vocabulary (BPE string -> id)."""
    return _inner(clip).tokenizer.get_vocab()


def check_new_token(clip, token: str, what: str = "placeholder token") -> None:
    """Raises ValueError when ``token`` is already a word of the CLIP vocabulary (as a whole word, ``tok</w>``,
    or as a bare entry), since a new concept must not shadow a word the model already knows."""
    vocab = vocab_of(clip)
    t = token.strip().lower()
    if not t:
        raise ValueError(f"the {what} is empty")
    for cand in (t, t + "</w>"):
        if cand in vocab:
            raise ValueError(f"the {what} {token!r} already exists in the CLIP vocabulary (token id {vocab[cand]}); "
                             "choose a new word, e.g. a made-up one such as 'sks_teapot' or '<v1>'")


def encoders(clip) -> list:
    """[(token key, embedding key, width)] of the CLIP's text encoders, in the order their vectors are concatenated
    (:func:`embedding_width`): SD1.x [("l", "clip_l", 768)], SD2.x [("h", "clip_h", 1024)], SDXL [("l", "clip_l",
    768), ("g", "clip_g", 1280)]. The token key is the section of ``clip.tokenize``'s output, the embedding key the
    tensor name of an embedding file for that encoder (A1111 / ComfyUI SDXL embeddings: clip_l and clip_g).
    ValueError for a text encoder without CLIP-style token embeddings."""
    cm = clip.cond_stage_model
    out = []
    for attr, tok in sd_tokenizers(clip):
        key = attr[len("clip_"):] if attr.startswith("clip_") else attr
        tr = getattr(getattr(cm, attr, None), "transformer", None)
        if tr is None or not hasattr(tr, "get_input_embeddings"):
            raise ValueError("this CLIP has no SD1.x/SD2.x/SDXL-style transformer with token embeddings")
        out.append((key, getattr(tok, "embedding_key", attr), int(tr.get_input_embeddings().weight.shape[-1])))
    order = {"l": 0, "h": 1, "g": 2}
    return sorted(out, key=lambda e: order.get(e[0], 9))


def _token_embeddings(clip) -> list:
    cm = clip.cond_stage_model
    return [getattr(cm, f"clip_{key}").transformer.get_input_embeddings() for key, _, _ in encoders(clip)]


def embedding_width(clip) -> int:
    """Width of a new word's vector: the CLIP token-embedding width (768 for SD1.x, 1024 for SD2.x); for SDXL the
    CLIP-L and bigG widths together (768 + 1280), the vector being the two encoders' vectors side by side
    (:func:`split_vectors`)."""
    return sum(w for _, _, w in encoders(clip))


def split_vectors(clip, vectors: torch.Tensor):
    """Vectors [n, embedding_width] as an embedding file holds them: the tensor itself for one encoder, or
    {embedding key: [n, width]} for several (SDXL: {"clip_l": [n, 768], "clip_g": [n, 1280]}). ValueError for
    another width."""
    encs = encoders(clip)
    total = sum(w for _, _, w in encs)
    if vectors.shape[-1] != total:
        raise ValueError(f"vectors of width {vectors.shape[-1]} do not fit this CLIP (its new-word vectors are "
                         f"{total} wide)")
    if len(encs) == 1:
        return vectors
    out, start = {}, 0
    for _, ekey, w in encs:
        out[ekey] = vectors[..., start:start + w]
        start += w
    return out


def join_vectors(clip, parts: dict) -> torch.Tensor:
    """Inverse of :func:`split_vectors` for several encoders: {embedding key: [n, width]} -> [n, total]. ValueError
    naming the missing encoder."""
    missing = [ekey for _, ekey, _ in encoders(clip) if ekey not in parts]
    if missing:
        raise ValueError(f"the embedding has no {', '.join(missing)} vectors (it has {', '.join(sorted(parts))})")
    return torch.cat([parts[ekey].float().reshape(-1, w) for _, ekey, w in encoders(clip)], -1)


def token_rows(clip, words: str, n: int) -> torch.Tensor:
    """Initial vectors [n, embedding_width] from the token embeddings of ``words`` (float32, CPU, a copy; SDXL:
    each encoder's rows of the same tokens, side by side).

    The words' BPE tokens are spread over the n vectors (vector i takes token i * k // n of the k tokens), so one
    word initialises every vector (the reference initialises from one token) and n words one vector each.
    ValueError when ``words`` gives no tokens."""
    ids = _inner(clip).tokenizer(words.strip())["input_ids"][1:-1] if words.strip() else []
    if not ids:
        raise ValueError(f"the initializer {words!r} gives no tokens; give one or more ordinary words (e.g. "
                         "'teapot')")
    parts = []
    for emb in _token_embeddings(clip):
        weight = emb.weight
        with torch.inference_mode(False):
            parts.append(weight[torch.tensor(ids, device=weight.device)].detach().float().cpu().clone())
    rows = torch.cat(parts, -1)
    k = len(ids)
    return torch.stack([rows[i * k // n] for i in range(n)]).clone()


# ---------------------------------------------------------------------------------------------------------------
# in-memory embeddings, through ComfyUI's own embedding loader
# ---------------------------------------------------------------------------------------------------------------

_DIR: dict = {}


def _private_dir() -> str:
    """A folder of this process for alias embedding files (removed at exit)."""
    d = _DIR.get("path")
    if d is None or not os.path.isdir(d):
        d = tempfile.mkdtemp(prefix="attention_edit_embeddings_")
        _DIR["path"] = d
        atexit.register(shutil.rmtree, d, True)
    return d


def _alias_file(name: str, vectors) -> str:
    """Writes ``vectors`` ([n, width], or {embedding_key: [n, width]} for several encoders) as an embedding file
    named by content; returns its alias (the file name without extension)."""
    from .files import save_safetensors

    with torch.inference_mode(False):
        tensors = {k: v.detach().float().cpu().contiguous().clone()
                   for k, v in (vectors.items() if isinstance(vectors, dict) else [("emb_params", vectors)])}
    h = hashlib.sha1(name.encode("utf-8"))
    for k in sorted(tensors):
        h.update(k.encode("utf-8"))
        h.update(tensors[k].numpy().tobytes())
    alias = "ae_" + h.hexdigest()[:20]
    path = os.path.join(_private_dir(), alias + ".safetensors")
    if not os.path.isfile(path):
        save_safetensors(path, tensors)
    return alias


def clip_with_embeddings(clip, table: Optional[dict] = None, extra_dirs: Iterable[str] = (),
                         bare_words: bool = False):
    """A clone of ``clip`` whose tokenizer knows more embeddings; the original CLIP is not changed.

    table: word -> vectors [n, embedding_width] (SDXL: split per encoder, :func:`split_vectors`) or {embedding_key:
    [n, width]}; the word is usable as ``embedding:word`` in
    prompts and, with ``bare_words``, also bare ("photo of a <v1> pot"). extra_dirs: embedding folders to add
    (ComfyUI's loader reads them). The clone's tokenizers are shallow copies (the vocabulary is shared)."""
    table = {str(k): (split_vectors(clip, v) if torch.is_tensor(v) else v) for k, v in (table or {}).items()}
    n = clip.clone()
    outer = copy.copy(clip.tokenizer)
    aliases = {word: _alias_file(word, vec) for word, vec in table.items()}
    private = _private_dir() if aliases else None
    for attr, inner in sd_tokenizers(clip):
        inner = copy.copy(inner)
        dirs = inner.embedding_directory
        dirs = [] if dirs is None else ([dirs] if isinstance(dirs, str) else list(dirs))
        for d in list(extra_dirs) + ([private] if private else []):
            if d not in dirs:
                dirs.append(d)
        inner.embedding_directory = dirs
        setattr(outer, attr, inner)
    if aliases:
        names = sorted(aliases, key=len, reverse=True)
        prefix = "(?:embedding:)?" if bare_words else "embedding:"

        def alternative(word: str) -> str:
            # whole words only: 'sks' is not rewritten inside 'asks', nor 'embedding:w' inside 'embedding:w2'
            left = r"(?<![\w.:\-])" if (word[0].isalnum() or word[0] == "_" or not bare_words) else ""
            right = r"(?![\w\-]|\.\w)" if (word[-1].isalnum() or word[-1] == "_") else ""
            return left + prefix + re.escape(word) + right

        pattern = re.compile("|".join(alternative(x) for x in names))
        plain = outer.tokenize_with_weights

        def tokenize_with_weights(text: str, return_word_ids=False, **kwargs):
            text = pattern.sub(lambda m: f" embedding:{aliases[_word_of(m.group(0))]} ", text)
            return plain(text, return_word_ids, **kwargs)

        outer.tokenize_with_weights = tokenize_with_weights
    n.tokenizer = outer
    return n


def _word_of(match: str) -> str:
    return match[len("embedding:"):] if match.startswith("embedding:") else match


class PromptEncoder:
    """Encodes prompts with a CLIP, splicing trainable vectors in where a placeholder stands.

    The placeholder is written ``embedding:<name>`` in the prompt text; the tokenizer (a clone, see
    :func:`clip_with_embeddings`) maps it to ``n`` marker rows (seeded random vectors nobody else uses), and
    :meth:`encode` swaps those rows for the rows of the trainable tensor before ComfyUI's own ``encode_from_tokens``
    runs. So training sees exactly the conditioning ComfyUI computes later for ``embedding:<name>`` (same token
    positions, same clip skip, same text-encoder patches). Token lists are cached per prompt text.

    SDXL: the trainable vectors are [n, 768 + 1280]; each encoder's token section gets its own slice (CLIP-L the
    first 768 entries, bigG the rest), as the clip_l / clip_g tensors of an SDXL embedding file. ``pooled`` > 0 (the
    model's pooled width, comfy_bridge.sampling.pooled_width: SDXL's UNet also takes the pooled bigG output):
    :meth:`encode` returns [1, T + 1, D], the pooled vector in the first entries of the last row, the layout of
    comfy_bridge.sampling.text_embedding (the training session splits it again)."""

    def __init__(self, clip, name: str, n_vectors: int, width: int, pooled: int = 0):
        self.name = name
        self.n = int(n_vectors)
        self.pooled = int(pooled)
        gen = torch.Generator().manual_seed(0x5EED)
        self.marker = torch.randn(self.n, width, generator=gen) * 3.0 + 7.0
        self.clip = clip_with_embeddings(clip, {name: self.marker})
        self.slices, start = {}, 0
        for key, _, w in encoders(clip):
            self.slices[key] = slice(start, start + w)
            start += w
        self._cache: dict = {}

    def placeholder(self) -> str:
        return f"embedding:{self.name}"

    def tokens(self, text: str):
        """(token dict, positions) with positions = [(section key, chunk index, token index, row)]."""
        if text not in self._cache:
            tokens = self.clip.tokenize(text)
            pos = []
            for key, chunks in tokens.items():
                marker = self.marker[:, self.slices.get(key, slice(None))]
                for ci, chunk in enumerate(chunks):
                    for ti, item in enumerate(chunk):
                        t = item[0]
                        if torch.is_tensor(t) and t.shape == marker[0].shape:
                            for row in range(self.n):
                                if torch.equal(t.float().cpu(), marker[row]):
                                    pos.append((key, ci, ti, row))
                                    break
            self._cache[text] = (tokens, pos)
        return self._cache[text]

    def encode(self, text: str, vectors: Optional[torch.Tensor]) -> torch.Tensor:
        """Conditioning [1, T, D] ([1, T + 1, D] with ``pooled``) of ``text`` with the placeholder rows taken from
        ``vectors`` [n, width] (which may require grad); ``vectors`` None for a prompt without the placeholder."""
        tokens, pos = self.tokens(text)
        if pos and vectors is None:
            raise ValueError("this prompt contains the placeholder; vectors are needed")
        if pos:
            tokens = {k: [list(c) for c in v] for k, v in tokens.items()}
            for key, ci, ti, row in pos:
                item = tokens[key][ci][ti]
                tokens[key][ci][ti] = (vectors[row, self.slices.get(key, slice(None))],) + tuple(item[1:])
        if not self.pooled:
            return self.clip.encode_from_tokens(tokens)
        cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        row = torch.cat([pooled.reshape(1, 1, -1).to(cond),
                         cond.new_zeros(1, 1, cond.shape[-1] - pooled.shape[-1])], -1)
        return torch.cat([cond, row], 1)
