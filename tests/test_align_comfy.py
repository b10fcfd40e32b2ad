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
