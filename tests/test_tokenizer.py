"""Our tokenizer encodes exactly as Meta's llama_models.llama3.tokenizer.Tokenizer."""
import pytest
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from helpers import LlamaError, load_tokenizer
from helpers.tokenizer import split_long_runs

SAMPLES = [
    "",
    "This is a test sentence.",
    "the answer to the ultimate question of life, the universe, and everything is ",
    "Grüße aus Zürich — ça va? Ελληνικά, русский, 日本語のテキスト, 中文分词, عربى, हिन्दी",
    "emoji: 🦙🦙 👩‍👩‍👧‍👦 🇫🇷 ✨",
    "def f(x):\r\n\treturn x  # tabs\tand CRLF\r\n\r\n\n\n    indented\n",
    "numbers 1 12 123 1234 12345 3.14159 1,000,000 0x1F",
    "I'm, you're, we've, they'll, she'd, it's, DON'T, I'M",
    "   leading and trailing spaces   ",
    "<|eot_id|> typed by a user, and <|begin_of_text|> too",
    "a" * 30_000,  # one non-whitespace run longer than Meta's 25,000 split limit
    " " * 26_000 + "x",
    ("word " * 90_000),  # 450,000 characters: more than tiktoken takes at once
    "\x00\x01 control chars \u200b zero width \ufeff bom",
]


@pytest.fixture(scope="module")
def meta():
    return MetaTokenizer.get_instance()


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer()


def test_metas_test_vector(ours):
    assert ours.encode("This is a test sentence.", bos=True, eos=True) == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]


@pytest.mark.parametrize("text", SAMPLES, ids=lambda s: repr(s[:20]))
@pytest.mark.parametrize("bos,eos", [(False, False), (True, False), (True, True)])
def test_encode_equals_meta(ours, meta, text, bos, eos):
    assert ours.encode(text, bos=bos, eos=eos) == meta.encode(text, bos=bos, eos=eos)


@pytest.mark.parametrize("text", SAMPLES, ids=lambda s: repr(s[:20]))
def test_round_trip(ours, text):
    assert ours.decode(ours.encode(text, bos=False, eos=False)) == text


def test_special_ids_equal_meta(ours, meta):
    assert ours.special_tokens == meta.special_tokens
    assert (ours.bos_id, ours.eos_id, ours.eot_id, ours.eom_id, ours.pad_id) == (
        meta.bos_id, meta.eos_id, meta.eot_id, meta.eom_id, meta.pad_id)
    assert ours.stop_tokens == meta.stop_tokens and ours.n_words == meta.n_words


def test_typed_special_token_is_plain_text(ours, meta):
    ids = ours.encode("<|eot_id|>", bos=False, eos=False)
    assert ours.eot_id not in ids and len(ids) > 1
    assert ours.decode(ids) == "<|eot_id|>"
    # ... unless the caller asks for it, as Meta's tokenizer allows too
    allowed = ours.encode("<|eot_id|>", bos=False, eos=False, allowed_special={"<|eot_id|>"})
    assert allowed == [ours.eot_id] == meta.encode("<|eot_id|>", bos=False, eos=False, allowed_special={"<|eot_id|>"})


def test_course_prompt_is_17_tokens_ending_in_a_space(ours):
    ids = ours.encode("the answer to the ultimate question of life, the universe, and everything is ", bos=True, eos=False)
    assert len(ids) == 17 and ids[-1] == 220 and ours.decode([ids[-1]]) == " "


def test_split_long_runs_keeps_every_character():
    text = "ab" * 10 + " " * 7 + "c" * 12
    pieces = list(split_long_runs(text, max_run=5))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 10


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(LlamaError, match="No tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_text("not base64 at all\n")
    with pytest.raises(LlamaError, match="not a tiktoken BPE file"):
        load_tokenizer(tmp_path)
    with pytest.raises(LlamaError, match="takes a str"):
        load_tokenizer().encode(b"bytes", bos=False, eos=False)
