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
           "clip_with_embeddings", "PromptEncoder", "route_tokenizer", "conditioning_options"]


def encode(clip, prompt: str):
    """CONDITIONING of ``prompt`` ([[emb [1, T, D], {"pooled_output": ...}]]), as CLIP Text Encode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))


def conditioning_options(cond) -> dict:
    return dict(cond[0][1] or {})


def route_tokenizer():
    """The real CLIP-L tokenizer ComfyUI ships (comfy/sd1_tokenizer), without a text encoder."""
    import comfy.sd1_clip

    return comfy.sd1_clip.SDTokenizer()


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


def _token_embedding(clip):
    cm = clip.cond_stage_model
    inner = getattr(cm, getattr(cm, "clip", "clip_l"), None)
    tr = getattr(inner, "transformer", None)
    if tr is None or not hasattr(tr, "get_input_embeddings"):
        raise ValueError("this CLIP has no SD1.x-style transformer with token embeddings")
    return tr.get_input_embeddings()


def embedding_width(clip) -> int:
    """Width of the CLIP token embeddings (768 for SD1.x)."""
    return int(_token_embedding(clip).weight.shape[-1])


def token_rows(clip, words: str, n: int) -> torch.Tensor:
    """Initial vectors [n, width] from the token embeddings of ``words`` (float32, CPU, a copy).

    The words' BPE tokens are spread over the n vectors (vector i takes token i * k // n of the k tokens), so one
    word initialises every vector (the reference initialises from one token) and n words one vector each.
    ValueError when ``words`` gives no tokens."""
    ids = _inner(clip).tokenizer(words.strip())["input_ids"][1:-1] if words.strip() else []
    if not ids:
        raise ValueError(f"the initializer {words!r} gives no tokens; give one or more ordinary words (e.g. "
                         "'teapot')")
    weight = _token_embedding(clip).weight
    with torch.inference_mode(False):
        rows = weight[torch.tensor(ids, device=weight.device)].detach().float().cpu().clone()
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

    table: word -> vectors [n, width] (or {embedding_key: [n, width]}); the word is usable as ``embedding:word`` in
    prompts and, with ``bare_words``, also bare ("photo of a <v1> pot"). extra_dirs: embedding folders to add
    (ComfyUI's loader reads them). The clone's tokenizers are shallow copies (the vocabulary is shared)."""
    table = {str(k): v for k, v in (table or {}).items()}
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
    positions, same clip skip, same text-encoder patches). Token lists are cached per prompt text."""

    def __init__(self, clip, name: str, n_vectors: int, width: int):
        self.name = name
        self.n = int(n_vectors)
        gen = torch.Generator().manual_seed(0x5EED)
        self.marker = torch.randn(self.n, width, generator=gen) * 3.0 + 7.0
        self.clip = clip_with_embeddings(clip, {name: self.marker})
        self._cache: dict = {}

    def placeholder(self) -> str:
        return f"embedding:{self.name}"

    def tokens(self, text: str):
        """(token dict, positions) with positions = [(section key, chunk index, token index, row)]."""
        if text not in self._cache:
            tokens = self.clip.tokenize(text)
            pos = []
            for key, chunks in tokens.items():
                for ci, chunk in enumerate(chunks):
                    for ti, item in enumerate(chunk):
                        t = item[0]
                        if torch.is_tensor(t) and t.shape == self.marker[0].shape:
                            for row in range(self.n):
                                if torch.equal(t.float().cpu(), self.marker[row]):
                                    pos.append((key, ci, ti, row))
                                    break
            self._cache[text] = (tokens, pos)
        return self._cache[text]

    def encode(self, text: str, vectors: Optional[torch.Tensor]) -> torch.Tensor:
        """Conditioning [1, T, D] of ``text`` with the placeholder rows taken from ``vectors`` [n, width] (which
        may require grad); ``vectors`` None for a prompt without the placeholder."""
        tokens, pos = self.tokens(text)
        if pos and vectors is None:
            raise ValueError("this prompt contains the placeholder; vectors are needed")
        if pos:
            tokens = {k: [list(c) for c in v] for k, v in tokens.items()}
            for key, ci, ti, row in pos:
                item = tokens[key][ci][ti]
                tokens[key][ci][ti] = (vectors[row],) + tuple(item[1:])
        return self.clip.encode_from_tokens(tokens)
