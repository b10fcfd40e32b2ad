"""Tests for attention_edit.attention.align (Prompt-to-Prompt token alignment).

Golden values were produced once, outside this repository, by running the reference functions of
google/prompt-to-prompt (seq_aligner.get_replacement_mapper_ / get_mapper, ptp_utils.get_word_inds /
get_time_words_attention_alpha, get_equalizer of null_text_w_ptp.ipynb) with the CLIP tokenizer that
ComfyUI ships (comfy/sd1_tokenizer). Only the values are stored here.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

import comfy.cli_args

comfy.cli_args.args.cpu = True

import comfy  # noqa: E402

from attention_edit.attention import align as A  # noqa: E402

SQUIRREL = "A painting of a squirrel eating a burger"


def _comfy_dir() -> str:
    path = getattr(comfy, "__file__", None)
    return os.path.dirname(path) if path else list(comfy.__path__)[0]


@pytest.fixture(scope="module")
def tok():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(os.path.join(_comfy_dir(), "sd1_tokenizer"))


def _tokens(tok, word):
    return tok.convert_ids_to_tokens(tok.encode(word))[1:-1]


def test_tokenizer_facts_used_by_the_goldens(tok):
    # The multi-token words below are what make the goldens interesting.
    assert _tokens(tok, "lasagne") == ["lasag", "ne</w>"]
    assert _tokens(tok, "axolotl") == ["ax", "o", "lot", "l</w>"]
    assert _tokens(tok, "neoclassical") == ["neo", "classical</w>"]
    assert len(_tokens(tok, "squirrel")) == len(_tokens(tok, "lion")) == 1


# ------------------------------------------------------------------------------------------------------------
# Tokenizer holders
# ------------------------------------------------------------------------------------------------------------

def test_accepts_comfyui_tokenizer_holders(tok):
    import comfy.sd1_clip

    sd_tok = comfy.sd1_clip.SDTokenizer()
    sd1_tok = comfy.sd1_clip.SD1Tokenizer()
    clip_like = SimpleNamespace(tokenizer=sd1_tok)  # comfy.sd.CLIP keeps its SD1Tokenizer in .tokenizer
    sdxl_like = SimpleNamespace(clip_l=sd_tok, clip_g=sd_tok)
    for holder in (tok, sd_tok, sd1_tok, clip_like, sdxl_like):
        assert callable(A.hf_tokenizer(holder).encode)
        assert A.word_token_indices(holder, SQUIRREL + " lasagne", "lasagne") == [9, 10]
    with pytest.raises(TypeError, match="expected a CLIP tokenizer"):
        A.hf_tokenizer(object())


# ------------------------------------------------------------------------------------------------------------
# word_token_indices  (golden: ptp_utils.get_word_inds)
# ------------------------------------------------------------------------------------------------------------

WORD_INDS_GOLDEN = [
    (SQUIRREL, "squirrel", [5]),
    (SQUIRREL, 4, [5]),
    ("A painting of a squirrel eating a lasagne", "lasagne", [8, 9]),
    ("a cat, sitting on a car", "cat,", [2, 3]),
    ("a cat, sitting on a car", 1, [2, 3]),
    ("a cat, sitting on a car", 2, [4]),
    ("a axolotl sitting on a car", 1, [2, 3, 4, 5]),
    ("a axolotl sitting on a car", "car", [9]),
    ("don't touch the cat's tail", "cat's", [5, 6]),
    ("A neoclassical painting of a squirrel", "painting", [4]),
]


@pytest.mark.parametrize("prompt,word,expected", WORD_INDS_GOLDEN)
def test_word_token_indices_matches_reference(tok, prompt, word, expected):
    assert A.word_token_indices(tok, prompt, word) == expected


def test_word_token_indices_extensions(tok):
    # Reference (case-sensitive) gives [4, 7] for "a": the capital "A" at position 1 is the same CLIP token.
    assert A.word_token_indices(tok, SQUIRREL, "a") == [1, 4, 7]
    # Bare word inside punctuation: only the word's own token, not the comma.
    assert A.word_token_indices(tok, "a cat, sitting on a car", "cat") == [2]
    # Phrases, all occurrences, extra whitespace.
    prompt = "a pink bicycle and a pink car"
    assert A.word_token_indices(tok, prompt, "pink bicycle") == [2, 3]
    assert A.word_token_indices(tok, prompt, "pink") == [2, 6]
    assert A.word_token_indices(tok, "a  lasagne   on a plate", "on") == [4]


def test_word_token_indices_errors(tok):
    with pytest.raises(ValueError) as e:
        A.word_token_indices(tok, "a cat sitting on a car", "lion")
    assert str(e.value) == (
        "'lion' is not a word of 'a cat sitting on a car'; its words are: a, cat, sitting, on, a, car"
    )
    with pytest.raises(ValueError, match=r"word index 6 is out of range .* has 6 words: a, cat"):
        A.word_token_indices(tok, "a cat sitting on a car", 6)
    with pytest.raises(ValueError, match="empty"):
        A.word_token_indices(tok, "a cat", "  ")
    with pytest.raises(TypeError):
        A.word_token_indices(tok, "a cat", True)


# ------------------------------------------------------------------------------------------------------------
# replacement_mapper  (golden: seq_aligner.get_replacement_mapper_)
# ------------------------------------------------------------------------------------------------------------

# (source, target, reference entries (row, col, value) off the identity for rows < 12, reference rows < 12 that
#  have no 1 on the diagonal, agree_below, reference row sums of rows 0..11).
# Rows >= 12 of the reference are the identity except as REPLACE_DIAG_SPECIAL says. Ours equals the reference
# on rows < agree_below; agree_below = 77 where the swaps keep the token count.
REPLACE_GOLDEN = {
    "1to1": (SQUIRREL, "A painting of a lion eating a burger", [], [], 77, [1] * 12),
    "2to2": ("a lasagne on a plate", "a neoclassical on a plate", [], [], 77, [1] * 12),
    "two_swaps": ("a cat sitting on a red car", "a dog sitting on a blue car", [], [], 77, [1] * 12),
    "1to2_end": (
        SQUIRREL, "A painting of a squirrel eating a lasagne",
        [(8, 9, 0.5)], [8, 9], 9, [1] * 9 + [0, 1, 1],
    ),
    "1to2_mid": (
        "a squirrel sitting on a car", "a lasagne sitting on a car",
        [(2, 3, 0.5)], [2, 3], 3, [1, 1, 1, 0] + [1] * 8,
    ),
    "2to1_end": (
        "A painting of a squirrel eating a lasagne", SQUIRREL,
        [(9, 8, 1.0)], [], 9, [1] * 9 + [2, 1, 1],
    ),
    "1to4_mid": (
        "a cat sitting on a car", "a axolotl sitting on a car",
        [(2, 3, 0.25), (2, 4, 0.25), (2, 5, 0.25)], [2, 3, 4, 5], 3, [1, 1, 1, 0, 0, 0] + [1] * 6,
    ),
    "two_swaps_multi": (
        "a lasagne sitting on a red car", "a dog sitting on a axolotl car",
        [(3, 2, 1.0), (4, 3, 1.0), (5, 4, 1.0), (6, 5, 1.0), (7, 6, 0.25), (7, 7, 0.25), (7, 8, 0.25),
         (7, 9, 0.25)],
        [3, 4, 5, 6, 7, 8, 9], 8, [1] * 8 + [0, 0, 1, 1],
    ),
}
# Diagonal values of the reference other than 1 (rows < 12) or 0 (all rows); its loop stops one row early when
# the target is shorter, so lasagne -> burger leaves M[76, 76] = 0.
REPLACE_DIAG_SPECIAL = {"1to2_end": {8: 0.5}, "1to2_mid": {2: 0.5}, "1to4_mid": {2: 0.25}, "2to1_end": {76: 0.0}}


def _reference_matrix(name):
    _, _, extra, not_diag, _, _ = REPLACE_GOLDEN[name]
    m = torch.eye(A.SEQ_LEN)
    for r in not_diag:
        m[r, r] = 0.0
    for r, v in REPLACE_DIAG_SPECIAL.get(name, {}).items():
        m[r, r] = v
    for r, c, v in extra:
        m[r, c] = v
    return m


@pytest.mark.parametrize("name", list(REPLACE_GOLDEN))
def test_replacement_mapper_matches_reference(tok, name):
    source, target, _, _, agree_below, ref_row_sums = REPLACE_GOLDEN[name]
    ref = _reference_matrix(name)
    assert ref.sum(1)[:12].tolist() == ref_row_sums  # the stored golden is self-consistent
    ours = A.replacement_mapper(tok, source, target)
    assert ours.shape == (77, 77) and ours.dtype == torch.float32
    assert torch.equal(ours[:agree_below], ref[:agree_below])
    # Every row keeps its mass (the deliberate difference): the mapped attention still sums to 1.
    assert torch.equal(ours.sum(1), torch.ones(77))
    # Rows from agree_below on follow the per-word / offset rule.
    eos_src = len(tok.encode(source)) - 1
    eos_tgt = len(tok.encode(target)) - 1
    for a in range(eos_src, 77):
        b = min(a + eos_tgt - eos_src, 76)
        assert ours[a, b] == 1.0 and ours[a].count_nonzero() == 1


def test_replacement_mapper_deliberate_difference_eos_row(tok):
    # burger -> lasagne (1 -> 2 tokens): the reference leaves the source EOS row (9) empty and maps source
    # padding 10 -> target 10 (the target EOS). We map source EOS 9 -> target EOS 10, padding with the same offset.
    ref = _reference_matrix("1to2_end")
    assert ref[9].sum() == 0 and ref[10, 10] == 1
    ours = A.replacement_mapper(tok, SQUIRREL, "A painting of a squirrel eating a lasagne")
    assert ours[8, 8] == ours[8, 9] == 0.5
    assert ours[9].sum() == 1 and ours[9, 10] == 1
    assert ours[10, 11] == 1 and ours[75, 76] == 1 and ours[76, 76] == 1  # last padding row folds into 76
    assert ours[:, 76].sum() == 2
    # lasagne -> burger (2 -> 1): the reference gives row 9 a mass of 2; ours keeps 1 and maps EOS 10 -> 9.
    assert _reference_matrix("2to1_end")[9].sum() == 2
    ours = A.replacement_mapper(tok, "A painting of a squirrel eating a lasagne", SQUIRREL)
    assert ours[8, 8] == ours[9, 8] == 1 and ours[9].sum() == 1 and ours[10, 9] == 1
    assert ours[:, 76].sum() == 0  # target's last padding position receives nothing
    # a word after the swap keeps its own token: "car" (source 8) -> target 10 (reference: row 8 empty).
    ours = A.replacement_mapper(tok, *REPLACE_GOLDEN["two_swaps_multi"][:2])
    assert ours[8, 10] == 1 and ours[9, 11] == 1


def test_replacement_mapper_applies_as_einsum(tok):
    m = A.replacement_mapper(tok, SQUIRREL, "A painting of a squirrel eating a lasagne")
    attn = torch.softmax(torch.randn(2, 5, 77, generator=torch.Generator().manual_seed(0)), -1)
    out = torch.einsum("hpw,bwn->bhpn", attn, m[None])
    assert out.shape == (1, 2, 5, 77)
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 2, 5))
    torch.testing.assert_close(out[0, :, :, 8], attn[:, :, 8] * 0.5)
    torch.testing.assert_close(out[0, :, :, 10], attn[:, :, 9])


def test_replacement_mapper_word_count_error(tok):
    with pytest.raises(ValueError) as e:
        A.replacement_mapper(tok, SQUIRREL, "A neoclassical painting of a squirrel eating a burger")
    msg = str(e.value)
    assert "8 words" in msg and "has 9" in msg and "'refine'" in msg


# ------------------------------------------------------------------------------------------------------------
# refinement_mapper  (golden: seq_aligner.get_mapper)
# ------------------------------------------------------------------------------------------------------------

# (source, target, reference mapper[:14]); mapper[14:] == arange(14, 77); alphas are 0 exactly where mapper is -1.
REFINE_GOLDEN = {
    "neoclassical_middle": (
        SQUIRREL, "A neoclassical painting of a squirrel eating a burger",
        [0, 1, -1, -1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13],
    ),
    "insert_start": (
        "a castle next to a river", "children drawing of a castle next to a river",
        [0, -1, -1, -1, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13],
    ),
    "insert_end": (
        "a cat sitting on a car", "a cat sitting on a car at night",
        [0, 1, 2, 3, 4, 5, 6, -1, -1, 7, 10, 11, 12, 13],
    ),
    "insert_two_places": (
        "a dog on the beach", "a red dog on the sandy beach",
        [0, 1, -1, 2, 3, 4, -1, 5, 6, 9, 10, 11, 12, 13],
    ),
    "delete": ("a big red bicycle", "a bicycle", [0, 1, 4, 5, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]),
    "swap_as_refine": (
        SQUIRREL, "A painting of a lion eating a burger",
        [0, 1, 2, 3, 4, -1, 6, 7, 8, 9, 10, 11, 12, 13],
    ),
    "identical": (SQUIRREL, SQUIRREL, list(range(14))),
}


@pytest.mark.parametrize("name", list(REFINE_GOLDEN))
def test_refinement_mapper_matches_reference(tok, name):
    source, target, head = REFINE_GOLDEN[name]
    mapper, alphas = A.refinement_mapper(tok, source, target)
    assert mapper.dtype == torch.int64 and alphas.dtype == torch.float32
    assert mapper.shape == alphas.shape == (77,)
    assert mapper.tolist() == head + list(range(14, 77))
    assert alphas.tolist() == [0.0 if m == -1 else 1.0 for m in mapper.tolist()]


def test_refinement_mapper_neoclassical_golden(tok):
    mapper, alphas = A.refinement_mapper(tok, SQUIRREL, "A neoclassical painting of a squirrel eating a burger")
    assert mapper[:12].tolist() == [0, 1, -1, -1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert alphas[:12].tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]


# ------------------------------------------------------------------------------------------------------------
# align_prompts
# ------------------------------------------------------------------------------------------------------------

def test_align_prompts_modes(tok):
    swap = A.align_prompts(tok, SQUIRREL, "A painting of a lion eating a burger")
    assert swap.mode == "replace" and swap.mapper.shape == (77, 77)
    assert torch.equal(swap.alphas, torch.ones(77))
    assert torch.equal(swap.mapper, A.replacement_mapper(tok, SQUIRREL, "A painting of a lion eating a burger"))

    target = "A neoclassical painting of a squirrel eating a burger"
    refine = A.align_prompts(tok, SQUIRREL, target)
    assert refine.mode == "refine"
    mapper, alphas = A.refinement_mapper(tok, SQUIRREL, target)
    assert torch.equal(refine.mapper, mapper) and torch.equal(refine.alphas, alphas)

    forced = A.align_prompts(tok, SQUIRREL, "A painting of a lion eating a burger", mode="refine")
    assert forced.mode == "refine" and forced.mapper.shape == (77,)
    assert A.align_prompts(tok, SQUIRREL, "A painting of a lion eating a burger", mode="replace").mode == "replace"


def test_align_prompts_errors(tok):
    with pytest.raises(ValueError, match="8 words .* has 9; use mode 'refine'"):
        A.align_prompts(tok, SQUIRREL, "A neoclassical painting of a squirrel eating a burger", mode="replace")
    with pytest.raises(ValueError, match="^the source prompt is empty; describe the photo$"):
        A.align_prompts(tok, "   ", "a cat")
    with pytest.raises(ValueError, match="^the edited prompt is empty"):
        A.align_prompts(tok, "a cat", "")
    with pytest.raises(ValueError, match="unknown alignment mode 'swap'"):
        A.align_prompts(tok, "a cat", "a dog", mode="swap")
    long_prompt = " ".join(["cat"] * 76)
    with pytest.raises(ValueError) as e:
        A.align_prompts(tok, long_prompt, "a dog")
    assert "source prompt has 76 CLIP tokens" in str(e.value) and "limit is 75" in str(e.value)
    assert "shorten" in str(e.value)
    with pytest.raises(ValueError, match="edited prompt has 80 CLIP tokens"):
        A.align_prompts(tok, "a cat", " ".join(["dog"] * 80))
    # 75 tokens is fine: EOS lands on position 76.
    assert A.align_prompts(tok, " ".join(["cat"] * 75), " ".join(["dog"] * 75)).mapper[76, 76] == 1


# ------------------------------------------------------------------------------------------------------------
# cross_replace_alpha  (golden: ptp_utils.get_time_words_attention_alpha)
# ------------------------------------------------------------------------------------------------------------

LION = "A painting of a lion eating a burger"

# (prompts, num_steps, cross_replace_steps, per edited prompt: (default rows, {token: rows})), rows = [start, end).
ALPHA_GOLDEN = [
    ([SQUIRREL, LION], 50, {"default_": 1.0, "lion": 0.4}, [((0, 51), {5: (0, 20)})]),
    ([SQUIRREL, LION], 50, 0.8, [((0, 40), {})]),
    ([SQUIRREL, "A painting of a squirrel eating a lasagne"], 50, {"default_": 1.0, "lasagne": 0.2},
     [((0, 51), {8: (0, 10), 9: (0, 10)})]),
    ([SQUIRREL, LION, "A painting of a lion eating a lasagne"], 50,
     {"default_": (0.1, 0.9), "lion": (0.0, 0.3), "eating": 0.5},
     [((5, 45), {5: (0, 15), 6: (0, 25)})] * 2),
    ([SQUIRREL, LION], 20, {"lion": (0.25, 0.75)}, [((0, 21), {5: (5, 15)})]),
    ([SQUIRREL, LION], 7, 0.33, [((0, 2), {})]),
]


@pytest.mark.parametrize("case", range(len(ALPHA_GOLDEN)))
def test_cross_replace_alpha_matches_reference(tok, case):
    prompts, steps, spec, expected = ALPHA_GOLDEN[case]
    alpha = A.cross_replace_alpha(tok, prompts, steps, spec)
    assert alpha.shape == (steps + 1, len(prompts) - 1, 77) and alpha.dtype == torch.float32
    ref = torch.zeros_like(alpha)
    for p, (default, words) in enumerate(expected):
        ref[default[0]:default[1], p, :] = 1
        for t, (s, e) in words.items():
            ref[:, p, t] = 0
            ref[s:e, p, t] = 1
    assert torch.equal(alpha, ref)


def test_cross_replace_alpha_lion_golden(tok):
    alpha = A.cross_replace_alpha(tok, [SQUIRREL, LION], 50, {"default_": 1.0, "lion": 0.4})
    assert alpha.shape == (51, 1, 77)
    assert alpha[:20, 0, 5].eq(1).all() and alpha[20:, 0, 5].eq(0).all()
    assert alpha[:, 0, 4].eq(1).all()


def test_cross_replace_alpha_errors(tok):
    with pytest.raises(ValueError) as e:
        A.cross_replace_alpha(tok, [SQUIRREL, LION, "A painting of a tiger eating a burger"], 50, {"lion": 0.4})
    assert str(e.value) == (
        "'lion' is not a word of 'A painting of a tiger eating a burger'; its words are: "
        "A, painting, of, a, tiger, eating, a, burger"
    )
    with pytest.raises(ValueError, match="between 0 and 1"):
        A.cross_replace_alpha(tok, [SQUIRREL, LION], 50, 1.5)
    with pytest.raises(ValueError, match=r"for 'lion' must be fractions between 0 and 1"):
        A.cross_replace_alpha(tok, [SQUIRREL, LION], 50, {"lion": (-0.1, 0.5)})
    with pytest.raises(ValueError, match="start <= end; got start 0.8 > end 0.2"):
        A.cross_replace_alpha(tok, [SQUIRREL, LION], 50, (0.8, 0.2))
    with pytest.raises(ValueError, match="must be a fraction of the steps"):
        A.cross_replace_alpha(tok, [SQUIRREL, LION], 50, "0.8")
    with pytest.raises(ValueError, match="at least one edited prompt"):
        A.cross_replace_alpha(tok, [SQUIRREL], 50, 0.8)
    with pytest.raises(ValueError, match="num_steps"):
        A.cross_replace_alpha(tok, [SQUIRREL, LION], 0, 0.8)


# ------------------------------------------------------------------------------------------------------------
# self_replace_range
# ------------------------------------------------------------------------------------------------------------

def test_self_replace_range():
    assert A.self_replace_range(50, 0.4) == (0, 20)
    assert A.self_replace_range(50, (0.2, 0.6)) == (10, 30)
    assert A.self_replace_range(50, 1) == (0, 50)
    assert A.self_replace_range(30, 0.33) == (0, 9)
    with pytest.raises(ValueError, match="self_replace_steps must be fractions between 0 and 1"):
        A.self_replace_range(50, 1.2)
    with pytest.raises(ValueError, match="start <= end"):
        A.self_replace_range(50, (0.6, 0.2))
    with pytest.raises(ValueError, match="num_steps"):
        A.self_replace_range(-3, 0.4)


# ------------------------------------------------------------------------------------------------------------
# Parsers
# ------------------------------------------------------------------------------------------------------------

def test_parse_cross_replace_steps():
    assert A.parse_cross_replace_steps("0.8") == 0.8
    assert A.parse_cross_replace_steps(" 0.2, 0.8 ") == (0.2, 0.8)
    assert A.parse_cross_replace_steps("0.8; lion: 0.4; cat: 0.1,0.5") == {
        "default_": 0.8, "lion": 0.4, "cat": (0.1, 0.5)}
    assert A.parse_cross_replace_steps("lion: 0.4\n\"pink bicycle\": 0.2") == {"lion": 0.4, "pink bicycle": 0.2}
    assert A.parse_cross_replace_steps("default: 1; lion: .4") == {"default_": 1.0, "lion": 0.4}


@pytest.mark.parametrize("text,quoted", [
    ("0.2-0.8", "'0.2-0.8'"),
    ("0.8; lion: lots", "'lots'"),
    ("0.8; lion: 0.1,0.2,0.3", "'0.1,0.2,0.3'"),
    ("0.8; : 0.4", "': 0.4'"),
])
def test_parse_cross_replace_steps_errors(text, quoted):
    with pytest.raises(ValueError) as e:
        A.parse_cross_replace_steps(text)
    assert quoted in str(e.value) and "'0.8; lion: 0.4; cat: 0.1,0.5'" in str(e.value)


def test_parse_cross_replace_steps_range_errors():
    with pytest.raises(ValueError, match="'1.4'.* between 0 and 1"):
        A.parse_cross_replace_steps("1.4")
    with pytest.raises(ValueError, match="start <= end"):
        A.parse_cross_replace_steps("0.8,0.2")
    with pytest.raises(ValueError, match="default window is given twice"):
        A.parse_cross_replace_steps("0.8; 0.5")
    with pytest.raises(ValueError, match="'lion' is given twice"):
        A.parse_cross_replace_steps("lion: 0.8; lion: 0.5")
    with pytest.raises(ValueError, match="cross_replace_steps is empty; accepted"):
        A.parse_cross_replace_steps("  ")


def test_parse_self_replace_steps():
    assert A.parse_self_replace_steps("0.4") == 0.4
    assert A.parse_self_replace_steps("0.2,0.6") == (0.2, 0.6)
    with pytest.raises(ValueError) as e:
        A.parse_self_replace_steps("0.2 to 0.6")
    assert "'0.2 to 0.6'" in str(e.value) and "'0.2,0.6'" in str(e.value)
    with pytest.raises(ValueError, match="empty"):
        A.parse_self_replace_steps("")
    with pytest.raises(ValueError, match="between 0 and 1"):
        A.parse_self_replace_steps("2")


def test_parse_word_values():
    assert A.parse_word_values("smiling: 5, pink: -1") == [("smiling", 5.0), ("pink", -1.0)]
    assert A.parse_word_values("\"pink bicycle\": 2; 'fried': 10\nwatercolor:5") == [
        ("pink bicycle", 2.0), ("fried", 10.0), ("watercolor", 5.0)]
    assert A.parse_word_values("  ") == []
    with pytest.raises(ValueError, match="cannot read 'smiling 5' as 'word: number'; accepted"):
        A.parse_word_values("smiling 5")
    with pytest.raises(ValueError, match="cannot read the number in 'pink: lots'"):
        A.parse_word_values("pink: lots")
    with pytest.raises(ValueError, match="cannot read the number in 'pink: inf'"):
        A.parse_word_values("pink: inf")
    with pytest.raises(ValueError, match="missing word before ':' in ': 3'"):
        A.parse_word_values(": 3")
    with pytest.raises(ValueError, match="'Pink' is given twice"):
        A.parse_word_values("pink: 1, Pink: 2")


# ------------------------------------------------------------------------------------------------------------
# equalizer  (golden: get_equalizer of null_text_w_ptp.ipynb)
# ------------------------------------------------------------------------------------------------------------

EQ_GOLDEN = [
    ("a smiling bunny doll", [("smiling", 5)], {2: 5.0}),
    ("a pink bear riding a bicycle", [("pink", -1), ("bicycle", 2)], {2: -1.0, 6: 2.0}),
    ("a lasagne on a plate", [("lasagne", 3), ("plate", 0.5)], {2: 3.0, 3: 3.0, 6: 0.5}),
]


@pytest.mark.parametrize("prompt,pairs,expected", EQ_GOLDEN)
def test_equalizer_matches_reference(tok, prompt, pairs, expected):
    ref = torch.ones(77)
    for i, v in expected.items():
        ref[i] = v
    assert torch.equal(A.equalizer(tok, prompt, pairs), ref)
    assert torch.equal(A.equalizer(tok, prompt, dict(pairs)), ref)


def test_equalizer_text_and_errors(tok):
    eq = A.equalizer(tok, "a pink bear riding a bicycle", "pink: -1, \"riding a\": 0.5")
    assert eq[2] == -1 and eq[4] == eq[5] == 0.5 and eq[6] == 1 and eq.shape == (77,)
    with pytest.raises(ValueError, match="'tiger' is not a word of 'a smiling bunny doll'"):
        A.equalizer(tok, "a smiling bunny doll", [("tiger", 2)])
    with pytest.raises(ValueError, match=r"the factor for 'smiling' must be a number within -1000\.\.1000; got nan"):
        A.equalizer(tok, "a smiling bunny doll", [("smiling", float("nan"))])
