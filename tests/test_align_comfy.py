"""Token alignment with ComfyUI's own tokenizer: prompt syntax counts as the conditioning does."""
import pytest

import comfy.cli_args

comfy.cli_args.args.cpu = True
import comfy.sd1_clip  # noqa: E402

from attention_edit.attention import align  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return comfy.sd1_clip.SD1Tokenizer()


def test_weight_syntax_counts_as_the_plain_word(tok):
    assert align.token_count(tok, "a photo of a (cat:1.2)") == align.token_count(tok, "a photo of a cat") == 5
    assert align.word_token_indices(tok, "a (big:1.3) photo of a cat", "cat") == [6]
    a = align.align_prompts(tok, "a photo of a cat", "a photo of a (dog:1.2)")
    assert a.mode == "replace" and float(a.mapper[5, 5]) == 1.0


def test_a_weight_spanning_words_is_refused_clearly(tok):
    with pytest.raises(ValueError, match=r"give each word its own weight"):
        align.align_prompts(tok, "a photo of a cat", "a photo of (a red cat:1.2)")


def test_labels_follow_the_conditioning(tok):
    assert align.token_labels(tok, "a photo of a (cat:1.2)") == ["a", "photo", "of", "a", "cat"]


def test_long_prompts_are_counted_across_comfyui_batches(tok):
    long = " ".join(["cat"] * 80)
    assert align.token_count(tok, long) == 80
    import pytest as _pytest

    with _pytest.raises(ValueError, match="limit is 75"):
        align.align_prompts(tok, long, long)


# ---- SDXL: ComfyUI's SDXL tokenizer tokenizes every prompt twice (CLIP-L and OpenCLIP-bigG)

@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    """An embeddings folder with an SDXL embedding (clip_l [2, 768] + clip_g [2, 1280], the A1111 / ComfyUI SDXL
    format) and an SD1.x one (emb_params [2, 768])."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("sdxl_embeddings")
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, str(d / "xlconcept.safetensors"))
    save_file({"emb_params": torch.randn(2, 768)}, str(d / "sd15concept.safetensors"))
    return str(d)


@pytest.fixture(scope="module")
def xl_tok(sdxl_dir):
    import comfy.sdxl_clip

    return comfy.sdxl_clip.SDXLTokenizer(embedding_directory=sdxl_dir)


PROMPTS = ["a photo of a cat", "a (big:1.3) photo of a cat, sitting on grass!", "an astronaut riding a horse",
           "a photo of embedding:xlconcept cat", "(a:0.9) [photo] of a cat's toy"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_sdxl_encoders_put_every_token_at_the_same_position(xl_tok, prompt):
    """The two encoders' token sequences agree position by position (the same BPE ids, an SDXL embedding's vectors
    at the same positions in both), so one alignment serves the whole 2048-wide conditioning; and the alignment
    counts what ComfyUI's SDXL tokenizer gives."""
    out = xl_tok.tokenize_with_weights(prompt)
    assert set(out) == {"g", "l"}

    def kinds(batches):
        seq = []
        for t, w in batches[0]:
            seq.append(("vec", w) if hasattr(t, "shape") else (int(t), w))
        return seq

    g, ll = kinds(out["g"]), kinds(out["l"])
    n = align.token_count(xl_tok, prompt)
    # bigG pads with 0, CLIP-L with its end token: the prompt tokens (BOS ... EOS) agree, padding aside
    assert g[:n + 2] == ll[:n + 2]
    assert g[n + 1][0] == 49407 and ll[n + 1][0] == 49407
    assert align.token_count(xl_tok, prompt) == align.token_count(comfy.sd1_clip.SD1Tokenizer(
        embedding_directory=xl_tok.clip_l.embedding_directory), prompt) or "embedding:" in prompt


def test_sdxl_alignment_counts_embeddings_and_weights(xl_tok):
    assert align.token_count(xl_tok, "a photo of embedding:xlconcept cat") == 6  # a photo of [v1 v2] cat
    assert align.word_token_indices(xl_tok, "a photo of embedding:xlconcept cat", "cat") == [6]
    assert align.word_token_indices(xl_tok, "a photo of embedding:xlconcept cat", 3) == [4, 5]
    a = align.align_prompts(xl_tok, "a photo of a cat", "a photo of a (dog:1.2)")
    assert a.mode == "replace" and float(a.mapper[5, 5]) == 1.0
    assert align.token_labels(xl_tok, "a (big:1.3) cat") == ["a", "big", "cat"]


def test_sdxl_embedding_for_one_encoder_only_is_refused_clearly(xl_tok):
    """An SD1.x embedding has no clip_g vectors: ComfyUI loads it for CLIP-L and drops it for bigG, so the two
    sequences differ; the alignment says why instead of misplacing every later word."""
    with pytest.raises(ValueError, match=r"exists for only one of the encoders.*SDXL embedding"):
        align.align_prompts(xl_tok, "a photo of embedding:sd15concept cat", "a photo of embedding:sd15concept dog")


def test_the_live_display_route_describes_sdxl_prompts_as_the_sdxl_tokenizer_does(xl_tok):
    """The web route counts with ComfyUI's CLIP-L tokenizer (no model needed); since both SDXL encoders put every
    token where CLIP-L does, its description of an edit is the one the SDXL tokenizer gives."""
    from attention_edit.attention.recipe import describe_alignment
    from attention_edit.comfy_bridge.text import route_tokenizer

    route = route_tokenizer()
    for src, tgt in [("a photo of a cat", "a photo of a dog"), ("a (big:1.3) cat on grass", "a big cat on green grass"),
                     ("an astronaut riding a horse", "an astronaut riding a camel, at night")]:
        assert describe_alignment(route, src, tgt) == describe_alignment(xl_tok, src, tgt)
