"""Token alignment between a source prompt and an edited prompt (Prompt-to-Prompt).

Prompt-to-Prompt (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control", §3.2)
edits an image by re-using the cross-attention maps ``M_t`` of the source prompt ``P`` while sampling with
the edited prompt ``P*``. Cross-attention maps are indexed by CLIP token position (77 positions: BOS at 0,
the prompt's tokens, EOS, then padding), so every edit needs to know which source position feeds which
target position. This module computes that, and the per-token time windows that say *when* it applies:

* word swap (§3.2 "Word Swap"): :func:`replacement_mapper`, a 77x77 matrix ``M[src_token, tgt_token]``;
* adding a phrase (§3.2 "Adding a New Phrase", alignment function ``A``): :func:`refinement_mapper`,
  a global (Needleman-Wunsch) alignment of the two token sequences;
* attention re-weighting (§3.2 "Attention Re-weighting"): :func:`equalizer`, a per-token scale;
* the injection window ``tau`` of §3.2, per token: :func:`cross_replace_alpha` (cross-attention) and
  :func:`self_replace_range` (self-attention);
* text parsers for node widgets: :func:`parse_cross_replace_steps`, :func:`parse_self_replace_steps`,
  :func:`parse_word_values`.

:func:`align_prompts` is the entry point that picks the word-swap or the refinement alignment.

Reference implementation (read for semantics, not copied): ``google/prompt-to-prompt``, files
``seq_aligner.py`` (``global_align``, ``get_mapper``, ``get_refinement_mapper``, ``get_replacement_mapper_``)
and ``ptp_utils.py`` (``get_word_inds``, ``update_alpha_time_word``, ``get_time_words_attention_alpha``), and
``get_equalizer`` of its ``null_text_w_ptp.ipynb`` notebook. Results agree with those functions on ordinary
prompts (single spaces between words); the few deliberate differences are stated in each docstring.

All functions are pure: they take a tokenizer and strings and return CPU tensors. Nothing here knows about
ComfyUI nodes or models.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch

__all__ = [
    "SEQ_LEN",
    "MAX_PROMPT_TOKENS",
    "T5_SEQ_LEN",
    "T5_SEQ_LENS",
    "Stream",
    "stream_of",
    "t5_min_length",
    "FixedLength",
    "fixed_length",
    "t5_sequence_length",
    "common_length",
    "Alignment",
    "Window",
    "CrossReplaceSteps",
    "hf_tokenizer",
    "prompt_words",
    "word_token_indices",
    "replacement_mapper",
    "refinement_mapper",
    "align_prompts",
    "cross_replace_alpha",
    "self_replace_range",
    "parse_cross_replace_steps",
    "parse_self_replace_steps",
    "parse_word_values",
    "equalizer",
    "TokenSection",
    "joint_sections",
]

#: Length of a CLIP text sequence as Stable Diffusion 1.x/2.x/XL consume it (BOS + 75 tokens + EOS).
SEQ_LEN = 77
#: Tokens a prompt may have between BOS and EOS.
MAX_PROMPT_TOKENS = SEQ_LEN - 2
#: The token section of ComfyUI's Flux tokenizer that the model attends to (T5-XXL).
T5_KEY = "t5xxl"
#: Length of the T5 sequence of ComfyUI's Flux conditioning (its T5 tokenizer pads to at least 256: no start token,
#: the prompt's tokens, the end token, padding).
T5_SEQ_LEN = 256
#: The T5 sequence lengths of the pack's Flux conditionings: ComfyUI's own 256 while every prompt of an edit fits in
#: 255 tokens, else 512 (the longest T5 sequence Flux.1-dev was trained with: ``max_sequence_length`` of diffusers'
#: FluxPipeline). All prompts of one edit share one length, because the source's and the edited prompts' maps are
#: indexed position by position (see :func:`fixed_length`).
T5_SEQ_LENS = (T5_SEQ_LEN, 512)


@dataclass(frozen=True)
class Stream:
    """The token sequence a model's attention maps are indexed by: ``name`` (for messages), ``offset`` (1 when a
    start token comes first: CLIP; 0 for T5), ``seq_len`` (positions of the conditioning), ``lengths`` (the
    sequence lengths a stream may take, shortest first; a single one for CLIP) and ``limit`` (prompt tokens that
    fit the longest)."""

    name: str
    offset: int
    seq_len: int
    lengths: tuple = ()

    @property
    def limit(self) -> int:
        return max(self.lengths or (self.seq_len,)) - self.offset - 1

    @property
    def variable_length(self) -> bool:
        """True when the conditioning's length depends on the prompts (T5: 256 or 512), so every prompt of an edit
        must be encoded at one chosen length (:func:`common_length`); False for CLIP's fixed 77."""
        return len(self.lengths) > 1

    def length_for(self, num_tokens: int) -> int:
        """The shortest allowed sequence length that holds ``num_tokens`` prompt tokens (with the start and end
        tokens); the longest one when none does (the caller's limit check names the problem)."""
        need = num_tokens + self.offset + 1
        for n in sorted(self.lengths or (self.seq_len,)):
            if n >= need:
                return n
        return max(self.lengths or (self.seq_len,))

    def fixed(self, seq_len: int) -> "Stream":
        """This stream at one length: ``seq_len`` positions, prompts of up to ``seq_len - offset - 1`` tokens."""
        return Stream(self.name, self.offset, int(seq_len), (int(seq_len),))


CLIP_STREAM = Stream("CLIP", 1, SEQ_LEN)
T5_STREAM = Stream("T5", 0, T5_SEQ_LEN, T5_SEQ_LENS)


class FixedLength:
    """A tokenizer holder whose conditionings all have ``seq_len`` positions (see :func:`fixed_length`)."""

    def __init__(self, tokenizer: Any, seq_len: int):
        self.inner = tokenizer
        self.seq_len = int(seq_len)


def fixed_length(tokenizer: Any, seq_len: Any) -> Any:
    """``tokenizer`` with every prompt's maps sized for ``seq_len`` token positions (``None``: unchanged).

    The edit glue uses it on Flux, where the T5 sequence length depends on the prompts (:data:`T5_SEQ_LENS`): it
    encodes every prompt of an edit at one length and gives the alignment functions this holder, so mappers,
    windows and equalizers have that many positions. Every function here accepts it where a tokenizer is taken.
    A prompt longer than ``seq_len - 1`` tokens is refused by them with the usual message."""
    if seq_len is None:
        return tokenizer
    if isinstance(tokenizer, FixedLength):
        tokenizer = tokenizer.inner
    return FixedLength(tokenizer, seq_len)


def t5_sequence_length(num_tokens: int) -> int:
    """The T5 sequence length (256 or 512, :data:`T5_SEQ_LENS`) for prompts of up to ``num_tokens`` tokens.

    Raises:
        ValueError: more than 511 tokens (the message gives the count and says to shorten the prompt)."""
    if num_tokens > T5_STREAM.limit:
        raise ValueError(f"the prompt has {num_tokens} T5 tokens but the limit is {T5_STREAM.limit} (Flux.1 was "
                         f"trained with T5 sequences of up to {max(T5_SEQ_LENS)}); shorten it")
    return T5_STREAM.length_for(num_tokens)


def common_length(tokenizer: Any, prompts: Sequence[str], strict: bool = True) -> int:
    """The one sequence length that every prompt of an edit is encoded and aligned at: 77 for CLIP; for T5 the
    shortest of :data:`T5_SEQ_LENS` that holds the longest prompt (so a short edit keeps ComfyUI's own 256).
    Empty prompts count as none.

    Raises:
        ValueError (``strict``): a prompt longer than the stream's limit (75 CLIP / 511 T5 tokens), naming it; with
        ``strict=False`` such a prompt counts as the limit (for callers whose own check names it later)."""
    st = stream_of(tokenizer)
    worst = 0
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            continue
        n = token_count(tokenizer, p)
        if n > st.limit and strict:
            raise ValueError(f"the prompt {p[:60]!r}{'...' if len(p) > 60 else ''} has {n} {st.name} tokens but the "
                             f"limit is {st.limit}; shorten it (remove words)")
        worst = max(worst, min(n, st.limit))
    return st.length_for(worst)


def t5_min_length(tokenizer: Any) -> Optional[int]:
    """The shortest T5 sequence a ComfyUI tokenizer holder makes: the ``min_length`` of its T5 SDTokenizer (256 for
    Flux; a model's text encoder built with ComfyUI's ``t5xxl_min_length`` tokenizer setting, e.g. the ToyWorld
    MM-DiT's 32, has its own); None when the holder has no T5 tokenizer or says nothing."""
    obj = tokenizer.inner if isinstance(tokenizer, FixedLength) else tokenizer
    for _ in range(3):
        t5 = getattr(obj, T5_KEY, None)
        if t5 is not None:
            m = getattr(t5, "min_length", None)
            return int(m) if isinstance(m, int) and m > 1 else None
        obj = getattr(obj, "tokenizer", None)
        if obj is None:
            return None
    return None


def stream_of(tokenizer: Any) -> Stream:
    """:data:`T5_STREAM` for a tokenizer holder whose model attends to T5 tokens (Flux), else :data:`CLIP_STREAM`;
    for a :class:`FixedLength` holder, that stream at its length. A T5 tokenizer whose shortest sequence is not
    ComfyUI's 256 (:func:`t5_min_length`) gives that length first, then 512."""
    hf = hf_tokenizer(tokenizer)
    st = T5_STREAM if getattr(hf, "bos_token_id", 0) is None else CLIP_STREAM
    if isinstance(tokenizer, FixedLength):
        return st.fixed(tokenizer.seq_len)
    if st is T5_STREAM:
        m = t5_min_length(tokenizer)
        if m is not None and m != T5_SEQ_LEN:
            return Stream(st.name, st.offset, m, tuple(sorted({m, max(T5_SEQ_LENS)})))
    return st


class TokenSection:
    """One text stream of a tokenizer holder whose model attends to two streams in one joint sequence (SD3: the
    77 CLIP positions, CLIP-L and CLIP-G side by side, then the T5 sequence; see :func:`joint_sections`).

    It behaves as a ComfyUI tokenizer holder of that stream only: ``tokenize_with_weights`` returns the holder's
    sections ``keys`` ("l" and "g", or "t5xxl"), and the stream's SDTokenizers are its attributes, so every function
    of this module accepts it where a tokenizer is taken and computes that stream's positions."""

    def __init__(self, holder: Any, keys: tuple):
        self.holder = holder
        self.keys = tuple(keys)
        for k in self.keys:
            attr = k if k == T5_KEY else f"clip_{k}"
            setattr(self, attr, getattr(holder, attr))

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        out = self.holder.tokenize_with_weights(text, return_word_ids, **kwargs)
        return {k: out[k] for k in self.keys}


def joint_sections(tokenizer: Any) -> Optional[tuple]:
    """The text streams of a joint-sequence model in sequence order, as :class:`TokenSection` views: for SD3's
    tokenizer (CLIP-L, CLIP-G and T5-XXL; the conditioning is [77 CLIP positions ; T5 sequence]) the CLIP section
    ("l", "g") then the T5 section; None for a tokenizer of one stream (SD1.x, SD2.x, SDXL: CLIP; Flux: T5 only,
    its CLIP-L gives only the pooled vector). Accepts what :func:`comfy_tokenizer` accepts."""
    obj = tokenizer.inner if isinstance(tokenizer, FixedLength) else tokenizer
    ctok = comfy_tokenizer(obj)
    if ctok is None or isinstance(ctok, TokenSection):
        return None
    if all(getattr(ctok, a, None) is not None for a in ("clip_l", "clip_g", T5_KEY)):
        return TokenSection(ctok, ("l", "g")), TokenSection(ctok, (T5_KEY,))
    return None


#: Largest equalizer factor magnitude (the references use 2-10; beyond this the maps overflow float16/32 math).
MAX_FACTOR = 1000.0

# Scores of the global alignment used for refinement (same values as the reference's ScoreParams).
_GAP_SCORE = 0
_MATCH_SCORE = 1
_MISMATCH_SCORE = -1

#: A time window: a fraction ``f`` (meaning ``(0, f)``) or a ``(start, end)`` pair of fractions.
Window = Union[float, tuple[float, float]]
#: What ``cross_replace_steps`` may be: a window, or ``{"default_": window, "<word>": window, ...}``.
CrossReplaceSteps = Union[Window, Mapping[str, Window]]

_DEFAULT_KEY = "default_"

_CROSS_SYNTAX = (
    "accepted: '0.8' (steps 0 to 80%), '0.2,0.8' (from 20% to 80% of the steps), or a default followed by "
    "per-word windows separated by ';', e.g. '0.8; lion: 0.4; cat: 0.1,0.5'"
)
_SELF_SYNTAX = "accepted: '0.4' (steps 0 to 40%) or '0.2,0.6' (from 20% to 60% of the steps)"
_WORD_VALUES_SYNTAX = (
    "accepted: 'word: number' pairs separated by ',' or ';', e.g. 'smiling: 5, pink: -1' or '\"pink bicycle\": 2'"
)


# --------------------------------------------------------------------------------------------------------------
# Tokenizer access
# --------------------------------------------------------------------------------------------------------------

def hf_tokenizer(tokenizer: Any) -> Any:
    """Return the Hugging Face ``CLIPTokenizer`` inside any of the tokenizer holders ComfyUI uses.

    Accepts a HF ``CLIPTokenizer`` itself (anything with ``encode`` and ``decode``), a ComfyUI
    ``comfy.sd1_clip.SDTokenizer`` (``.tokenizer``), a ``comfy.sd1_clip.SD1Tokenizer`` (the attribute named by
    ``.clip``, e.g. ``clip_l``), an SDXL tokenizer (``.clip_l``), a Flux tokenizer (``.t5xxl``: its T5 sentencepiece
    tokenizer, whose token sequence is what Flux attends to), or a ``comfy.sd.CLIP`` (``.tokenizer``).
    All CLIP variants share one BPE vocabulary, so the positions computed here hold for each of them.

    Raises ``TypeError`` when no such tokenizer can be found.
    """
    obj = tokenizer.inner if isinstance(tokenizer, FixedLength) else tokenizer
    for _ in range(6):
        if callable(getattr(obj, "encode", None)) and callable(getattr(obj, "decode", None)):
            return obj
        inner = getattr(obj, "tokenizer", None)
        if inner is None:  # Flux / SD3: the T5 sequence is what the model attends to (CLIP-L gives only a vector)
            inner = getattr(obj, "t5xxl", None)
        if inner is None:
            inner = getattr(obj, "clip_l", None)
        if inner is None:
            name = getattr(obj, "clip", None)
            if isinstance(name, str):
                inner = getattr(obj, name, None)
        if inner is None or inner is obj:
            break
        obj = inner
    raise TypeError(
        f"expected a CLIP tokenizer (a transformers CLIPTokenizer, a ComfyUI SDTokenizer/SD1Tokenizer or a "
        f"CLIP object), got {type(tokenizer).__name__}"
    )


def _encode(tok: Any, text: str) -> list[int]:
    """CLIP ids of ``text`` including BOS and EOS, never truncated."""
    return [int(i) for i in tok.encode(text)]


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt: the prompt split on runs of whitespace (the reference splits on single spaces;
    the two agree for prompts with single spaces)."""
    return prompt.split()


def comfy_tokenizer(tokenizer: Any) -> Any:
    """The ComfyUI tokenizer whose ``tokenize_with_weights`` applies ComfyUI's prompt syntax (``embedding:name``,
    ``(word:1.2)`` weights, rewrites such as a Custom Diffusion modifier token), or None for a plain HF tokenizer.
    Accepts a ``comfy.sd.CLIP`` (uses its ``.tokenizer``), an ``SD1Tokenizer`` or an ``SDTokenizer``."""
    obj = tokenizer.inner if isinstance(tokenizer, FixedLength) else tokenizer
    inner = getattr(obj, "tokenizer", None)
    if inner is not None and callable(getattr(inner, "tokenize_with_weights", None)) and \
            not callable(getattr(obj, "tokenize_with_weights", None)):
        obj = inner  # comfy.sd.CLIP
    return obj if callable(getattr(obj, "tokenize_with_weights", None)) else None


_PSEUDO_IDS: dict = {}


def _pseudo_id(vector: Any) -> int:
    """A stable id (per process) for an embedding vector, never equal to a real CLIP id (< 49408)."""
    key = (tuple(vector.shape), vector.detach().float().cpu().numpy().tobytes())
    return _PSEUDO_IDS.setdefault(key, 1_000_000 + len(_PSEUDO_IDS))


def _comfy_ids(ctok: Any, hf: Any, text: str) -> list[int]:
    """Token ids of ``text`` as ComfyUI's conditioning holds them, without BOS/EOS/padding; embedding vectors
    become pseudo ids."""
    out = ctok.tokenize_with_weights(text)
    if not isinstance(out, dict):
        return _batch_ids(out, hf, getattr(ctok, "embedding_size", None))
    if T5_KEY in out:  # Flux: only the T5 sequence enters attention (CLIP-L's pooled vector is global)
        return _batch_ids(out[T5_KEY], hf, _embedding_size(ctok, T5_KEY))
    per_encoder = {key: _batch_ids(batches, hf, _embedding_size(ctok, key)) for key, batches in out.items()}
    first_key = next(iter(per_encoder))
    first = per_encoder[first_key]
    for key, ids in per_encoder.items():
        # SDXL: CLIP-L and bigG share the BPE vocabulary, so the same prompt must put the same token at every
        # position in both; only an embedding that one encoder knows and the other does not can break that
        if [i if i < 1_000_000 else -1 for i in ids] != [i if i < 1_000_000 else -1 for i in first]:
            raise ValueError(
                f"{text!r} gives {len(first)} tokens for text encoder clip_{first_key} but {len(ids)} for clip_{key}, "
                "so their attention maps cannot be aligned: an embedding in it exists for only one of the encoders "
                "(an SD1.x embedding has no clip_g vectors: ComfyUI's bigG encoder ignores its 768-wide vectors and "
                "every later word moves). Use an SDXL embedding (with clip_l and clip_g tensors) or remove it from "
                "the prompt")
    return first


def _embedding_size(ctok: Any, key: str):
    """Width of the token embeddings of encoder ``key`` ("l", "g", "h") of a ComfyUI tokenizer, or None."""
    sub = getattr(ctok, f"clip_{key}", None) or getattr(ctok, key, None)
    return getattr(sub, "embedding_size", None)


def _batch_ids(batches, hf, width=None) -> list[int]:
    """Ids of one encoder's token batches; an embedding vector of another width than the encoder's (``width``) is
    left out, as ComfyUI's text encoder leaves it out of the conditioning ("shape mismatch ... ignored")."""
    ids: list[int] = []
    for batch in batches:  # a prompt over 75 tokens is split into several 77-token batches
        for k, (t, *_rest) in enumerate(batch):
            if hasattr(t, "shape"):
                if width is not None and int(t.shape[-1]) != int(width):
                    continue
                ids.append(_pseudo_id(t))
            elif k == 0 and int(t) == hf.bos_token_id:
                continue
            elif int(t) == hf.eos_token_id:
                break
            else:
                ids.append(int(t))
    return ids


class _Tokenized:
    """A prompt's CLIP ids and where each whitespace-separated word sits among them.

    With a ComfyUI tokenizer the ids are those of ComfyUI's conditioning (each word tokenized by
    ``tokenize_with_weights``), so ``embedding:name`` counts as its vectors, ``(cat:1.2)`` as ``cat`` and a
    Custom Diffusion modifier token as one vector; with a plain HF tokenizer they are its BPE ids.
    """

    def __init__(self, tok: Any, prompt: str, role: str = "prompt", ctok: Any = None, seq_len: Any = None):
        self.prompt = prompt
        self._ctok = ctok
        self.stream = T5_STREAM if tok.bos_token_id is None else CLIP_STREAM
        if seq_len is not None:
            self.stream = self.stream.fixed(seq_len)
        head = [tok.bos_token_id] if self.stream.offset else []
        if ctok is not None:
            whole = _comfy_ids(ctok, tok, prompt)
            self.ids = head + whole + [tok.eos_token_id]
        else:
            self.ids = _encode(tok, prompt)
        self.num_tokens = len(self.ids) - self.stream.offset - 1
        limit = self.stream.limit
        if self.num_tokens > limit:
            longest = limit + self.stream.offset + 1
            raise ValueError(
                f"the {role} has {self.num_tokens} {self.stream.name} tokens but the limit is {limit}; "
                f"shorten it (remove words) so that its attention maps fit the {longest}-token sequence"
            )
        # the shortest sequence that holds it (T5: 256 or 512; CLIP: 77); a FixedLength holder's length
        self.stream = self.stream.fixed(self.stream.length_for(self.num_tokens))
        self.words = prompt_words(prompt)
        # CLIP's pre-tokenizer never merges across whitespace, so the prompt's tokens are the concatenation
        # of each word's tokens; positions follow by accumulation (BOS occupies position 0).
        if ctok is not None:
            self.word_ids = [_comfy_ids(ctok, tok, w) for w in self.words]
        else:
            self.word_ids: list[list[int]] = [_encode(tok, w)[self.stream.offset:-1] for w in self.words]
        self.starts: list[int] = []
        pos = self.stream.offset
        for ids in self.word_ids:
            self.starts.append(pos)
            pos += len(ids)
        flat = [i for ids in self.word_ids for i in ids]
        if flat != self.ids[self.stream.offset:-1]:
            raise ValueError(
                f"cannot locate the words of {prompt!r} among its tokens: a weight or an embedding spans several "
                f"words (e.g. '(a red cat:1.2)'); give each word its own weight, e.g. '(red:1.2) (cat:1.2)'"
            )
        self._tok = tok

    @property
    def eos(self) -> int:
        """Position of EOS (= number of prompt tokens + 1 after CLIP's start token; the count itself for T5)."""
        return self.num_tokens + self.stream.offset

    @property
    def seq_len(self) -> int:
        return self.stream.seq_len

    def word_span(self, index: int) -> range:
        return range(self.starts[index], self.starts[index] + len(self.word_ids[index]))

    def word_list(self) -> str:
        return ", ".join(self.words) if self.words else "(none)"


def _tokenized(tokenizer: Any, prompt: str, role: str = "prompt") -> _Tokenized:
    if not isinstance(prompt, str):
        raise TypeError(f"the {role} must be a string, got {type(prompt).__name__}")
    seq_len = tokenizer.seq_len if isinstance(tokenizer, FixedLength) else None
    return _Tokenized(hf_tokenizer(tokenizer), prompt, role, comfy_tokenizer(tokenizer), seq_len)


def _same_length(*ts: _Tokenized) -> None:
    """Gives prompts that are aligned with each other one sequence length, the longest of theirs (T5: a 255-token
    source and a 300-token edit are both indexed on 512 positions; CLIP: always 77)."""
    n = max(t.seq_len for t in ts)
    for t in ts:
        if t.seq_len != n:
            t.stream = t.stream.fixed(n)


def token_count(tokenizer: Any, prompt: str) -> int:
    """Number of tokens ``prompt`` takes in the conditioning (without BOS/EOS), counted as ComfyUI does when the
    tokenizer is ComfyUI's (embeddings = their vectors, weights syntax removed). No length check."""
    hf, ctok = hf_tokenizer(tokenizer), comfy_tokenizer(tokenizer)
    if ctok is not None:
        return len(_comfy_ids(ctok, hf, prompt))
    return len(_encode(hf, prompt)) - (2 if hf.bos_token_id is not None else 1)


def token_labels(tokenizer: Any, prompt: str) -> list[str]:
    """One label per token of ``prompt`` in conditioning order: the decoded BPE token, or the word for the
    vectors of an embedding / modifier token."""
    t = _tokenized(tokenizer, prompt)
    out = []
    for word, ids in zip(t.words, t.word_ids):
        for i in ids:
            label = word if i >= 1_000_000 else t._tok.decode([i]).strip()
            out.append(label or "▁")  # T5's word-start piece decodes to nothing: show sentencepiece's mark
    return out


# --------------------------------------------------------------------------------------------------------------
# Word positions
# --------------------------------------------------------------------------------------------------------------

def _strip_punct(word: str) -> tuple[str, str, str]:
    """Split ``word`` into (leading punctuation, core, trailing punctuation)."""
    start, end = 0, len(word)
    while start < end and not word[start].isalnum():
        start += 1
    while end > start and not word[end - 1].isalnum():
        end -= 1
    return word[:start], word[start:end], word[end:]


def _match_span(t: _Tokenized, index: int, query: str) -> range | None:
    """Token positions of the prompt word ``index`` if it matches the query word, else None.

    An exact (case-insensitive) match returns all tokens of the word, as the reference does. Otherwise the
    word matches when its core (the word without surrounding punctuation, e.g. ``cat`` in ``cat,``) equals
    the query's core; then only the core's tokens are returned.
    """
    word = t.words[index]
    span = t.word_span(index)
    if word.casefold() == query.casefold():
        return span
    q_core = _strip_punct(query)[1]
    lead, core, trail = _strip_punct(word)
    if not q_core or core.casefold() != q_core.casefold():
        return None
    off = t.stream.offset
    enc = (lambda x: _comfy_ids(t._ctok, t._tok, x)) if t._ctok is not None else (lambda x: _encode(t._tok, x)[off:-1])
    lead_ids = enc(lead) if lead else []
    core_ids = enc(core)
    trail_ids = enc(trail) if trail else []
    if lead_ids + core_ids + trail_ids != t.word_ids[index]:  # pragma: no cover - punctuation merged with text
        return span
    first = span.start + len(lead_ids)
    return range(first, first + len(core_ids))


def _word_error(word: Any, t: _Tokenized) -> ValueError:
    return ValueError(f"{word!r} is not a word of {t.prompt!r}; its words are: {t.word_list()}")


def _indices_in(t: _Tokenized, word_or_index: Union[str, int]) -> list[int]:
    if isinstance(word_or_index, bool):
        raise TypeError("word_or_index must be a word (str) or a word index (int), not a bool")
    if isinstance(word_or_index, str):
        query = prompt_words(word_or_index)
        if not query:
            raise ValueError(f"the word to look up is empty; the words of {t.prompt!r} are: {t.word_list()}")
        out: set[int] = set()
        n = len(query)
        for first in range(len(t.words) - n + 1):
            spans = [_match_span(t, first + k, query[k]) for k in range(n)]
            if any(s is None for s in spans):
                continue
            out.update(range(spans[0].start, spans[-1].stop))
        if not out:
            raise _word_error(word_or_index, t)
        return sorted(out)
    try:
        index = operator.index(word_or_index)
    except TypeError:
        raise TypeError(
            f"word_or_index must be a word (str) or a word index (int), got {type(word_or_index).__name__}"
        ) from None
    if not 0 <= index < len(t.words):
        raise ValueError(
            f"word index {index} is out of range for {t.prompt!r}, which has {len(t.words)} words: {t.word_list()}"
        )
    return list(t.word_span(index))


def word_token_indices(tokenizer: Any, prompt: str, word_or_index: Union[str, int]) -> list[int]:
    """Positions, in the 77-token CLIP sequence of ``prompt`` (BOS = 0), of the tokens of a word.

    Args:
        tokenizer: a CLIP tokenizer in any form :func:`hf_tokenizer` accepts.
        prompt: the prompt; its words are the pieces between whitespace.
        word_or_index: a word (``"squirrel"``), a phrase of consecutive words (``"pink bicycle"``) or the
            0-based index of a word in ``prompt.split()``. Words compare case-insensitively; a word written
            with surrounding punctuation in the prompt (``"cat,"``) also matches its bare form (``"cat"``),
            in which case only the bare word's tokens are returned. A word spelled exactly as in the prompt
            and an index return all of its tokens, punctuation included, as the reference does.

    Returns:
        Sorted positions of every occurrence (a word that appears twice gives the tokens of both); a word that
        CLIP splits into several tokens gives all of them (e.g. "lasagne" -> ``lasag``, ``ne``).

    Raises:
        ValueError: the word is not in the prompt, e.g. ``'lion' is not a word of 'a cat sitting on a car';
            its words are: a, cat, sitting, on, a, car``; the index is out of range; the prompt has more than
            75 tokens.

    Source: ``google/prompt-to-prompt`` ``ptp_utils.get_word_inds`` (same positions for single-spaced prompts;
    it accumulates decoded token lengths, here each word is tokenized on its own, which CLIP's whitespace
    pre-tokenization makes equivalent). Deliberate differences: an unknown word raises instead of returning
    nothing; words compare case-insensitively (CLIP lower-cases the text, so "A" and "a" are the same token;
    the reference compares the raw strings and would not find "a" in "A painting ..."); the bare-word match
    of punctuated words.
    """
    return _indices_in(_tokenized(tokenizer, prompt), word_or_index)


# --------------------------------------------------------------------------------------------------------------
# Word swap
# --------------------------------------------------------------------------------------------------------------

def _word_count_error(n_source: int, n_target: int) -> ValueError:
    return ValueError(
        f"word swap (mode 'replace') needs the same number of words in both prompts, but the source prompt has "
        f"{n_source} words and the edited prompt has {n_target}; use mode 'refine' to add or remove words"
    )


def _replacement_from(src: _Tokenized, tgt: _Tokenized) -> torch.Tensor:
    if len(src.words) != len(tgt.words):
        raise _word_count_error(len(src.words), len(tgt.words))
    L = src.seq_len
    m = torch.zeros(L, L, dtype=torch.float32)
    if src.stream.offset:
        m[0, 0] = 1.0  # BOS
    for w in range(len(src.words)):
        s, d = src.word_span(w), tgt.word_span(w)
        if len(s) == len(d):
            # Unchanged words, and swapped words with as many tokens: token k feeds token k.
            for a, b in zip(s, d):
                m[a, b] = 1.0
        else:
            # Each source token of the word spreads its attention evenly over the target word's tokens.
            m[s.start:s.stop, d.start:d.stop] = 1.0 / len(d)
    # EOS and padding: keep their offset; rows that would fall past the end fold into the last column.
    shift = tgt.eos - src.eos
    for a in range(src.eos, L):
        m[a, min(a + shift, L - 1)] += 1.0
    return m


def replacement_mapper(tokenizer: Any, source: str, target: str) -> torch.Tensor:
    """Word-swap token map ``M`` of shape ``[77, 77]``, ``M[src_token, tgt_token]`` (P2P §3.2 "Word Swap").

    Apply it to the source prompt's cross-attention probabilities ``attn_base`` of shape
    ``[heads, pixels, 77]`` as ``torch.einsum("hpw,bwn->bhpn", attn_base, M[None])`` (``b`` = edited
    prompts); the result is the attention the edited prompt receives.

    Both prompts must have the same number of words; word ``k`` of the source corresponds to word ``k`` of the
    target. For each word with source token positions ``S`` and target positions ``T``:

    * ``len(S) == len(T)`` (unchanged words, and swaps such as squirrel -> lion): ``M[S[k], T[k]] = 1``;
    * otherwise (e.g. burger -> lasagne, 1 -> 2 tokens): ``M[s, t] = 1 / len(T)`` for every ``s`` in ``S``,
      ``t`` in ``T``.

    BOS maps to BOS. Deliberate difference from the reference: after the last word, the reference writes
    ``M[j, j] = 1`` with the *target* position ``j``, so when the swapped words change the token count, the rows
    from the source position after the last swapped word onward are shifted (after a swap to a longer word the
    source EOS row is all zeros, e.g. burger -> lasagne leaves row 9 empty; after a swap to a shorter word a
    source row of the swapped word gets a second 1). Here every source position ``a >= eos_src`` (EOS and
    padding) maps to ``min(a + eos_tgt - eos_src, 76)``: EOS to EOS, padding to padding at the same offset,
    and source padding rows that would land past position 76 add to column 76. Every row of ``M`` therefore
    sums to 1, so the mapped attention of each pixel still sums to 1. Unchanged words after the last swap are
    mapped to their own target tokens as well (the reference shifts them too). Where token counts agree
    (``eos_src == eos_tgt``), ``M`` equals the reference exactly.

    Raises:
        ValueError: the word counts differ (the message gives both counts and suggests mode ``'refine'``); a
            prompt has more than 75 tokens.

    Source: ``google/prompt-to-prompt`` ``seq_aligner.get_replacement_mapper_``.
    """
    src = _tokenized(tokenizer, source, "source prompt")
    tgt = _tokenized(tokenizer, target, "edited prompt")
    _same_length(src, tgt)
    return _replacement_from(src, tgt)


# --------------------------------------------------------------------------------------------------------------
# Refinement (adding a phrase)
# --------------------------------------------------------------------------------------------------------------

def _global_alignment(x: Sequence[int], y: Sequence[int]) -> list[int]:
    """Needleman-Wunsch alignment of ``y`` against ``x``; returns, for each ``y[j]``, the index in ``x`` it is
    aligned to, or -1 where ``y[j]`` faces a gap.

    Scores: gap 0, match +1, mismatch -1. Among equal scores a cell prefers, in this order, a gap in ``x``
    (coming from the left, i.e. ``y[j]`` inserted), a gap in ``y`` (from above, ``x[i]`` dropped), and the
    diagonal, which is the tie order of the reference ``global_align``.
    """
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    step = [[0] * (m + 1) for _ in range(n + 1)]  # 1: left, 2: up, 3: diagonal
    for j in range(1, m + 1):
        score[0][j] = j * _GAP_SCORE
        step[0][j] = 1
    for i in range(1, n + 1):
        score[i][0] = i * _GAP_SCORE
        step[i][0] = 2
    for i in range(1, n + 1):
        row, prev = score[i], score[i - 1]
        for j in range(1, m + 1):
            from_left = row[j - 1] + _GAP_SCORE
            from_up = prev[j] + _GAP_SCORE
            from_diag = prev[j - 1] + (_MATCH_SCORE if x[i - 1] == y[j - 1] else _MISMATCH_SCORE)
            best = max(from_left, from_up, from_diag)
            row[j] = best
            step[i][j] = 1 if best == from_left else (2 if best == from_up else 3)
    aligned = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        move = step[i][j]
        if move == 3:
            i, j = i - 1, j - 1
            aligned[j] = i
        elif move == 1:
            j -= 1
        else:
            i -= 1
    return aligned


def _refinement_from(src: _Tokenized, tgt: _Tokenized) -> tuple[torch.Tensor, torch.Tensor]:
    aligned = _global_alignment(src.ids, tgt.ids)
    mapper = torch.arange(tgt.seq_len, dtype=torch.int64)
    mapper[: len(aligned)] = torch.tensor(aligned, dtype=torch.int64)
    alphas = (mapper != -1).to(torch.float32)
    return mapper, alphas


def refinement_mapper(tokenizer: Any, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment function ``A`` of P2P §3.2 "Adding a New Phrase": which source token each target token reads.

    The CLIP ids of both prompts (with BOS and EOS) are aligned globally (Needleman-Wunsch, gap 0, match 1,
    mismatch -1, ties resolved left, then up, then diagonal, as in the reference).

    Returns:
        ``mapper``: ``LongTensor [77]``. For target positions ``j`` up to and including the target EOS,
        ``mapper[j]`` is the source position aligned to target token ``j``, or ``-1`` where the target token has
        no counterpart (an inserted word, or a replaced one: with these scores a mismatch is always scored as
        an insertion plus a deletion). Positions after the target EOS map to themselves (``mapper[j] = j``), as
        in the reference; note that when the source is longer (words removed), such a target padding position
        then reads a source position that may still hold a word or EOS.
        ``alphas``: ``FloatTensor [77]``, 0 where ``mapper == -1`` and 1 elsewhere.

    Use: ``edit_new = attn_base[..., mapper] * alphas + attn_edit * (1 - alphas)`` with ``attn_base`` the
    source probabilities ``[heads, pixels, 77]`` and ``attn_edit`` the edited prompt's own. ``-1`` is not a
    valid source position: indexing with it reads position 76, so the ``alphas`` mask is required (or clamp
    ``mapper`` to ``>= 0`` first); never use ``mapper`` without it.

    Raises:
        ValueError: a prompt has more than 75 tokens.

    Source: ``google/prompt-to-prompt`` ``seq_aligner.get_mapper`` / ``get_refinement_mapper``
    (``global_align``, ``get_aligned_sequences``); results are identical.
    """
    src = _tokenized(tokenizer, source, "source prompt")
    tgt = _tokenized(tokenizer, target, "edited prompt")
    _same_length(src, tgt)
    return _refinement_from(src, tgt)


# --------------------------------------------------------------------------------------------------------------
# Choosing the alignment
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Alignment:
    """How the edited prompt's cross-attention reads the source prompt's.

    Attributes:
        mode: ``'replace'`` (word swap) or ``'refine'`` (phrase added/removed).
        mapper: for ``'replace'`` the ``[77, 77]`` float matrix of :func:`replacement_mapper`; for
            ``'refine'`` the ``[77]`` long index array of :func:`refinement_mapper` (may hold ``-1``).
        alphas: ``[77]`` float; ones for ``'replace'``; for ``'refine'`` the mask that is 0 on target tokens
            without a source counterpart.
    """

    mode: str
    mapper: torch.Tensor
    alphas: torch.Tensor


_MODES = ("auto", "replace", "refine")


def align_prompts(tokenizer: Any, source: str, target: str, mode: str = "auto") -> Alignment:
    """Align a source prompt with its edited version for Prompt-to-Prompt (P2P §3.2).

    Args:
        tokenizer: a CLIP tokenizer in any form :func:`hf_tokenizer` accepts.
        source: the prompt that describes the source image.
        target: the edited prompt.
        mode: ``'auto'`` (word swap when both prompts have the same number of words, else refinement),
            ``'replace'`` (word swap; the word counts must match) or ``'refine'`` (always the global alignment).

    Returns:
        :class:`Alignment`; ``mode='replace'`` carries :func:`replacement_mapper` and ``ones(77)``,
        ``mode='refine'`` carries :func:`refinement_mapper`'s ``(mapper, alphas)``.

    Raises:
        ValueError: an empty prompt ("the source prompt is empty; describe the photo", "the edited prompt is
            empty; ..."); a prompt longer than 75 CLIP tokens (the message gives its count and the limit);
            ``mode='replace'`` with different word counts; an unknown mode.
    """
    if mode not in _MODES:
        raise ValueError(f"unknown alignment mode {mode!r}; use one of: {', '.join(_MODES)}")
    if not isinstance(source, str) or not source.strip():
        raise ValueError("the source prompt is empty; describe the photo")
    if not isinstance(target, str) or not target.strip():
        raise ValueError("the edited prompt is empty; write the source prompt with your edit applied")
    src = _tokenized(tokenizer, source, "source prompt")
    tgt = _tokenized(tokenizer, target, "edited prompt")
    _same_length(src, tgt)
    same_count = len(src.words) == len(tgt.words)
    if mode == "replace" or (mode == "auto" and same_count):
        return Alignment("replace", _replacement_from(src, tgt), torch.ones(src.seq_len, dtype=torch.float32))
    mapper, alphas = _refinement_from(src, tgt)
    return Alignment("refine", mapper, alphas)


# --------------------------------------------------------------------------------------------------------------
# Time windows
# --------------------------------------------------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _window(value: Any, what: str) -> tuple[float, float]:
    """Validate a window (fraction or (start, end) pair) and return it as a pair."""
    if _is_number(value):
        pair = (0.0, float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_number(v) for v in value):
        pair = (float(value[0]), float(value[1]))
    else:
        raise ValueError(
            f"{what} must be a fraction of the steps (e.g. 0.8) or a (start, end) pair of fractions "
            f"(e.g. (0.2, 0.8)); got {value!r}"
        )
    start, end = pair
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in pair):
        raise ValueError(f"{what} must be fractions between 0 and 1 (of the sampling steps); got {value!r}")
    if start > end:
        raise ValueError(f"{what} must have start <= end; got start {start} > end {end}")
    return pair


def _check_steps(num_steps: Any) -> int:
    if not _is_number(num_steps) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive whole number of sampling steps; got {num_steps!r}")
    return int(num_steps)


def cross_replace_alpha(
    tokenizer: Any, prompts: Sequence[str], num_steps: int, cross_replace_steps: CrossReplaceSteps
) -> torch.Tensor:
    """Per-step, per-token weight ``alpha`` of the cross-attention injection (P2P §3.2, the ``tau`` of Word Swap,
    "per token" variant).

    The edit controller mixes ``alpha * mapped_source_attention + (1 - alpha) * edited_attention`` at step
    ``t`` with ``alpha = result[t]`` (unsqueeze to ``[n-1, 1, 1, 77]`` to broadcast over heads and pixels).

    Args:
        tokenizer: a CLIP tokenizer in any form :func:`hf_tokenizer` accepts.
        prompts: ``[source, edited_1, ..., edited_{n-1}]`` (at least two prompts).
        num_steps: number of sampling steps.
        cross_replace_steps: a fraction ``f`` (meaning the window ``(0, f)``), a ``(start, end)`` pair of
            fractions, or a dict ``{"default_": window, "<word>": window, ...}``. The default applies to every
            token (``(0, 1)`` when ``"default_"`` is absent); each other key is a word or phrase that is looked
            up with :func:`word_token_indices` in every edited prompt, and its window replaces the default on
            those tokens. Keys are applied in dict order.

    Returns:
        ``FloatTensor [num_steps + 1, n - 1, 77]``: for a window ``(start, end)`` the rows
        ``int(start * (num_steps + 1))`` up to, but excluding, ``int(end * (num_steps + 1))`` are 1, the others 0.
        The reference allocates ``num_steps + 1`` rows and scales the fractions by that count; this is kept so
        that the same ``cross_replace_steps`` gives the same steps as the reference (e.g. 0.8 with 50 steps:
        rows 0-39 are 1, i.e. 40 injected steps; ``{"lion": 0.4}``: rows 0-19). Only rows ``0..num_steps-1``
        are read during sampling; the last row exists for that scaling.

    Raises:
        ValueError: fewer than two prompts; a window outside ``[0, 1]`` or with start > end; a bad
            ``num_steps``; a word key missing from one of the edited prompts (the message of
            :func:`word_token_indices`, naming that prompt); a prompt longer than 75 tokens.

    Source: ``google/prompt-to-prompt`` ``ptp_utils.get_time_words_attention_alpha`` and
    ``update_alpha_time_word``; same values (the reference then reshapes to ``[steps+1, n-1, 1, 1, 77]``).
    Unlike the reference, a word missing from an edited prompt raises instead of being skipped.
    """
    steps = _check_steps(num_steps)
    prompts = list(prompts)
    if len(prompts) < 2:
        raise ValueError("cross_replace_alpha needs the source prompt and at least one edited prompt")
    if isinstance(cross_replace_steps, Mapping):
        spec = dict(cross_replace_steps)
    else:
        spec = {_DEFAULT_KEY: cross_replace_steps}
    default = _window(spec.get(_DEFAULT_KEY, (0.0, 1.0)), "cross_replace_steps")
    rows = steps + 1

    def row_range(window: tuple[float, float]) -> slice:
        return slice(int(window[0] * rows), int(window[1] * rows))

    targets = [_tokenized(tokenizer, p, "edited prompt") for p in prompts[1:]]
    _same_length(*targets)
    alpha = torch.zeros(rows, len(prompts) - 1, targets[0].seq_len, dtype=torch.float32)
    alpha[row_range(default)] = 1.0
    for key, value in spec.items():
        if key == _DEFAULT_KEY:
            continue
        window = _window(value, f"cross_replace_steps for {key!r}")
        for p, t in enumerate(targets):
            idx = torch.tensor(_indices_in(t, key), dtype=torch.int64)
            alpha[:, p, idx] = 0.0
            alpha[row_range(window), p, idx] = 1.0
    return alpha


def self_replace_range(num_steps: int, self_replace_steps: Window) -> tuple[int, int]:
    """Steps ``[start_step, end_step)`` during which the source self-attention maps are injected.

    A fraction ``s`` gives ``(0, int(num_steps * s))``; a pair ``(start, end)`` gives
    ``(int(num_steps * start), int(num_steps * end))``. The controller injects at step ``t`` when
    ``start_step <= t < end_step``. Note: unlike :func:`cross_replace_alpha`, fractions are scaled by
    ``num_steps`` (not ``num_steps + 1``), as in the reference.

    Raises:
        ValueError: fractions outside ``[0, 1]``, start > end, or a bad ``num_steps``.

    Source: ``google/prompt-to-prompt`` ``AttentionControlEdit.__init__`` (``num_self_replace``) in
    ``prompt-to-prompt_stable.ipynb``; P2P §3.2 and §4 (self-attention injection).
    """
    steps = _check_steps(num_steps)
    start, end = _window(self_replace_steps, "self_replace_steps")
    return int(steps * start), int(steps * end)


# --------------------------------------------------------------------------------------------------------------
# Widget text parsers
# --------------------------------------------------------------------------------------------------------------

def _parse_number(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def _parse_window_text(piece: str, syntax: str, what: str) -> Window:
    parts = piece.split(",")
    try:
        if len(parts) == 1:
            value: Window = _parse_number(parts[0])
        elif len(parts) == 2:
            value = (_parse_number(parts[0]), _parse_number(parts[1]))
        else:
            raise ValueError("too many numbers")
    except ValueError:
        raise ValueError(f"cannot read {piece.strip()!r} in {what}; {syntax}") from None
    _window(value, f"{what} {piece.strip()!r}")
    return value


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def parse_cross_replace_steps(text: str) -> CrossReplaceSteps:
    """Read ``cross_replace_steps`` from a node's text widget.

    Syntax:
        ``"0.8"`` -> ``0.8`` (steps 0 to 80%); ``"0.2,0.8"`` -> ``(0.2, 0.8)``;
        ``"0.8; lion: 0.4; cat: 0.1,0.5"`` -> ``{"default_": 0.8, "lion": 0.4, "cat": (0.1, 0.5)}``.
        Pieces are separated by ``;`` or new lines; a piece without ``:`` (or with the key ``default``) is the
        default window, at most one; ``word: window`` pieces set per-word windows (a word may be a quoted or
        unquoted phrase). A text with only a default returns the plain float/pair, otherwise a dict (without a
        ``"default_"`` key when no default is given, which :func:`cross_replace_alpha` reads as ``(0, 1)``).

    Raises:
        ValueError: empty text, unreadable numbers, fractions outside ``[0, 1]``, start > end, an empty or
            repeated word, two defaults; the message quotes the offending piece and shows the accepted syntax.
    """
    what = "cross_replace_steps"
    pieces = [p.strip() for p in re.split(r"[;\n]", text or "") if p.strip()]
    if not pieces:
        raise ValueError(f"{what} is empty; {_CROSS_SYNTAX}")
    result: dict[str, Window] = {}
    for piece in pieces:
        if ":" in piece:
            key_text, value_text = piece.rsplit(":", 1)
            key = _unquote(key_text)
            if not key:
                raise ValueError(f"missing word before ':' in {piece!r} in {what}; {_CROSS_SYNTAX}")
            if key.casefold() in ("default", _DEFAULT_KEY):
                key = _DEFAULT_KEY
        else:
            key, value_text = _DEFAULT_KEY, piece
        if not value_text.strip():
            raise ValueError(f"missing window after {key_text.strip()!r}: in {what} (at {piece!r}): give a fraction "
                             f"or a range, e.g. '{key_text.strip()}: 0.4' or '{key_text.strip()}: 0.1,0.5'")
        if key in result:
            which = "the default window" if key == _DEFAULT_KEY else f"the word {key!r}"
            raise ValueError(f"{which} is given twice in {what} (at {piece!r}); {_CROSS_SYNTAX}")
        result[key] = _parse_window_text(value_text, _CROSS_SYNTAX, what)
    if list(result) == [_DEFAULT_KEY]:
        return result[_DEFAULT_KEY]
    return result


def parse_self_replace_steps(text: str) -> Window:
    """Read ``self_replace_steps`` from a node's text widget: ``"0.4"`` -> ``0.4``, ``"0.2,0.6"`` -> ``(0.2, 0.6)``.

    Raises:
        ValueError: empty or unreadable text, fractions outside ``[0, 1]``, start > end; the message quotes the
            text and shows the accepted syntax.
    """
    what = "self_replace_steps"
    piece = (text or "").strip()
    if not piece:
        raise ValueError(f"{what} is empty; {_SELF_SYNTAX}")
    return _parse_window_text(piece, _SELF_SYNTAX, what)


def parse_word_values(text: str) -> list[tuple[str, float]]:
    """Read equalizer weights from text: ``"smiling: 5, pink: -1"`` -> ``[("smiling", 5.0), ("pink", -1.0)]``.

    Pairs are separated by ``,``, ``;`` or new lines; a word may be a phrase, optionally quoted
    (``"pink bicycle": 2``). Empty text gives ``[]``.

    Raises:
        ValueError: a piece without ``word: number``, an unreadable or non-finite number, an empty or repeated
            word; the message quotes the piece and shows the accepted syntax.
    """
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for raw in re.split(r"[,;\n]", text or ""):
        piece = raw.strip()
        if not piece:
            continue
        if ":" not in piece:
            raise ValueError(f"cannot read {piece!r} as 'word: number'; {_WORD_VALUES_SYNTAX}")
        word_text, value_text = piece.rsplit(":", 1)
        word = _unquote(word_text)
        if not word:
            raise ValueError(f"missing word before ':' in {piece!r}; {_WORD_VALUES_SYNTAX}")
        try:
            value = _parse_number(value_text)
        except ValueError:
            raise ValueError(f"cannot read the number in {piece!r}; {_WORD_VALUES_SYNTAX}") from None
        if abs(value) > MAX_FACTOR:
            raise ValueError(f"the factor {value_text.strip()} for {word!r} is outside -{MAX_FACTOR:g}..{MAX_FACTOR:g}: "
                             "it multiplies the word's attention (1 keeps it, 0 removes it, 2-10 strengthens it)")
        if word.casefold() in seen:
            raise ValueError(f"the word {word!r} is given twice (at {piece!r}); {_WORD_VALUES_SYNTAX}")
        seen.add(word.casefold())
        out.append((word, value))
    return out


def equalizer(
    tokenizer: Any,
    prompt: str,
    word_values: Union[str, Mapping[str, float], Iterable[tuple[Union[str, int], float]]],
) -> torch.Tensor:
    """Attention re-weighting vector of P2P §3.2 "Attention Re-weighting": ``FloatTensor [77]``.

    Ones everywhere, except the tokens of each given word (of ``prompt``, the edited prompt), which get that
    word's factor; later entries win where words overlap. The controller multiplies the edited prompt's
    cross-attention by it along the token axis: ``attn * eq[None, None, :]`` (no renormalisation).

    Args:
        tokenizer: a CLIP tokenizer in any form :func:`hf_tokenizer` accepts.
        prompt: the prompt whose tokens are scaled.
        word_values: ``[(word_or_index, factor), ...]``, a ``{word: factor}`` mapping, or text for
            :func:`parse_word_values` (``"smiling: 5, pink: -1"``).

    Raises:
        ValueError: a word not in ``prompt`` (message of :func:`word_token_indices`), a non-finite factor, a
            prompt longer than 75 tokens, text :func:`parse_word_values` cannot read.

    Source: ``get_equalizer`` of ``google/prompt-to-prompt`` ``null_text_w_ptp.ipynb`` (one row, one factor per
    word; the ``prompt-to-prompt_stable.ipynb`` version cannot give several words different factors).
    """
    if isinstance(word_values, str):
        pairs: list = parse_word_values(word_values)
    elif isinstance(word_values, Mapping):
        pairs = list(word_values.items())
    else:
        pairs = list(word_values)
    t = _tokenized(tokenizer, prompt)
    eq = torch.ones(t.seq_len, dtype=torch.float32)
    for item in pairs:
        try:
            word, value = item
        except (TypeError, ValueError):
            raise ValueError(f"equalizer entries must be (word, factor) pairs; got {item!r}") from None
        if not _is_number(value) or not math.isfinite(float(value)) or abs(float(value)) > MAX_FACTOR:
            raise ValueError(f"the factor for {word!r} must be a number within -{MAX_FACTOR:g}..{MAX_FACTOR:g}; got "
                             f"{value!r}")
        eq[_indices_in(t, word)] = float(value)
    return eq
